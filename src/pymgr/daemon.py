"""The daemon: wire config, core and edges together, run, shut down cleanly.

Rules:
- Everything that can fail on bad config fails before the first socket
  accepts: modules load, listeners bind, then servers start.
- Shutdown (SIGTERM/SIGINT) has two steps: stop accepting and let in-flight
  requests finish within ``http.shutdown_timeout_s``; then deal with tasks
  (``tasks.on_shutdown``), remove the socket file and exit 0.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from contextlib import AsyncExitStack
from pathlib import Path

import pymgr
from pymgr._configtrust import config_warnings
from pymgr._fsguard import check_trusted
from pymgr.auth.legacy import PUBLISHED_SECRET
from pymgr.config import Config, ConfigError, LegacyConfig, load_config
from pymgr.core.dispatch import Dispatcher
from pymgr.core.loader import module_classes
from pymgr.core.registry import ModuleContext, Registry, RegistryError
from pymgr.errors import Unavailable
from pymgr.metrics import Metrics
from pymgr.modules.commands import command_modules
from pymgr.security import Security, SecurityError, build_security, socket_group
from pymgr.service.fdlimit import FdBudgetError, check_fd_budget, fd_budget, raise_nofile
from pymgr.service.hooks import NO_HOOKS, Runtime, ServiceHooks
from pymgr.tasks._statedir import prepare_state_dir
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.streams import TaskStreams
from pymgr.transport.http.routes import HttpApp
from pymgr.transport.legacy import LegacyServer
from pymgr.transport.listeners import ListenerError, bind_tcp, bind_unix, unix_path_of

try:
    import uvloop
except ModuleNotFoundError:  # pragma: no cover - Windows, or a minimal install
    uvloop = None

log = logging.getLogger("pymgr")

#: Exit code for a config or start-up error (EX_CONFIG from sysexits.h).
EXIT_CONFIG = 78

#: Backlog of the legacy listener ``_bind_legacy`` binds: asyncio's create_server default.
LEGACY_BACKLOG = 100


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to fix."""


def build_registry(config: Config, tasks: TaskManager, metrics: Metrics | None = None) -> Registry:
    """Every enabled module, instantiated with its context."""
    registry = Registry()
    for cls in module_classes(config.modules.enabled):
        context = ModuleContext(tasks=tasks, settings=config.modules.settings.get(cls.name, {}), metrics=metrics)
        registry.add(cls(context))
    for module in command_modules(config.commands, tasks.cgroups):  # [commands.NAME]: actions with no Python
        registry.add(module)
    return registry


def bind_http(config: Config, inherited: Mapping[str, list[socket.socket]] | None = None) -> list[socket.socket]:
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
    loop = asyncio.get_running_loop()
    # Windows has no loop signal handlers, and only the main thread may install them:
    # elsewhere the caller (the Windows service's stop event) sets `stop` itself.
    if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    for warning in config_warnings(config):
        log.warning("%s", warning)
    try:
        for note in prepare_state_dir(config.state_dir):
            log.warning("state directory: %s", note)
        if config.http.unix_socket is not None and config.http.unix_socket.parent.exists():
            check_trusted(config.http.unix_socket.parent)  # others must not swap the socket under the clients
        metrics = Metrics()
        tasks = TaskManager(config.tasks, config.state_dir, metrics=metrics)  # a cgroup limit it cannot enforce: refused
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"unsafe files: {exc.strerror or exc}") from None
    try:
        tasks = TaskManager(config.tasks, config.state_dir, metrics=metrics)  # a cgroup limit it cannot enforce: refused
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        # Before anything opens a descriptor that counts: the caps are checked against the raised limit.
        check_fd_budget(fd_budget(config, http_listener_count(config, hooks.inherited)), raise_nofile())
        registry = build_registry(config, tasks, metrics)
        security = build_security(config, registry, tasks)
        dispatcher = security.dispatcher(registry)
        dispatcher.metrics = metrics
        sockets = bind_http(config, hooks.inherited)
    except (RegistryError, ListenerError, SecurityError, ConfigError, FdBudgetError) as exc:
        raise StartupError(str(exc)) from None
    closers: list[Callable[[], Awaitable[None]]] = []

    async def close_servers() -> None:
        log.info("shutting down: no new connections; finishing in-flight requests")
        await asyncio.gather(*(close() for close in closers))

    async with AsyncExitStack() as stack:
        stack.push_async_callback(tasks.aclose)
        try:  # re-adopt the runs left by an earlier daemon, record those that ended meanwhile
            await tasks.open()
        except Unavailable as exc:
            log.error("tasks: %s; task records can be read, starts fail until this is fixed", exc)
        stack.callback(security.close)
        # The server closes the sockets on shutdown, so their paths are taken now.
        # Passed sockets' files belong to the service manager (socket activation).
        owned = [s for s in sockets if not any(s in socks for socks in hooks.inherited.values())]
        stack.callback(_remove_files, [p for p in map(unix_path_of, owned) if p is not None])
        stack.push_async_callback(close_servers)
        http = security.http_server(
            security.wrap(HttpApp(dispatcher, version=pymgr.__version__, streams=TaskStreams(tasks, stop))),
            sockets,
            keepalive_timeout_s=config.http.keepalive_timeout_s,
            shutdown_timeout_s=config.http.shutdown_timeout_s,
        )
        await http.start()
        closers.append(http.close)
        _gauges(metrics, tasks, http)
        listeners = {"http": [_address(s) for s in sockets], "modules": dispatcher.registry.names()}
        if config.legacy.enabled:
            listeners["legacy"] = await _start_legacy(
                config, dispatcher, closers, hooks.inherited.get("legacy"), security, metrics
            )
        log.info("ready %s", json.dumps(listeners))
        _call_hook(hooks.ready, Runtime(config, tasks, dispatcher, listeners))
        await stop.wait()
        _call_hook(hooks.stopping)
    log.info("stopped")


