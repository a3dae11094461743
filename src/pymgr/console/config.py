"""The console's settings: a ``[console]`` table in a TOML file (or the whole file), read once at start.

Rules:
- Unknown keys are errors (a typo must not silently keep a default).
- Relative paths are relative to the file's directory, as in the daemon's config.
- Every limit is explicit here, with its reason; docs/console.md lists them.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pymgr.console.users import ROLE

#: An HTTP header's name (RFC 9110 token, letters, digits and '-' in practice).
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
#: A group's name (as useradd accepts it) or number.
_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}")
#: ``listen``'s prefix of a Unix socket, and the ``trusted_proxies`` entry that trusts it: a
#: connection there has no address, and the socket file's mode decides who may connect.
UNIX = "unix"
_UNIX_PREFIX = UNIX + ":"


def _check_listen(value: str) -> str:
    if value.startswith(_UNIX_PREFIX):
        if not value[len(_UNIX_PREFIX) :] or "\0" in value:
            raise ValueError(
                f"listen = unix:PATH names the socket's file (unix:/run/x/x.sock), not {value!r}"
            )
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be HOST:PORT (127.0.0.1:8765) or unix:PATH, not {value!r}")
    return value


def _check_proxy(value: str) -> str:
    if value == UNIX:
        return value
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"a trusted proxy is an IP address or network (10.0.0.0/8), or 'unix', not {value!r}"
        ) from None
    return value


def _check_header(value: str | None) -> str | None:
    if value is not None and not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"a header name is letters, digits and '-' (X-Remote-User), not {value!r}")
    return value


def _check_group(value: str | None) -> str | None:
    if value is not None and not _GROUP.fullmatch(value):
        raise ValueError(f"listen_group is a group's name or number (www-data), not {value!r}")
    return value


def _check_role(value: str) -> str:
    if not ROLE.fullmatch(value):
        raise ValueError(f"a role is 1 to 64 ASCII letters, digits and . _ -, not {value!r}")
    return value


class ConsoleConfig(BaseModel):
    """The ``[console]`` table."""

    model_config = ConfigDict(extra="forbid")

    #: Where browsers connect; loopback by default (put a TLS reverse proxy in front for others).
    #: ``unix:PATH``: a Unix socket only the proxy's user may connect to (``listen_mode``, ``listen_group``).
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:8765"
    #: The Unix socket's mode: who may connect (connecting needs write permission). Others never
    #: may when ``trusted_proxies`` has "unix": every local user could name a person.
    listen_mode: int = Field(0o660, ge=0, le=0o777, strict=True)
    #: The Unix socket's group (the proxy's, www-data); None: the console's user's own group.
    listen_group: Annotated[str | None, AfterValidator(_check_group)] = None
    #: The daemon's Unix socket (None: the client's default, $PYMGR_SOCKET or the installed one).
    socket: Path | None = None
    #: The users file (``pymgr console adduser``): names, argon2id hashes, roles.
    users_file: Path = Path("console-users.json")
    #: Started as root, the console becomes this user before it serves; as root without it, it refuses.
    user: str | None = None
    #: A session unused this long ends (OWASP: 15-30 minutes for an admin tool).
    session_idle_s: float = Field(900.0, gt=0)
    #: A session ends this long after its login, however busy (a stolen cookie dies with it).
    session_absolute_s: float = Field(8 * 3600.0, gt=0)
    #: Most sessions held at once; the oldest is ended to make room (memory stays bounded).
    max_sessions: int = Field(1000, ge=1)
    #: Failed logins a user name or an address may make before delays start.
    login_free_failures: int = Field(3, ge=0)
    #: The first delay after those; each further failure doubles it, up to ``login_max_delay_s``.
    login_delay_s: float = Field(1.0, gt=0)
    login_max_delay_s: float = Field(900.0, gt=0)
    #: Host names the console answers to (the Host header; "*" for any): a page of another name that
    #: resolves to this address (DNS rebinding) is refused. Behind a proxy: the name people use.
    allowed_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost"], min_length=1)
    #: Addresses whose X-Forwarded-For / X-Forwarded-Proto, and user header, are believed; "unix":
    #: every connection to the Unix socket of ``listen`` (its mode and group decide who connects).
    trusted_proxies: list[Annotated[str, AfterValidator(_check_proxy)]] = Field(default_factory=list)
    #: The header in which a sign-in proxy names the person (oauth2-proxy: X-Auth-Request-User); None:
    #: people sign in with a password only. Believed from ``trusted_proxies`` only; from anyone else a
    #: request carrying it is refused (docs/console.md, "Sign-in by a reverse proxy").
    proxy_user_header: Annotated[str | None, AfterValidator(_check_header)] = None
    #: The header with the person's groups, comma-separated (oauth2-proxy: X-Auth-Request-Groups); None:
    #: roles are the users file's entry of that name, else ``proxy_default_roles``.
    proxy_roles_header: Annotated[str | None, AfterValidator(_check_header)] = None
    #: The roles taken from ``proxy_roles_header``; the proxy's other groups are ignored (an identity
    #: provider sends many, and the daemon refuses a role its delegate may not assert).
    proxy_roles: list[Annotated[str, AfterValidator(_check_role)]] = Field(default_factory=list)
    #: The roles of a person the proxy names who has no entry in the users file (no roles header).
    proxy_default_roles: list[Annotated[str, AfterValidator(_check_role)]] = Field(default_factory=list)
    #: Where the proxy signs people out (oauth2-proxy: /oauth2/sign_out), linked from the console's logout.
    proxy_logout_url: str | None = None
    #: A dangerous action asks for the password again when the last one was typed longer ago than this
    #: (GitHub's sudo mode: a few minutes); it always asks for a confirmation.
    reauth_after_s: float = Field(300.0, gt=0)
    #: A dangerous action's confirmation must come within this (the call it holds is then forgotten).
    confirm_timeout_s: float = Field(300.0, gt=0)
    #: Most browsers watching events at once (each holds a queue and a connection).
    max_event_streams: int = Field(200, ge=1)
    #: Events a slow browser may fall behind before its stream is closed (its page reconnects).
    stream_queue_size: int = Field(256, ge=1)
    #: Largest request body (a form) the console reads; larger ones get 413.
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    #: Rows per page of the tasks table: at most the daemon's ``[tasks] list_max_limit`` (500 by default).
    page_size: int = Field(50, ge=1, le=1000)
    #: Seconds the tasks page's start form (the person's listing and the task types) is kept per
    #: person: two calls to the daemon less per page; 0 asks the daemon every time.
    form_cache_s: float = Field(5.0, ge=0, le=300)
    #: Seconds the console waits for a reply of the daemon.
    daemon_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _proxy_settings_fit(self) -> ConsoleConfig:
        if self.proxy_user_header and not self.trusted_proxies:
            raise ValueError(
                "proxy_user_header needs trusted_proxies: the addresses of the proxy it is believed from"
            )
        if self.proxy_roles_header and not self.proxy_roles:
            raise ValueError("proxy_roles_header needs proxy_roles: the roles the console takes from it")
        if (self.proxy_roles_header or self.proxy_logout_url) and not self.proxy_user_header:
            raise ValueError("proxy_roles_header and proxy_logout_url need proxy_user_header")
        if self.proxy_logout_url and not self.proxy_logout_url.startswith(("https://", "http://", "/")):
            raise ValueError(f"proxy_logout_url is a URL or a path, not {self.proxy_logout_url!r}")
        return self._unix_settings_fit()

    def _unix_settings_fit(self) -> ConsoleConfig:
        if self.listen_path() is None:
            if {"listen_mode", "listen_group"} & self.model_fields_set:
                raise ValueError("listen_mode and listen_group are for listen = unix:PATH")
            if UNIX in self.trusted_proxies:
                raise ValueError(
                    'trusted_proxies "unix" needs listen = unix:PATH: the console listens on TCP'
                )
        elif UNIX in self.trusted_proxies and self.listen_mode & 0o007:
            raise ValueError(
                f"listen_mode {self.listen_mode:#o} lets every local user connect, and trusted_proxies has "
                '"unix": anyone could name a person; give others nothing (0o660)'
            )
        return self

    def listen_path(self) -> Path | None:
        """The Unix socket of ``listen = unix:PATH``, or None (TCP)."""
        if not self.listen.startswith(_UNIX_PREFIX):
            return None
        return Path(self.listen[len(_UNIX_PREFIX) :])

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class ConsoleConfigError(Exception):
    """The console's config file is missing, unreadable or invalid (the message says where and why)."""


def load_config(path: Path) -> ConsoleConfig:
    """Read ``path``'s ``[console]`` table, or the whole file when it has none.

    Raises:
        ConsoleConfigError: the file cannot be read, is not TOML, or a setting is invalid.
    """
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConsoleConfigError(f"cannot read the console config {path}: {exc}") from exc
    table = data.get("console", data)
    if not isinstance(table, dict):
        raise ConsoleConfigError(f"{path}: [console] must be a table")
    try:
        config = ConsoleConfig.model_validate(table)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConsoleConfigError(f"{path}: {problems}") from None
    base = path.parent.absolute()
    updates: dict[str, Any] = {"users_file": base / config.users_file}
    if config.socket is not None:
        updates["socket"] = base / config.socket
    listen_path = config.listen_path()
    if listen_path is not None:
        updates["listen"] = f"{_UNIX_PREFIX}{base / listen_path}"
    return config.model_copy(update=updates)
