from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pydantic import Field

from pymgr import Identity, Module, action
from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.registry import ActionSpec, Registry
from pymgr.errors import ActionFailed, Conflict, Forbidden, NotFound, ParamsInvalid, PymgrInternalError

CALLER = Identity(transport="unix", uid=33, gid=33, user="www-data")


class Sample(Module):
    name = "sample"

    @action
    async def add(self, a: int, b: int = Field(0, ge=0)) -> int:
        return a + b

    @action
    def thread_name(self) -> str:
        return threading.current_thread().name

    @action
    async def who(self, caller: Identity) -> dict[str, Any]:
        return caller.to_dict()

    @action
    async def anything(self, **params: Any) -> dict[str, Any]:
        return params

    @action
    async def boom(self) -> None:
        raise RuntimeError("disk on fire")

    @action
    async def busy(self) -> None:
        raise Conflict("already running")

    @action
    async def not_json(self) -> object:
        return object()

    @action
    async def slow(self) -> None:
        await asyncio.sleep(10)


def dispatcher(**kw: Any) -> Dispatcher:
    registry = Registry()
    registry.add(Sample())
    return Dispatcher(registry, **kw)


async def call(d: Dispatcher, action_name: str, **params: Any) -> Any:
    return await d.call(Call("sample", action_name, params, CALLER))


async def test_validates_and_coerces_params() -> None:
    d = dispatcher()
    assert await call(d, "add", a="2", b=3) == 5
    with pytest.raises(ParamsInvalid, match=r"^bad params for sample\.add: a: Field required$"):
        await call(d, "add")
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for sample\.add: b: Input should be greater than or equal to 0 \(got -1\)$",
    ):
        await call(d, "add", a=1, b=-1)
    with pytest.raises(
        ParamsInvalid, match=r"^bad params for sample\.add: c: Extra inputs are not permitted \(got 1\)$"
    ) as info:
        await call(d, "add", a=1, c=1)
    assert info.value.details == {
        "errors": [{"field": "c", "message": "Extra inputs are not permitted", "type": "extra_forbidden"}]
    }


async def test_params_must_be_a_mapping() -> None:
    with pytest.raises(
        ParamsInvalid, match=r"^params for sample\.add must be an object of name: value, not list$"
    ):
        await dispatcher().call(Call("sample", "add", [1, 2], CALLER))  # type: ignore[arg-type]


async def test_sync_actions_run_off_the_loop() -> None:
    assert await call(dispatcher(), "thread_name") != threading.current_thread().name


async def test_identity_is_injected_and_var_kwargs_pass_through() -> None:
    d = dispatcher()
    assert (await call(d, "who"))["uid"] == 33
    assert await call(d, "anything", x=1, y=[2]) == {"x": 1, "y": [2]}


async def test_action_errors_are_wrapped_pymgr_errors_pass() -> None:
    d = dispatcher()
    with pytest.raises(ActionFailed, match=r"^action sample\.boom failed: RuntimeError: disk on fire$"):
        await call(d, "boom")
    with pytest.raises(Conflict, match=r"^already running$"):
        await call(d, "busy")
    with pytest.raises(ActionFailed, match=r"^action sample\.not_json returned a value that is not JSON"):
        await call(d, "not_json")


async def test_unknown_action() -> None:
    with pytest.raises(NotFound):
        await call(dispatcher(), "nope")


async def test_authorize_runs_before_validation() -> None:
    def deny(identity: Identity, spec: ActionSpec) -> None:
        raise Forbidden(f"{identity.user} may not call {spec.qualname}")

    with pytest.raises(Forbidden, match=r"^www-data may not call sample\.add$"):
        await call(dispatcher(authorize=deny), "add")  # missing param not reported


async def test_cancellation_propagates() -> None:
    task = asyncio.ensure_future(call(dispatcher(), "slow"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_metrics_tell_an_action_that_raised_from_a_fault_of_pymgr() -> None:
    from pymgr.metrics import Metrics

    d = dispatcher()
    d.metrics = Metrics()
    with pytest.raises(ActionFailed):
        await call(d, "boom")  # the action's own exception: its wire code is "internal"
    with pytest.raises(ActionFailed):
        await call(d, "not_json")  # what it returned cannot leave: the action's fault too

    def broken(identity: Identity, spec: ActionSpec) -> None:
        raise PymgrInternalError("policy table is corrupt")

    d.authorize = broken
    with pytest.raises(PymgrInternalError):
        await call(d, "add", a=1)
    outcomes = {(row[2], row[3]): row[4] for row in d.metrics.snapshot()["requests"]}
    assert outcomes == {
        ("boom", "action_failed"): 1,
        ("not_json", "action_failed"): 1,
        ("add", "internal"): 1,
    }
