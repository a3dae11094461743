"""The fleet clients' requests as pure steps (fleet/steps.py): driven here by scripted replies, no Redis.

Each test hands a request the replies a Redis would give, in order, and checks
the ops it asked for and what it returned; the real round trips are tested
through both clients against a real Redis in the other files of this folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet import jobs, steps
from pymgr.fleet.client import FleetClient
from pymgr.fleet.results import OutputChunk, StopResult, ended, taken
from pymgr.fleet.steps import Clock, Command, Emit, Op, Pipeline, Script, Sleep, Stepper, Steps


def drive(request: Steps[Any], replies: list[Any]) -> tuple[list[Op], Any]:
    """Runs ``request``: each ``Command``, ``Pipeline``, ``Script`` and ``Clock`` gets the next of
    ``replies`` (an exception is thrown in), ``Sleep`` and ``Emit`` get None; the ops asked for and the result.

    Raises:
        AssertionError: the request asked for more than ``replies`` holds, or left some unused.
    """
    stepper, ops, answers = Stepper(request), [], iter(replies)
    op = stepper.send(None)
    while op is not None:
        ops.append(op)
        if isinstance(op, Sleep | Emit):
            op = stepper.send(None)
            continue
        reply = next(answers, AssertionError(f"no reply scripted for {op}"))
        op = stepper.throw(reply) if isinstance(reply, BaseException) else stepper.send(reply)
    assert next(answers, None) is None, "replies left unused"
    return ops, stepper.result


def job_hash(state: str, **more: str) -> dict[bytes, bytes]:
    return {b"state": state.encode(), **{k.encode(): v.encode() for k, v in more.items()}}


def test_show_reads_the_jobs_hash() -> None:
    ops, info = drive(steps.show("j1"), [job_hash("running", received_by="a", task_id="7")])
    assert ops == [Command("hgetall", ("fleet:job:j1",))]
    assert (info.state, info.received_by, info.task_id) == ("running", "a", 7)
    with pytest.raises(LookupError, match=r"^no fleet job 'j1'; pymgr fleet list shows the recent ones$"):
        drive(steps.show("j1"), [{}])


def test_jobs_reads_a_page_of_hashes_a_round_trip_and_passes_over_expired_ones() -> None:
    hashes = [job_hash("running"), {}, job_hash("queued")]
    ops, found = drive(steps.jobs(None, None, None, 50), [3, [b"c", b"b", b"a"], hashes])
    assert ops == [
        Command("zcard", ("fleet:jobs",)),
        Command("zrevrange", ("fleet:jobs", 0, steps.LIST_PAGE - 1)),
        Pipeline(tuple(Command("hgetall", (f"fleet:job:{i}",)) for i in "cba")),
    ]
    assert [(info.id, info.state) for info in found] == [("c", "running"), ("a", "queued")]


def test_jobs_stops_reading_pages_at_the_limit() -> None:
    page = [str(i).encode() for i in range(steps.LIST_PAGE)]
    hashes = [job_hash("queued")] * steps.LIST_PAGE
    ops, found = drive(steps.jobs(None, None, None, 2), [steps.LIST_PAGE + 1, page, hashes])
    assert len(ops) == 3 and [info.id for info in found] == ["0", "1"]
    # Filtered to nothing on the first page: the second is read too.
    replies = [steps.LIST_PAGE + 1, page, hashes, [b"last"], [job_hash("failed")]]
    ops, found = drive(steps.jobs("failed", None, None, 2), replies)
    assert ops[3] == Command("zrevrange", ("fleet:jobs", steps.LIST_PAGE, 2 * steps.LIST_PAGE - 1))
    assert [info.id for info in found] == ["last"]


@pytest.mark.parametrize(
    ("state", "host", "tag", "kept"),
    [
        ("running", None, None, ["pinned", "tagged"]),
        (None, "a", None, ["pinned", "taken"]),
        (None, None, "gpu", ["tagged"]),
        ("queued", "a", None, ["taken"]),
    ],
)
def test_jobs_filters_by_state_host_and_tag(
    state: str | None, host: str | None, tag: str | None, kept: list[str]
) -> None:
    hashes = [
        job_hash("running", target="host:a"),
        job_hash("running", target="tag:gpu", received_by="b"),
        job_hash("queued", target="tag:cpu", received_by="a"),
    ]
    _, found = drive(steps.jobs(state, host, tag, 50), [3, [b"pinned", b"tagged", b"taken"], hashes])
    assert [info.id for info in found] == kept


@pytest.mark.parametrize(
    ("state", "limit", "error"),
    [
        ("nope", 1, r"^state 'nope' is not a job's state; one of queued, .*$"),
        (None, 0, r"^limit must be between 1 and 1000, not 0$"),
        (None, steps.MAX_LIST + 1, r"^limit must be between 1 and 1000, not 1001$"),
    ],
)
def test_jobs_refuses_bad_filters_before_any_round_trip(state: str | None, limit: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        drive(steps.jobs(state, None, None, limit), [])


@pytest.mark.parametrize("limit", [1, steps.MAX_LIST])
def test_jobs_takes_the_limits_bounds(limit: int) -> None:
    assert drive(steps.jobs(None, None, None, limit), [0]) == ([Command("zcard", ("fleet:jobs",))], [])


def test_wait_looks_again_until_the_job_is_taken() -> None:
    replies = [100.0, job_hash("queued"), 100.05, job_hash("running", received_by="a")]
    ops, info = drive(steps.wait("j1", 5.0, taken, "taken"), replies)
    show = Command("hgetall", ("fleet:job:j1",))
    assert ops == [Clock(), show, Clock(), Sleep(steps.POLL_S), show]
    assert info.received_by == "a"


def test_wait_gives_up_at_its_deadline_with_the_jobs_state() -> None:
    replies = [100.0, {}, 101.9, {}, 102.0]
    message = r"^fleet job j1 was not ended within 2 s \(state: no hash\)$"
    with pytest.raises(TimeoutError, match=message):
        drive(steps.wait("j1", 2.0, ended, "ended"), replies)
    with pytest.raises(TimeoutError, match=r"\(state: running\)$"):
        drive(steps.wait("j1", 2.0, ended, "ended"), [100.0, job_hash("running"), 102.0])


def xread(job_id: str, last: str, block: int | None) -> Command:
    return Command("xread", ({f"fleet:job:{job_id}:out": last},), {"count": 100, "block": block})


def entries(*ids: str) -> list[Any]:
    return [[b"fleet:job:j1:out", [(i.encode(), {b"offset": b"0", b"data": i.encode()}) for i in ids]]]


def test_follow_emits_entries_then_reads_once_more_after_the_end() -> None:
    replies = [job_hash("running"), entries("1-0", "2-0"), [], job_hash("running"), []]
    replies += [job_hash("succeeded"), entries("3-0"), []]
    ops, result = drive(steps.follow("j1", "0", 0.5, None), replies)
    show = Command("hgetall", ("fleet:job:j1",))
    assert result is None
    assert ops == [
        show,
        xread("j1", "0", 500),
        Emit(OutputChunk("1-0", 0, b"1-0")),
        Emit(OutputChunk("2-0", 0, b"2-0")),
        xread("j1", "2-0", 500),
        show,
        xread("j1", "2-0", 500),
        show,
        xread("j1", "2-0", None),  # the job has ended: what came just before, without blocking
        Emit(OutputChunk("3-0", 0, b"3-0")),
        xread("j1", "3-0", None),
    ]


def test_follow_goes_on_after_redis_went_away_from_the_last_entry_it_gave() -> None:
    told: list[tuple[str, Exception]] = []
    down = redis.ConnectionError("gone")
    replies = [job_hash("running"), entries("1-0"), down, [], {}]  # {}: Redis came back empty
    replies += [redis.TimeoutError("slow"), [], job_hash("stopped"), []]
    ops, _ = drive(steps.follow("j1", "0", 0.25, lambda last, exc: told.append((last, exc))), replies)
    assert told[0] == ("1-0", down) and told[1][0] == "1-0" and isinstance(told[1][1], redis.TimeoutError)
    assert ops.count(Sleep(0.25)) == 2
    assert ops[-1] == xread("j1", "1-0", None)


def test_follow_of_no_job_says_so_and_other_errors_reach_the_caller() -> None:
    with pytest.raises(LookupError, match=r"^no fleet job 'j1'"):
        drive(steps.follow("j1", "0", 0.5, None), [{}])
    with pytest.raises(redis.ResponseError, match=r"^WRONGTYPE$"):
        drive(steps.follow("j1", "0", 0.5, None), [job_hash("running"), redis.ResponseError("WRONGTYPE")])


def test_hosts_reads_each_heartbeat_by_id() -> None:
    beat = b'{"tags": ["gpu"], "at": 5.0, "running": 2}'
    ops, found = drive(steps.hosts(), [{b"b", b"a"}, None, beat])
    assert ops == [
        Command("smembers", ("fleet:hosts",)),
        Command("get", ("fleet:hb:a",)),
        Command("get", ("fleet:hb:b",)),
    ]
    assert [(h.id, h.alive, h.tags, h.running) for h in found] == [
        ("a", False, (), None),
        ("b", True, ("gpu",), 2),
    ]


def test_output_joins_what_the_stream_holds() -> None:
    stream = [(b"1-0", {b"offset": b"0", b"data": b"ab"}), (b"2-0", {b"offset": b"2", b"data": b"c\n"})]
    assert drive(steps.output("j1"), [stream]) == ([Command("xrange", ("fleet:job:j1:out",))], b"abc\n")


def test_a_stepper_has_no_result_before_its_request_returned() -> None:
    stepper = Stepper(steps.show("j1"))
    stepper.send(None)
    with pytest.raises(RuntimeError, match=r"^the request has not returned yet$"):
        stepper.result  # noqa: B018


KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FleetClient]:
    """A client that never connects: the steps of its signed requests are driven here, not sent."""
    with FleetClient(f"unix://{tmp_path}/none.sock", key_id="console", signing_key=KEY) as fleet:
        yield fleet


def test_submit_is_one_script_with_the_signed_job(client: FleetClient) -> None:
    ops, job_id = drive(client._submit_steps("scan", {"n": 1}, "a", None, "k1", "task"), [1])
    (script,) = ops
    assert isinstance(script, Script) and script.name == "submit" and job_id == "k1"
    assert script.keys == ["fleet:job:k1", "fleet:host:a", "fleet:jobs"]
    signed = jobs.decode({"job": script.args[0], "sig": script.args[1]})
    assert (signed.job.id, signed.job.type, signed.job.params) == ("k1", "scan", {"n": 1})


def test_stop_cancels_a_queued_job_and_sends_a_taken_one_to_its_host(client: FleetClient) -> None:
    ops, result = drive(client._stop_steps("j1"), [b"cancelled"])
    assert result == StopResult("j1", "cancelled", None, "cancelled") and len(ops) == 1
    ops, result = drive(
        client._stop_steps("j1"), [b"running", job_hash("running", target="tag:x", received_by="b"), b"1-0"]
    )
    assert result == StopResult("j1", "sent", "b", "running")
    assert ops[1] == Command("hgetall", ("fleet:job:j1",))
    xadd = ops[2]
    assert isinstance(xadd, Command) and xadd.name == "xadd" and xadd.args[0] == "fleet:ctl:b"
    ops, result = drive(client._stop_steps("j1"), [b"failed", job_hash("failed", received_by="b")])
    assert result == StopResult("j1", "ended", "b", "failed") and len(ops) == 2
    with pytest.raises(
        LookupError, match=re.escape("no fleet job 'j1'; pymgr fleet list shows the recent ones")
    ):
        drive(client._stop_steps("j1"), [None])


def test_stop_and_submit_need_a_signing_key(tmp_path: Path) -> None:
    with FleetClient(f"unix://{tmp_path}/none.sock") as unsigned:
        with pytest.raises(ValueError, match=r"^submitting and stopping need a signing key: "):
            drive(unsigned._stop_steps("j1"), [b"queued"])
        with pytest.raises(ValueError, match=r"^submitting and stopping need a signing key: "):
            drive(unsigned._submit_steps("scan", None, "a", None, None, "task"), [])


@pytest.mark.parametrize("job_id", ["j1:out", "", "a" * 65, "j1\n", "a/b", "é"])
def test_an_id_no_job_can_have_is_no_job_without_a_round_trip(job_id: str, client: FleetClient) -> None:
    message = rf"^no fleet job {re.escape(repr(job_id))}: a job's id matches \^\[A-Za-z0-9\._-\]\{{1,64\}}\$$"
    requests = [steps.show(job_id), steps.follow(job_id, "0", 0.5, None), client._stop_steps(job_id)]
    for request in [*requests, steps.wait(job_id, 1.0, ended, "ended")]:
        with pytest.raises(LookupError, match=message):
            drive(request, [])


def test_the_longest_id_is_read() -> None:
    ops, info = drive(steps.show("a" * 64), [job_hash("queued")])
    assert ops == [Command("hgetall", (f"fleet:job:{'a' * 64}",))] and info.id == "a" * 64


@pytest.mark.parametrize(("timeout_s", "shown"), [(-0.5, "-0.5"), (float("nan"), "nan")])
def test_wait_refuses_a_timeout_that_is_not_a_number_of_seconds(timeout_s: float, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"^timeout_s must be a number of seconds, 0 or more, not {shown}$"):
        drive(steps.wait("j1", timeout_s, ended, "ended"), [])


def test_wait_with_no_time_looks_once() -> None:
    with pytest.raises(TimeoutError, match=r"^fleet job j1 was not ended within 0 s \(state: queued\)$"):
        drive(steps.wait("j1", 0.0, ended, "ended"), [100.0, job_hash("queued"), 100.0])
