"""The daemon: wire config, core and edges together, run, shut down cleanly.

Rules:
- Everything that can fail on bad config fails before the first socket
  accepts: modules load, listeners bind, then servers start.
- Shutdown (SIGTERM/SIGINT): stop accepting (and taking fleet jobs), let in-flight requests finish
  within ``http.shutdown_timeout_s``; deal with tasks (``tasks.on_shutdown``), then let the fleet's jobs
  report their runs' ends (``fleet.stop_report_s``); close the audit last (what the host does while it
  stops is audited); remove the socket file and exit 0.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import socket
import sys
import threading
import grp
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pymgr
from pymgr._configtrust import config_warnings
from pymgr._fsguard import check_trusted
from pymgr.auth.legacy import PUBLISHED_SECRET
from pymgr.auth.guard import EdgeGuard
from pymgr.config import Config, ConfigError
from pymgr.core.dispatch import CallHandler
from pymgr.core.loader import module_classes
from pymgr.core.registry import ModuleContext, Registry, RegistryError
from pymgr.errors import Unavailable
from pymgr.metrics import Metrics
from pymgr.modules.audit import AuditModule
from pymgr.modules.commands import command_modules
from pymgr.auth.pipeline import GuardedDispatcher
from pymgr.security import Security, SecurityError, build_security
from pymgr.service.fdlimit import FdBudgetError, check_fd_budget, fd_budget, raise_nofile
from pymgr.service.hooks import NO_HOOKS, Runtime, ServiceHooks
from pymgr.tasks.statedir import prepare_state_dir
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.streams import TaskStreams
from pymgr.transport.conncount import ConnectionCounter
from pymgr.auth.delegation import Delegation
from pymgr.transport.http.guard import GuardedApp
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.messages import Handler
from pymgr.transport.http.routes import HttpApp
from pymgr.transport.http.server import HttpServer
from pymgr.transport.http.tls import TlsError, server_context
from pymgr.transport.legacy import LegacyServer, bind_legacy
from pymgr.transport.listeners import ListenerError, bind_tcp, bind_unix, unix_path_of

log = logging.getLogger("pymgr")

#: Exit code for a config or start-up error (EX_CONFIG from sysexits.h).
EXIT_CONFIG = 78


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to fix."""


def build_registry(config: Config, tasks: TaskManager, metrics: Metrics | None = None) -> Registry:
    """Every enabled module, instantiated with its context."""
    registry = Registry()
    for cls in module_classes(config.modules.enabled):
        context = ModuleContext(
            tasks=tasks, settings=config.modules.settings.get(cls.name, {}), metrics=metrics
        )
        registry.add(cls(context))
    for module in command_modules(config.commands, tasks.cgroups):  # [commands.NAME]: actions with no Python
        registry.add(module)
    registry.add(AuditModule(config.audit))  # every daemon: audit.read is the policy's to allow
    return registry


def bind_http(
    config: Config, inherited: Mapping[str, list[socket.socket]] | None = None
) -> list[socket.socket]:
    """The HTTP listeners: passed ones (socket activation) replace the configured ones they name."""
    inherited = inherited or {}
    sockets = [*inherited.get("http", []), *inherited.get("http-tcp", [])]
    if config.http.unix_socket is not None and "http" not in inherited:
        sockets.append(bind_unix(config.http.unix_socket, config.http.socket_mode, socket_group(config)))
    if config.http.tcp is not None and "http-tcp" not in inherited:
        sockets.append(bind_tcp(config.http.tcp))
    if not sockets:
        raise StartupError("no HTTP listener configured: set http.unix_socket or http.tcp")
    return sockets


def socket_group(config: Config) -> str | None:
    """The group to give the Unix socket: ``socket_group``, unless it cannot be
    used and ``socket_group_required = false`` (then a warning and None)."""
    group = config.http.socket_group
    if group is None or config.http.socket_group_required:
        return group
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning("socket_group %r does not exist on this host; the socket keeps the daemon's group", group)
        return None
    if os.geteuid() != 0 and gid not in os.getgroups() and gid != os.getegid():
        log.warning(
            "socket_group %r: this user may not give files that group; the socket keeps the daemon's group",
            group,
        )
        return None
    return group


def http_listener_count(config: Config, inherited: Mapping[str, list[socket.socket]] | None = None) -> int:
    """How many HTTP listening sockets ``bind_http`` will return (each has its own connection cap)."""
    inherited = inherited or {}
    passed = len(inherited.get("http", [])) + len(inherited.get("http-tcp", []))
    unix = config.http.unix_socket is not None and "http" not in inherited
    tcp = config.http.tcp is not None and "http-tcp" not in inherited
    return passed + unix + tcp


def _address(sock: socket.socket) -> str:
    path = unix_path_of(sock)
    if path is not None:
        return f"unix:{path}"
    host, port = sock.getsockname()[:2]
    return f"tcp:{host}:{port}"


