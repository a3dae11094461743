"""``pymgr console``: read the config, stop being root, serve the app with uvicorn.

Rules:
- Never serves as root: started as root, it becomes the configured ``user`` (its group and
  supplementary groups too) before it opens anything of the config's; with no ``user`` it refuses.
  It does not go back: the switch is checked by trying to regain uid 0. Its Unix socket
  (``listen = "unix:PATH"``, ``listener.py``) is bound before, and given to that user and
  ``listen_group``, so that its owner, group and mode are the configured ones whoever started it.
- uvicorn believes no X-Forwarded-For / X-Forwarded-Proto itself: the app does (``proxy.py``), from
  ``trusted_proxies`` only, after it has read the peer (an address, or the Unix socket) that the user
  header is trusted by.
- Access lines carry the path, never a cookie (uvicorn's access log writes no headers); the
  console's own log lines never carry a password or a session id.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pwd
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from pymgr.console.config import ConsoleConfig, ConsoleConfigError, load_config
from pymgr.console.listener import UnixListener, bind_unix, group_id

if TYPE_CHECKING:
    import uvicorn


class RootRefused(Exception):
    """The console was started as root with nowhere to go (or could not leave root)."""


def _target_user(config: ConsoleConfig, config_path: Path) -> pwd.struct_passwd | None:
    """The user a console started as root becomes; None when it is not root.

    Raises:
        RootRefused: see ``drop_root``.
    """
    if os.geteuid() != 0:
        return None
    if not config.user:
        raise RootRefused(
            f'the console never serves as root: set user = "NAME" in {config_path} ([console]) '
            "to have it switch to that user, or start it as that user"
        )
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise RootRefused(f"user {config.user!r} (console.user in {config_path}) does not exist") from None
    if entry.pw_uid == 0:
        raise RootRefused(f"user {config.user!r} is root: the console must run as an unprivileged user")
    return entry


def open_listener(config: ConsoleConfig, config_path: Path) -> UnixListener | None:
    """The Unix socket of ``listen = "unix:PATH"`` (None for TCP, which uvicorn binds): owned by the
    user a root start becomes (its group unless ``listen_group``), else by who started it.

    Raises:
        ConsoleConfigError: the socket cannot be bound as configured (``listener.ListenError``).
        RootRefused: see ``drop_root``.
    """
    path = config.listen_path()
    if path is None:
        return None
    entry = _target_user(config, config_path)
    owner, group = (entry.pw_uid, entry.pw_gid) if entry is not None else (-1, -1)
    if config.listen_group is not None:
        group = group_id(config.listen_group)
    return bind_unix(path, config.listen_mode, owner, group)


def drop_root(config: ConsoleConfig, config_path: Path) -> None:
    """As root, become ``config.user``; as anyone else, stay.

    Raises:
        RootRefused: root without a ``user``, an unknown user, a user that is root itself,
            or a switch that did not hold.
    """
    entry = _target_user(config, config_path)
    if entry is None:
        return
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RootRefused("the switch away from root did not hold (setuid(0) succeeded again)")


#: Modules imported on first use by what serves a request: imported before root is left, since the
#: Python they come from may be readable by root only (a pyenv under /root).
_LAZY_MODULES = (
    "encodings.idna",
    "encodings.unicode_escape",
    "multipart",
    "python_multipart",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.asyncio",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
)


def _warm(app: Starlette) -> None:
    """Import and compile now what a request would load later (templates, uvicorn's parts)."""
    for name in _LAZY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    templates = app.state.console.templates
    for template in templates.list_templates():
        templates.get_template(template)


def serve(config_path: Path) -> None:
    """Run the console until interrupted.

    Raises:
        ConsoleConfigError: the config cannot be read.
        RootRefused: see ``drop_root``.
    """
    import uvicorn

    from pymgr.console.app import create_app

    config = load_config(config_path)
    app = create_app(config)
    _warm(app)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # One line per request at most (uvicorn's access log); httpx's per-request INFO lines say nothing more.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    listener = open_listener(config, config_path)
    try:
        drop_root(config, config_path)
        host, port = ("", 0) if listener is not None else config.listen_host_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                proxy_headers=False,  # the app's (proxy.py)
                server_header=False,
                log_level="info",
            )
        )
        if listener is None:
            server.run()
        else:
            _serve_unix(server, listener)
        if not server.started:
            raise SystemExit(3)  # uvicorn.run's exit when the app did not start (its lifespan failed)
    finally:
        if listener is not None:
            listener.close()


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _serve_unix(server: uvicorn.Server, listener: UnixListener) -> None:
    """Serve the socket; at SIGTERM remove it, then die of the signal as uvicorn would.

    uvicorn ends by raising the signal it caught again, under the handler it found: the default one
    would end the process before its socket is removed, so the handler found is ``_stop``.
    """
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run(sockets=[listener.sock])
    except _Stopped as stopped:
        listener.close()
        signal.signal(stopped.signum, signal.SIG_DFL)
        signal.raise_signal(stopped.signum)


__all__ = ["ConsoleConfigError", "RootRefused", "drop_root", "open_listener", "serve"]
