"""Commands declared in the config (``[commands.NAME]``), served as actions: sudo done right.

Rules:
- Each command is an action ``MODULE.NAME`` (``commands.NAME`` unless the
  command names another ``module``), with the parameters it declares: they
  validate, show their JSON Schema and pass the policy and the audit like
  any Python action's. No client can run anything else.
- The argv template renders with the task types' own renderer
  (``tasks/tasktypes.py``): each ``{name}`` becomes exactly one argv element,
  whatever the value holds; no shell ever sees it.
- A ``path`` parameter, checked at validation, is opened again beneath its
  base just before the spawn, following no symlink, and the command gets
  ``/proc/self/fd/N`` for that descriptor (``core/pathparam.py``): a
  directory swapped for a symlink in between is refused, never followed.
- Checked at start-up, so a bad command never waits for its first call:
  argv[0] is an absolute path to an executable regular file; every
  placeholder names a declared parameter; the ``user`` exists, and running
  as another user needs a root daemon.
- A run replies with ``exit_code``, ``signal``, ``stdout``, ``stderr``
  (each capped at ``max_output_bytes``), ``truncated``, ``timed_out``,
  ``cancelled``, ``leftovers``, ``contained`` and ``duration_s``
  (``modules/_cmdrun.py``). A non-zero exit is a result, not an error; a
  program that cannot start is ``ActionFailed``.
- Nothing a command starts outlives its call (``_cmdrun``): each run gets
  its own cgroup in the daemon's tree when there is one
  (``command-<pid>-<n>``, removed once empty; those an earlier daemon left
  are killed and removed at start), else its session is searched.
- At most ``max_concurrent`` runs of a command at once; up to
  ``max_queued`` more calls wait in order; beyond that a call is refused at
  once (``RateLimited``, 429), so a flood costs no process. A waiting call
  whose caller left, with ``cancel_on_disconnect``, never starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import pwd
import re
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymgr.config import ConfigError
from pymgr.core.callscope import caller_gone
from pymgr.core.identity import Identity
from pymgr.core.paramspec import param_field
from pymgr.core.pathparam import PinnedPath, can_pin, pin
from pymgr.core.registry import Module, action
from pymgr.errors import ActionFailed, ParamsInvalid, RateLimited
from pymgr.modules._cmdrun import CommandResult, Containment, run_command
from pymgr.modules.commandspec import COMMAND_NAME, CommandConfig
from pymgr.keeper.cgroup import Cgroup, CgroupError, CgroupTree
from pymgr.keeper.runas import RunAs
from pymgr.keeper.spawn import SpawnError
from pymgr.tasks.tasktypes import PLACEHOLDER, render_element, render_value

__all__ = ["CommandModule", "command_modules"]

#: The parameter through which dispatch passes the caller (never a command parameter).
_CALLER = "pymgr_caller"

#: Seconds start-up waits for the command cgroups a dead daemon left to empty after cgroup.kill.
STALE_KILL_WAIT_S = 2.0

#: Numbers the command cgroups of this daemon process.
_RUNS = itertools.count(1)

log = logging.getLogger("pymgr.commands")


class _Gate:
    """At most ``limit`` holders at once, at most ``max_waiting`` waiting; beyond: refused."""

    def __init__(self, limit: int, max_waiting: int) -> None:
        self._free = asyncio.Semaphore(limit)
        self.limit = limit
        self.max_waiting = max_waiting
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def held(self, what: str, caller_gone: asyncio.Event | None) -> AsyncIterator[None]:
        if self._free.locked() and self.waiting >= self.max_waiting:
            raise RateLimited(
                f"{what}: {self.limit} run(s) at once and {self.waiting} call(s) waiting, the most allowed "
                "(max_concurrent, max_queued); try again later",
                details={"max_concurrent": self.limit, "max_queued": self.max_waiting},
            )
        self.waiting += 1
        try:
            await _first(self._free.acquire(), caller_gone, f"{what}: the caller left before it started")
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._free.release()


async def _first(acquire: Coroutine[Any, Any, Any], caller_gone: asyncio.Event | None, reason: str) -> None:
    """Await ``acquire``, unless ``caller_gone`` is set first (then ActionFailed, nothing held)."""
    if caller_gone is None:
        await acquire
        return
    got = asyncio.ensure_future(acquire)
    gone = asyncio.ensure_future(caller_gone.wait())
    try:
        await asyncio.wait([got, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not got.done():
            got.cancel()
    if not got.done() or got.cancelled():
        raise ActionFailed(reason)


@dataclass(frozen=True, slots=True)
class Command:
    """One command, checked and ready to run."""

    name: str
    config: CommandConfig
    run_as: RunAs | None
    cgroups: CgroupTree | None = None
    gate: _Gate = field(default_factory=lambda: _Gate(1, 0))

    async def run(self, params: Mapping[str, Any]) -> CommandResult:
        where = f"command {self.config.module}.{self.name}"
        gone = caller_gone.get() if self.config.cancel_on_disconnect else None
        async with self.gate.held(where, gone):
            # Paths are pinned once the call has its turn: as close to the spawn as can be,
            # and no descriptor is held by a call that waits or is refused.
            values = {name: render_value(value) for name, value in params.items()}
            pinned = self._pin_paths(params)
            values.update({name: p.argv_text() for name, p in pinned.items()})
            argv = [render_element(element, values) for element in self.config.argv]
            cgroup = None
            try:
                cgroup = self._new_cgroup()
                return await run_command(
                    argv,
                    env=self.config.env,
                    cwd=self.config.cwd or Path("/"),
                    run_as=self.run_as,
                    timeout_s=self.config.timeout_s,
                    max_output_bytes=self.config.max_output_bytes,
                    containment=Containment(cgroup, None if self.cgroups is None else self.cgroups.home),
                    caller_gone=gone,
                    pass_fds=[p.fd for p in pinned.values()],
                )
            except (SpawnError, OSError, CgroupError) as exc:
                if isinstance(exc, SpawnError):
                    reason: object = exc.reason
                else:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise ActionFailed(
                    f"{where} could not start {argv[0]}: {reason}", details={"executable": argv[0]}
                ) from None
            finally:
                for p in pinned.values():
                    os.close(p.fd)
                if cgroup is not None:
                    cgroup.remove()

    def _new_cgroup(self) -> Cgroup | None:
        if self.cgroups is None:
            return None
        cgroup = self.cgroups.command(f"{os.getpid()}-{next(_RUNS)}")
        try:
            cgroup.create()
        except CgroupError as exc:
            raise ActionFailed(f"command {self.config.module}.{self.name}: {exc}") from None
        return cgroup

    def _pin_paths(self, params: Mapping[str, Any]) -> dict[str, PinnedPath]:
        """Hold every path parameter open, as checked, for the command to use.

        On a refusal, every one already held is closed.
        """
        pinned: dict[str, PinnedPath] = {}
        if not can_pin() or self.run_as is not None:
            # No O_PATH or no /proc; or the command runs as its own user, whose rights the kernel then
            # checks on every directory of the text path (a descriptor opened here would skip them).
            return pinned
        try:
            for pname, spec in self.config.params.items():
                if spec.type == "path" and spec.base is not None and params.get(pname) is not None:
                    pinned[pname] = pin(spec.base, params[pname])
        except (ValueError, OSError) as exc:
            for p in pinned.values():
                os.close(p.fd)
            reason = exc if isinstance(exc, ValueError) else f"cannot be opened: {exc.strerror or exc}"
            raise ParamsInvalid(
                f"bad params for {self.config.module}.{self.name}: {pname}: {reason}",
                details={"errors": [{"field": pname, "message": str(reason), "type": "path"}]},
            ) from None
        return pinned


class CommandModule(Module):
    """Actions that run the commands the config declares."""

    commands: dict[str, Command] = {}


def _check(name: str, config: CommandConfig) -> RunAs | None:
    where = f"[commands.{name}]"
    if not re.match(COMMAND_NAME, name):
        raise ConfigError(
            f"{where}: a command name is letters, digits, '_' and '-' (at most 64), not {name!r}"
        )
    if _CALLER in config.params:
        raise ConfigError(f"{where} params: {_CALLER!r} is reserved; rename the parameter")
    executable = Path(config.argv[0])
    if not executable.is_file() or not os.access(executable, os.X_OK):
        raise ConfigError(f"{where} argv[0] {str(executable)!r} is not an executable file")
    for index, element in enumerate(config.argv):
        for match in PLACEHOLDER.finditer(element):
            if match.group(1) not in config.params:
                known = ", ".join("{" + k + "}" for k in sorted(config.params)) or "(no params)"
                raise ConfigError(
                    f"{where} argv[{index}] {element!r}: unknown placeholder {match.group(0)!r}; known: "
                    f"{known}"
                )
    if config.user is None:
        return None
    try:
        user = pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(f"{where} user {config.user!r} does not exist on this host") from None
    if user.pw_uid != os.geteuid() and os.geteuid() != 0:
        raise ConfigError(
            f"{where} user {config.user!r}: only a daemon running as root can run commands as another user"
        )
    groups = tuple(g for g in os.getgrouplist(user.pw_name, user.pw_gid) if g != user.pw_gid)
    return RunAs(uid=user.pw_uid, gid=user.pw_gid, groups=groups)


def _remove_stale(cgroups: CgroupTree) -> None:
    """Kill and remove the command cgroups an earlier daemon of this state directory left.

    That daemon died in the middle of a call.
    """
    stale = cgroups.stale_commands()
    for cgroup in stale:
        cgroup.kill()
    deadline = time.monotonic() + STALE_KILL_WAIT_S
    for cgroup in stale:
        while cgroup.populated() and time.monotonic() < deadline:
            time.sleep(0.01)  # start-up, before the loop serves anyone: cgroup.kill takes microseconds
        if not cgroup.remove():
            log.warning(
                "cannot remove %s, left by an earlier daemon: its processes outlived SIGKILL", cgroup.path
            )


def _action_for(command: Command) -> Any:
    """A method with the command's parameters as its signature, marked as an action."""

    async def run(self: CommandModule, **params: Any) -> CommandResult:
        params.pop(_CALLER, None)
        return await command.run(params)

    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    for pname, spec in command.config.params.items():
        annotations[pname], field = param_field(spec)
        parameters.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=field))
    parameters.append(inspect.Parameter(_CALLER, inspect.Parameter.KEYWORD_ONLY, annotation=Identity))
    annotations[_CALLER] = Identity
    annotations["return"] = CommandResult  # the result schema (core/registry.py)
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = annotations
    run.__name__ = run.__qualname__ = command.name
    run.__doc__ = command.config.doc or f"Runs {command.config.argv[0]}."
    config = command.config
    return action(name=command.name, read_only=config.read_only, dangerous=config.dangerous)(run)


def command_modules(
    commands: Mapping[str, CommandConfig], cgroups: CgroupTree | None = None
) -> list[CommandModule]:
    """One module instance per module name the commands use.

    Args:
        commands: the ``[commands]`` section.
        cgroups: the tree each run gets its own cgroup in (None: found by its session).

    Raises:
        ConfigError: naming the first bad command.
    """
    if cgroups is not None:
        _remove_stale(cgroups)
    by_module: dict[str, dict[str, Command]] = {}
    for name, config in commands.items():
        gate = _Gate(config.max_concurrent, config.max_queued)
        by_module.setdefault(config.module, {})[name] = Command(
            name, config, _check(name, config), cgroups, gate
        )
    modules: list[CommandModule] = []
    for module_name, members in by_module.items():
        namespace: dict[str, Any] = {"name": module_name, "commands": members}
        namespace.update({f"_run_{name}": _action_for(cmd) for name, cmd in members.items()})
        namespace["__doc__"] = f"Commands declared in the config ({', '.join(sorted(members))})."
        cls = type(f"Commands_{module_name}", (CommandModule,), namespace)
        modules.append(cls())
    return modules