async def run(config: Config, stop: asyncio.Event | None = None, hooks: ServiceHooks = NO_HOOKS) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT arrives); ``hooks`` hear when ready and stopping."""
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    for warning in config_warnings(config):
        log.warning("%s", warning)
    metrics = Metrics()
    tasks = _task_manager(config, metrics)
    try:
        # Before anything opens a descriptor that counts: the caps are checked against the raised limit.
        check_fd_budget(fd_budget(config, http_listener_count(config, hooks.inherited)), raise_nofile())
        registry = build_registry(config, tasks, metrics)
        security = build_security(config, registry, tasks)
        dispatcher = security.dispatcher(registry, metrics)
        tls = server_context(config.http)
        sockets = bind_http(config, hooks.inherited)
        fleet = _fleet_agent(config, dispatcher, tasks, security)
    except (RegistryError, ListenerError, SecurityError, TlsError, ConfigError, FdBudgetError) as exc:
        raise StartupError(str(exc)) from None
    closers: list[Callable[[], Awaitable[None]]] = []

    async def close_servers() -> None:
        log.info("shutting down: no new connections; finishing in-flight requests")
        await asyncio.gather(*(close() for close in closers))

    async with AsyncExitStack() as stack:
        # Closed last: everything the host still does while it stops (the fleet's reports too) is audited.
        stack.callback(security.close)
        stack.push_async_callback(_close_tasks, tasks, fleet)
        try:  # re-adopt the runs left by an earlier daemon, record those that ended meanwhile
            await tasks.open()
        except Unavailable as exc:
            log.error("tasks: %s; task records can be read, starts fail until this is fixed", exc)
        stack.callback(_remove_files, _owned_socket_files(sockets, hooks.inherited))
        stack.push_async_callback(close_servers)
        http = http_server(config, _http_app(dispatcher, security, tasks, stop), sockets, tls)
        await http.start()
        closers.append(http.close)
        _gauges(metrics, tasks, http)
        _start_fleet(fleet, stack)  # after the tasks are open: it follows the runs of jobs taken before
        listeners: dict[str, Any] = {"http": [_address(s) for s in sockets], "modules": registry.names()}
        if config.legacy.enabled:
            listeners["legacy"] = await _start_legacy(
                config, dispatcher, closers, hooks.inherited.get("legacy"), security.edge, metrics
            )
        log.info("ready %s", json.dumps(listeners))
        _call_hook(hooks.ready, Runtime(config, tasks, dispatcher, listeners))
        await stop.wait()
        _call_hook(hooks.stopping)
    log.info("stopped")


def _http_app(
    dispatcher: GuardedDispatcher, security: Security, tasks: TaskManager, stop: asyncio.Event
) -> GuardedApp:
    """The API's routes behind the edge's guard (who is calling, limits, signatures)."""
    routes = HttpApp(dispatcher, version=pymgr.__version__, streams=TaskStreams(tasks, stop))

    def delegation() -> Delegation | None:
        policy = dispatcher.policy
        return None if policy is None else policy.delegation

    return GuardedApp(routes, edge=security.edge, verifier=security.verifier, delegation=delegation)


def _fleet_agent(
    config: Config, dispatcher: GuardedDispatcher, tasks: TaskManager, security: Security
) -> Any:
    """The fleet agent of ``[fleet]`` (docs/fleet.md), or None; imported only then, so a plain daemon never
    loads Redis.

    Raises:
        StartupError: the fleet's dependencies are missing, a key or password file cannot be used, or the
            record of action jobs in the state directory cannot be opened.
    """
    if config.fleet is None:
        return None
    from pymgr.cli.daemondeps import no_fleet_message

    missing = no_fleet_message("[fleet]")
    if missing is not None:
        raise StartupError(missing.removeprefix("error: "))
    from pymgr.fleet.agent import FleetAgent
    from pymgr.fleet.keys import FleetKeyError
    from pymgr.fleet.replay import RecordError

    try:
        return FleetAgent(config.fleet, dispatcher, tasks, security.auditor, state_dir=config.state_dir)
    except (FleetKeyError, RecordError) as exc:
        raise StartupError(f"[fleet]: {exc}") from None


def _start_fleet(fleet: Any, stack: AsyncExitStack) -> None:
    """Start the fleet agent, if there is one; at shutdown it first takes no new job (``_close_tasks``)."""
    if fleet is not None:
        fleet.start()
        stack.push_async_callback(fleet.stop_reading)


async def _close_tasks(tasks: TaskManager, fleet: Any) -> None:
    """Stop or leave the runs (``[tasks] on_shutdown``); then the fleet agent reports their ends and closes."""
    try:
        await tasks.aclose()
    finally:
        if fleet is not None:
            await fleet.aclose()


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``.

    Windows has no loop signal handlers, and only the main thread may install them:
    elsewhere the caller (the Windows service's stop event) sets ``stop`` itself.
    """
    if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)


