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
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pymgr
from pymgr.config import Config, ConfigError, load_config
from pymgr.core.dispatch import Dispatcher
from pymgr.core.loader import module_classes
from pymgr.core.registry import ModuleContext, Registry, RegistryError
from pymgr.tasks.manager import TaskManager
from pymgr.transport.http import HttpApp
from pymgr.transport.legacy import LegacyServer
from pymgr.transport.listeners import ListenerError, bind_tcp, bind_unix, unix_path_of
from pymgr.transport.uvicorn_server import UvicornServer

try:
    import uvloop
except ModuleNotFoundError:  # pragma: no cover - Windows, or a minimal install
    uvloop = None

log = logging.getLogger("pymgr")

#: Exit code for a config or start-up error (EX_CONFIG from sysexits.h).
EXIT_CONFIG = 78


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to fix."""


def build_registry(config: Config, tasks: TaskManager) -> Registry:
    """Every enabled module, instantiated with its context."""
    registry = Registry()
    for cls in module_classes(config.modules.enabled):
        context = ModuleContext(tasks=tasks, settings=config.modules.settings.get(cls.name, {}))
        registry.add(cls(context))
    return registry


def bind_http(config: Config) -> list[socket.socket]:
    sockets = []
    if config.http.unix_socket is not None:
        sockets.append(bind_unix(config.http.unix_socket, config.http.socket_mode, config.http.socket_group))
    if config.http.tcp is not None:
        sockets.append(bind_tcp(config.http.tcp))
    if not sockets:
        raise StartupError("no HTTP listener configured: set http.unix_socket or http.tcp")
    return sockets


def _address(sock: socket.socket) -> str:
    path = unix_path_of(sock)
    if path is not None:
        return f"unix:{path}"
    host, port = sock.getsockname()[:2]
    return f"tcp:{host}:{port}"


async def run(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT arrives)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    tasks = TaskManager(config.tasks, config.state_dir)
    try:
        dispatcher = Dispatcher(build_registry(config, tasks))
        sockets = bind_http(config)
    except (RegistryError, ListenerError) as exc:
        raise StartupError(str(exc)) from None
    closers: list[Callable[[], Awaitable[None]]] = []

    async def close_servers() -> None:
        log.info("shutting down: no new connections; finishing in-flight requests")
        await asyncio.gather(*(close() for close in closers))

    async with AsyncExitStack() as stack:
        stack.push_async_callback(tasks.aclose)
        # uvicorn closes the sockets on shutdown, so their paths are taken now.
        stack.callback(_remove_files, [p for p in map(unix_path_of, sockets) if p is not None])
        stack.push_async_callback(close_servers)
        http = UvicornServer(
            HttpApp(dispatcher, max_body_bytes=config.http.max_body_bytes, version=pymgr.__version__),
            sockets,
            keepalive_timeout_s=config.http.keepalive_timeout_s,
            shutdown_timeout_s=config.http.shutdown_timeout_s,
        )
        await http.start()
        closers.append(http.close)
        listeners = {"http": [_address(s) for s in sockets], "modules": dispatcher.registry.names()}
        if config.legacy.enabled:
            listeners["legacy"] = await _start_legacy(config, dispatcher, closers)
        log.info("ready %s", json.dumps(listeners))
        await stop.wait()
    log.info("stopped")


async def _start_legacy(config: Config, dispatcher: Dispatcher, closers: list[Callable[[], Awaitable[None]]]) -> str:
    legacy = LegacyServer(config.legacy, dispatcher)
    try:
        await legacy.start()
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot listen for the legacy protocol on {config.legacy.host}:{config.legacy.port}: {exc.strerror}") from None
    closers.append(functools.partial(legacy.close, config.http.shutdown_timeout_s))
    return f"tcp:{config.legacy.host}:{legacy.port}"


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
