"""Where the daemon listens, for a client: a Unix socket or a base URL, and how httpx reaches it.

Rules:
- A client names a socket or a URL, never both; with neither, ``default_socket``
  picks one (``$PYMGR_SOCKET``, a development daemon's, the installed one).
- Requests are signed (``key_id``, ``secret``) only on TCP: on a Unix socket
  the kernel says who the caller is.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymgr.auth.hmac_auth import HmacAuth

#: Environment variable naming the daemon's socket (read by clients and the CLI).
SOCKET_ENV = "PYMGR_SOCKET"
#: Where a development daemon (`make run`, examples/demo.toml) puts its socket,
#: relative to the working directory; used when it exists.
DEV_SOCKET = Path("var/pymgr.sock")
#: Where an installed daemon puts it (systemd RuntimeDirectory=pymgr; the config default).
SYSTEM_SOCKET = Path("/run/pymgr/pymgr.sock")
#: The HTTP host name used on a Unix socket (any name works; this one reads well in logs).
_UDS_BASE_URL = "http://pymgr"


def default_socket() -> Path:
    """The socket to use when none is given.

    Returns:
        ``$PYMGR_SOCKET`` if set and non-empty, else ``./var/pymgr.sock`` if it
        exists (a development daemon), else ``/run/pymgr/pymgr.sock``.
    """
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    if DEV_SOCKET.exists():
        return DEV_SOCKET.absolute()
    return SYSTEM_SOCKET


@dataclass(frozen=True, slots=True)
class Target:
    """Where the daemon listens: a Unix socket or a base URL."""

    socket: Path | None
    url: str | None

    @classmethod
    def choose(cls, socket: str | Path | None, url: str | None) -> Target:
        if socket is not None and url is not None:
            raise ValueError(f"pass either socket or url, not both (socket={str(socket)!r}, url={url!r})")
        if url is not None:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"url must start with http:// or https://, not {url!r}")
            return cls(socket=None, url=url)
        return cls(socket=Path(socket) if socket is not None else default_socket(), url=None)

    def describe(self) -> str:
        return f"socket {self.socket}" if self.socket is not None else f"URL {self.url}"

    def httpx_options(
        self, transport_class: type[Any], timeout_s: float, tls: ssl.SSLContext | None
    ) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client`` or ``httpx.AsyncClient``, with a transport of ``transport_class``.

        Args:
            tls: the TLS settings of an ``https://`` URL; None: the system's CAs.
        """
        uds = None if self.socket is None else str(self.socket)
        verify = True if tls is None else tls
        return {
            "timeout": timeout_s,
            "trust_env": False,
            "transport": transport_class(uds=uds, verify=verify, trust_env=False),
            "base_url": _UDS_BASE_URL if self.socket is not None else self.url,
        }


def security_options(target: Target, key_id: str | None, secret: str | bytes | None) -> dict[str, Any]:
    """httpx options for request signing."""
    options: dict[str, Any] = {}
    if (key_id is None) != (secret is None):
        raise ValueError("pass both key_id and secret to sign requests, or neither")
    if key_id is not None and secret is not None:
        if target.url is None:
            raise ValueError(
                "key_id and secret sign TCP requests; on a Unix socket the kernel says who you are: pass url="
            )
        options["auth"] = HmacAuth(key_id, secret)
    return options