def _owned_socket_files(
    sockets: list[socket.socket], inherited: Mapping[str, list[socket.socket]]
) -> list[Path]:
    """The Unix socket files to remove at exit, taken now (the server closes the sockets on shutdown).

    Passed sockets' files belong to the service manager (socket activation).
    """
    owned = [s for s in sockets if not any(s in socks for socks in inherited.values())]
    return [path for path in map(unix_path_of, owned) if path is not None]


def _task_manager(config: Config, metrics: Metrics) -> TaskManager:
    """The task manager, once the state directory is safe to keep records in.

    Raises:
        StartupError: the state directory or the socket's directory is unsafe, or a task type cannot be run.
    """
    try:
        for note in prepare_state_dir(config.state_dir):
            log.warning("state directory: %s", note)
        if config.http.unix_socket is not None and config.http.unix_socket.parent.exists():
            check_trusted(config.http.unix_socket.parent)  # others must not swap the socket under the clients
        return TaskManager(
            config.tasks, config.state_dir, metrics=metrics
        )  # a cgroup limit it cannot enforce: refused
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"unsafe files: {exc.strerror or exc}") from None


def http_server(
    config: Config, handler: Handler, sockets: list[socket.socket], tls: ssl.SSLContext | None
) -> HttpServer:
    """The HTTP server for the listening sockets, with the ``[http]`` limits (TLS on the TCP ones when given)."""
    http = config.http
    limits = HttpLimits(
        http.max_request_line_bytes,
        http.max_header_bytes,
        http.header_timeout_s,
        http.body_timeout_s,
        http.send_timeout_s,
    )
    return HttpServer(
        handler,
        sockets,
        limits=limits,
        counter=ConnectionCounter(http.max_connections, http.max_connections_per_identity),
        max_body_bytes=http.max_body_bytes,
        keepalive_timeout_s=http.keepalive_timeout_s,
        shutdown_timeout_s=http.shutdown_timeout_s,
        ssl_context=tls,
    )


async def _start_legacy(
    config: Config,
    dispatcher: CallHandler,
    closers: list[Callable[[], Awaitable[None]]],
    passed: list[socket.socket] | None,
    edge: EdgeGuard | None,
    metrics: Metrics,
) -> str:
    legacy = LegacyServer(config.legacy, dispatcher, edge=edge)
    metrics.gauge(
        "pymgr_legacy_connections",
        "Open legacy-protocol connections.",
        lambda: float(legacy.open_connections),
    )
    sock = passed[0] if passed else bind_legacy(config.legacy)
    try:
        await legacy.start(sock=sock)
    except (ConfigError, OSError) as exc:
        if sock is not None and not passed:
            sock.close()
        if isinstance(exc, ConfigError):
            raise StartupError(str(exc)) from None
        where = f"{config.legacy.host}:{config.legacy.port}"
        raise StartupError(f"cannot listen for the legacy protocol on {where}: {exc.strerror}") from None
    closers.append(functools.partial(legacy.close, config.http.shutdown_timeout_s))
    secret = config.legacy.secret
    if secret is not None and secret.get_secret_value() == PUBLISHED_SECRET:
        log.warning(
            "LEGACY SECRET IS PUBLIC: [legacy] secret is the 2014 design's published secret; anyone can sign "
            "requests with it. Fine for the demo on loopback, never on a real host: set your own secret"
        )
    return f"tcp:{config.legacy.host}:{legacy.port}"


def _gauges(metrics: Metrics, tasks: TaskManager, http: HttpServer) -> None:
    def active_runs() -> dict[tuple[str, ...], float]:
        return {labels: float(count) for labels, count in tasks.active_counts().items()}

    metrics.gauge(
        "pymgr_task_runs_active",
        "Task runs queued or running now, by type and state.",
        active_runs,
        labels=("type", "state"),
    )
    metrics.gauge(
        "pymgr_keeper_connected",
        "1 while the task keeper is connected.",
        lambda: float(tasks.keeper_connected),
    )
    metrics.gauge(
        "pymgr_event_subscribers",
        "Open GET /v1/events streams (a web console holds one, however many browsers watch).",
        lambda: float(tasks.events.subscribers),
    )
    metrics.gauge(
        "pymgr_http_connections",
        "Open HTTP connections, all listeners.",
        lambda: float(len(http.state.connections)) if http.state is not None else 0.0,
    )


def _call_hook(hook: Callable[..., None], *args: object) -> None:
    try:
        hook(*args)
    except Exception:  # a failed notification must not take the API down
        log.exception("service hook %s failed; this is a bug", getattr(hook, "__qualname__", hook))


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