async def _start_legacy(
    config: Config,
    dispatcher: Dispatcher,
    closers: list[Callable[[], Awaitable[None]]],
    passed: list[socket.socket] | None = None,
    security: Security | None = None,
    metrics: Metrics | None = None,
) -> str:
    legacy = LegacyServer(config.legacy, dispatcher, edge=security.edge if security is not None else None)
    if metrics is not None:
        metrics.gauge("pymgr_legacy_connections", "Open legacy-protocol connections.",
                      lambda: float(legacy.open_connections))  # fmt: skip
    sock = passed[0] if passed else _bind_legacy(config.legacy)
    try:
        await legacy.start(sock=sock)
    except (ConfigError, OSError) as exc:
        if sock is not None and not passed:
            sock.close()
        if isinstance(exc, ConfigError):
            raise StartupError(str(exc)) from None
        raise StartupError(f"cannot listen for the legacy protocol on {config.legacy.host}:{config.legacy.port}: {exc.strerror}") from None
    closers.append(functools.partial(legacy.close, config.http.shutdown_timeout_s))
    secret = config.legacy.secret
    if secret is not None and secret.get_secret_value() == PUBLISHED_SECRET:
        log.warning(
            "LEGACY SECRET IS PUBLIC: [legacy] secret is the 2014 design's published secret; anyone can sign "
            "requests with it. Fine for the demo on loopback, never on a real host: set your own secret"
        )
    return f"tcp:{config.legacy.host}:{legacy.port}"


def _bind_legacy(legacy: LegacyConfig) -> socket.socket | None:
    """The legacy listener when ``host`` is an IP address; ``None`` leaves binding to ``LegacyServer.start``.

    ``loop.create_server(host, port)`` resolves the host in libuv's thread pool
    (4 threads) and imports the idna codec: 0.5 MiB of the idle daemon's RSS
    (measured: VmRSS of the demo daemon after 1 s idle, 6 threads -> 2). This
    binds as create_server does (SO_REUSEADDR, IPV6_V6ONLY, its backlog); a
    host name or a failed bind goes the old way, with the same errors.
    """
    try:
        address = ipaddress.ip_address(legacy.host)
    except ValueError:
        return None
    if "%" in legacy.host:  # a scoped IPv6 address: create_server resolves the scope
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        return socket.create_server((legacy.host, legacy.port), family=family, backlog=LEGACY_BACKLOG)
    except OSError:
        return None


def _gauges(metrics: Metrics, tasks: TaskManager, http: Any) -> None:
    metrics.gauge("pymgr_task_runs_active", "Task runs queued or running now, by type and state.",
                  tasks.active_counts, labels=("type", "state"))  # fmt: skip
    metrics.gauge("pymgr_keeper_connected", "1 while the task keeper is connected.", lambda: float(tasks.keeper_connected))
    metrics.gauge("pymgr_http_connections", "Open HTTP connections, all listeners.",
                  lambda: float(len(http.state.connections)) if http.state is not None else 0.0)  # fmt: skip


def _call_hook(hook: Callable[..., None], *args: object) -> None:
    try:
        hook(*args)
    except Exception:  # a failed notification must not take the API down
        log.exception("service hook %s failed; this is a bug", getattr(hook, "__qualname__", hook))


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve(config_path: Path, log_level: str | None = None) -> int:
    """Run the daemon in the foreground; the exit code for the CLI."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"pymgr: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(log_level or config.log_level)
    runner_args = {"loop_factory": uvloop.new_event_loop} if uvloop is not None else {}
    try:
        with asyncio.Runner(**runner_args) as runner:
            runner.run(run(config))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    return 0
