"""The ``[http]`` and ``[legacy]`` tables: where the daemon listens, and the limits of each listener."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr, ValidationInfo, field_validator

from pymgr.auth.settings import TlsConfig
from pymgr.config.section import Section


def _octal_mode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError(f'must be an octal mode such as "0660", not {value!r}') from None
    return value


class HttpConfig(Section):
    """The native HTTP/JSON API."""

    #: Unix socket path; empty string turns the Unix listener off.
    unix_socket: Path | None = Path("/run/pymgr/pymgr.sock")
    #: Start even though socket_mode lets every local user connect (o+w).
    #: (Declared before socket_mode: its check reads this.)
    allow_world_writable: bool = False
    #: File mode of the socket (octal); 0660 lets only the owner and the group connect.
    socket_mode: Annotated[int, BeforeValidator(_octal_mode), Field(ge=0, le=0o777)] = 0o660
    #: Group that owns the socket (name); none keeps the daemon's group.
    socket_group: str | None = None
    #: false: a socket_group that does not exist (or may not be set by this
    #: user) is a warning and the daemon's group stays; true: a start-up error.
    socket_group_required: bool = True
    #: Optional TCP listener, "host:port" (port 0 picks a free one).
    tcp: str | None = None
    #: Largest request body accepted (bytes); more gets 413.
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    #: Longest request target (path and query), in bytes; more gets 413.
    max_request_line_bytes: int = Field(8 * 1024, ge=64)
    #: Largest request head (request line and headers), in bytes; more gets 413.
    #: h11 allows 16 KiB; httptools has no limit of its own.
    max_header_bytes: int = Field(16 * 1024, ge=256)
    #: Seconds from connect (or the first byte of a request) until its head is complete; then 408 and close.
    header_timeout_s: float = Field(10.0, gt=0)
    #: Seconds from a complete head until the whole body has arrived; then 408 and close.
    body_timeout_s: float = Field(30.0, gt=0)
    #: Seconds a client may leave its replies unread (the connection's send buffer full) before
    #: the connection is aborted: a client that never reads must not hold a slot forever.
    send_timeout_s: float = Field(30.0, gt=0)
    #: Open connections per listener; more are answered 503 and closed.
    max_connections: int = Field(1000, ge=1)
    #: Open connections per identity (uid on the Unix socket, client address
    #: or certificate on TCP); more are answered 429 and closed.
    max_connections_per_identity: int = Field(200, ge=1)
    #: File descriptors kept out of every connection cap, for the daemon's own files (task store, logs,
    #: audit log, keeper link, running commands' pipes) and its listening sockets. Start-up refuses caps
    #: whose sum (max_connections per HTTP listener, [legacy] max_connections) plus this passes RLIMIT_NOFILE.
    reserved_fds: int = Field(256, ge=32)
    #: TLS on the TCP listener; none serves plain HTTP (signed requests still required).
    tls: TlsConfig | None = None
    #: Seconds an idle keep-alive connection stays open.
    keepalive_timeout_s: float = Field(5.0, gt=0)
    #: Seconds to finish in-flight requests on shutdown before cancelling them.
    shutdown_timeout_s: float = Field(10.0, ge=0)

    @field_validator("socket_mode")
    @classmethod
    def _not_world_writable(cls, value: int, info: ValidationInfo) -> int:
        unix = info.data.get("unix_socket") is not None  # "" (off) is None by now
        if unix and value & 0o002 and not info.data.get("allow_world_writable", False):
            raise ValueError(
                f'"{value:04o}" lets every local user write to the socket and call pymgr; use "0660" '
                "with socket_group, or set allow_world_writable = true in [http] to accept that"
            )
        return value

    @field_validator("tcp")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f'must be "host:port" with a port 0-65535, not {value!r}')
        return value


class LegacyConfig(Section):
    """The 2014 design's `key:value` line protocol (opt-in)."""

    enabled: bool = False
    #: Loopback by default: this signature is static and replayable.
    host: str = "127.0.0.1"
    port: int = Field(6667, ge=0, le=65535)
    #: Shared secret of the HMAC-MD5 module-name signature.
    secret: SecretStr | None = None
    #: Longest accepted request line, in bytes (h11 uses 16 KiB for a whole head).
    max_line_bytes: int = Field(4096, ge=16)
    #: Most `key:value` lines in one request.
    max_lines: int = Field(64, ge=3)
    #: Seconds from connect until the request must be complete.
    read_timeout_s: float = Field(10.0, gt=0)
    #: Open connections at once; more get err_code 8 and are closed.
    max_connections: int = Field(100, ge=1)
    #: Open connections from one client address; more get err_code 7 and are closed.
    max_connections_per_peer: int = Field(20, ge=1)
