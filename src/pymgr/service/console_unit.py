"""The text of the web console's systemd unit: ``pymgr-console.service``.

The console (``pymgr console``) is an unprivileged client of the daemon: a
web server on a TCP port that talks to the daemon over its Unix socket. So
its unit, unlike the daemon's, takes almost everything away: its own user,
no capabilities at all, no device, no kernel knob, sockets of three families,
and a file system it may write in one place only (the users file's directory).

Rules:
- ``User=`` is the console config's ``user``: the unit never runs the console
  as root (it would refuse to serve anyway, and with no capabilities it could
  not switch). No ``user`` is an error naming the key.
- The console reaches the daemon's socket through the socket's group
  (``[http] socket_group`` of the daemon's config, as ``SupplementaryGroups=``).
- On a Unix socket of its own (``listen = "unix:/run/DIR/NAME"``): ``RuntimeDirectory=DIR``
  (systemd makes it, the console's user's, and removes it at stop), the socket's
  ``listen_group`` as a supplementary group with the chown calls it needs to give the
  socket to it, and no IP socket at all (``RestrictAddressFamilies=AF_UNIX``).
- Not set: ``PrivateUsers=`` (the console's groups must stay the host's to reach
  the daemon's socket), ``PrivateNetwork=`` and ``IPAddressDeny=`` (browsers reach it).
- Every directive has its reason in a comment above it, as in the daemon's
  units; every value from a config goes through ``unit_value``.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from pymgr.config import Config
from pymgr.console.config import ConsoleConfig
from pymgr.service._unitsyntax import UnitValueError, unit_value
from pymgr.service.systemd_units import (
    STATE_ROOT,
    Line,
    UnitFile,
    add_directive,
    exec_arg,
    fit_home,
    unit_header,
)

#: Where ``RuntimeDirectory=`` directories are.
RUN_ROOT = Path("/run")

#: The console unit's name beside the daemon's: ``pymgr`` -> ``pymgr-console``.
SUFFIX = "-console"


def console_unit_name(name: str) -> str:
    """``NAME-console``: the console unit of the daemon unit ``NAME``."""
    return f"{name}{SUFFIX}"


def render_console_unit(
    daemon: Config, console: ConsoleConfig, console_path: Path, name: str = "pymgr"
) -> UnitFile:
    """``NAME-console.service``: the console, after and wanting ``NAME.service``.

    Args:
        daemon: the daemon's config (its socket's group).
        console: the console's config (its user and users file).
        console_path: the console's config file, for ExecStart=.
        name: the daemon's unit name, without ``.service``.

    Raises:
        UnitValueError: no ``user`` in the console's config, or a value that cannot be one value in a unit.
    """
    if not console.user:
        raise UnitValueError(
            "console.user",
            "",
            'the console\'s unit needs the user it runs as (never root): set user = "NAME" in [console]',
        )
    unit_value("--console-config", str(console_path))
    unit = console_unit_name(name)
    lines = [
        *unit_header(f"{unit}.service", console_path, "pymgr service install --console"),
        "",
        "[Unit]",
        "Description=pymgr web console",
        "# The console is a client of the daemon: started after it, and it starts the daemon too.",
        f"Wants={name}.service",
        f"After={name}.service network.target",
        "",
        "[Service]",
    ]
    argv = [sys.executable, "-m", "pymgr", "console", "--config", str(console_path)]
    for directive, value, why in _start_lines(daemon, console, argv) + _sandbox(console, argv, console_path):
        add_directive(lines, directive, value, why)
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return UnitFile(f"{unit}.service", "\n".join(lines))


def _start_lines(daemon: Config, console: ConsoleConfig, argv: list[str]) -> list[Line]:
    user = unit_value("console.user", str(console.user), word=True)
    lines: list[Line] = [
        ("Type", "exec", "The service counts as started once the console's program runs."),
        (
            "ExecStart",
            " ".join(exec_arg(unit_value("the console's command line", a)) for a in argv),
            "The console in the foreground; its log (one line per request) goes to the journal.",
        ),
        ("User", user.replace("%", "%%"), "[console] user: never root; it owns nothing but its state."),
        (
            "Restart",
            "on-failure",
            "A crash starts a new console; sessions are in memory, so people sign in again.",
        ),
        ("RestartSec", "2", "Seconds between a failure and the restart."),
    ]
    if daemon.http.socket_group is not None:
        group = unit_value("http.socket_group", daemon.http.socket_group, word=True)
        lines.append(
            (
                "SupplementaryGroups",
                group.replace("%", "%%"),
                "[http] socket_group of the daemon: the group that may connect to its socket.",
            )
        )
    if console.listen_path() is not None and console.listen_group is not None:
        group = unit_value("console.listen_group", console.listen_group, word=True)
        why = "[console] listen_group: the console gives its socket to that group (the proxy's) as a member."
        lines.append(("SupplementaryGroups", group.replace("%", "%%"), why))
    return lines


def _listen_lines(console: ConsoleConfig) -> list[Line]:
    """Where the console's own Unix socket lives, and what it may do there."""
    path = console.listen_path()
    if path is None:
        return []
    where = path.parent
    if where.is_relative_to(RUN_ROOT) and where != RUN_ROOT:
        below = unit_value("console.listen", str(where.relative_to(RUN_ROOT)), word=True)
        lines: list[Line] = [
            (
                "RuntimeDirectory",
                below.replace("%", "%%"),
                f"systemd makes {where} for the console's socket.",
            ),
            (
                "RuntimeDirectoryMode",
                "0755",
                "The proxy passes through; the socket's own mode says who connects.",
            ),
        ]
    else:
        dir_value = unit_value("console.listen", str(where), word=True).replace("%", "%%")
        why = "The console's socket is made there ('-': skipped if missing)."
        lines = [("ReadWritePaths", f"-{dir_value}", why)]
    if console.listen_group is not None:
        why = "Back from ~@privileged: the chown of its socket to listen_group (a group it is a member of)."
        lines.append(("SystemCallFilter", "@chown", why))
    return lines


def _state_lines(console: ConsoleConfig) -> list[Line]:
    """Where the console may write: the directory of its users file (``adduser`` rewrites it)."""
    state = console.users_file.parent
    lines: list[Line] = []
    if state.is_relative_to(STATE_ROOT) and state != STATE_ROOT:
        below = unit_value("console.users_file", str(state.relative_to(STATE_ROOT)), word=True)
        lines += [
            (
                "StateDirectory",
                below.replace("%", "%%"),
                f"systemd creates {state} for the console's user before it starts.",
            ),
            ("StateDirectoryMode", "0700", "The users file's hashes are for the console's user alone."),
        ]
    path = unit_value("console.users_file", str(state), word=True).replace("%", "%%")
    why = "The one place the console writes: its users file's directory ('-': skipped if missing)."
    return [*lines, ("ReadWritePaths", f"-{path}", why)]


#: The console's sandbox: (directive, value, why). Stricter than the daemon's (``hardening``): the
#: console runs no admin tasks, so nothing here has to stay open for them.
SANDBOX: tuple[Line, ...] = (
    ("NoNewPrivileges", "yes", "execve() never grants privileges (setuid bits, file capabilities)."),
    ("CapabilityBoundingSet", "", "No capabilities at all, not even after an exploit: it needs none."),
    ("AmbientCapabilities", "", "None handed to the console either."),
    ("ProtectSystem", "strict", "The whole file system is read-only, except ReadWritePaths= below."),
    ("ProtectHome", "yes", "/home, /root and /run/user are empty and inaccessible."),
    ("PrivateTmp", "yes", "A /tmp of its own (Starlette spools large form uploads there)."),
    ("PrivateDevices", "yes", "Only pseudo devices (/dev/null, /dev/urandom)."),
    ("ProtectKernelTunables", "yes", "/proc/sys and /sys read-only."),
    ("ProtectKernelModules", "yes", "No module loading."),
    ("ProtectKernelLogs", "yes", "No kernel log."),
    ("ProtectControlGroups", "yes", "The cgroup tree is read-only."),
    ("ProtectClock", "yes", "No clock changes."),
    ("ProtectHostname", "yes", "No hostname changes."),
    ("ProtectProc", "invisible", "Other users' processes are hidden in /proc (the daemon's and its tasks')."),
    ("ProcSubset", "pid", "Only the process directories of /proc; the console reads nothing else there."),
    (
        "RestrictAddressFamilies",
        "AF_UNIX AF_INET AF_INET6",
        "AF_UNIX for the daemon's socket and the journal, AF_INET/AF_INET6 for the browsers (or the proxy).",
    ),
    ("RestrictNamespaces", "yes", "No new namespaces."),
    ("RestrictRealtime", "yes", "No realtime scheduling."),
    ("RestrictSUIDSGID", "yes", "No setuid/setgid files."),
    ("LockPersonality", "yes", "No personality(2) changes."),
    (
        "MemoryDenyWriteExecute",
        "yes",
        "No writable and executable memory: CPython, uvicorn and argon2 compile no code at run time.",
    ),
    ("RemoveIPC", "yes", "System V IPC and POSIX shared memory of its user go when it stops."),
    ("UMask", "0077", "What it writes (the users file) is its own alone."),
    ("SystemCallArchitectures", "native", "Native system calls only."),
    ("SystemCallFilter", "@system-service", "System calls of ordinary services only."),
    ("SystemCallFilter", "~@privileged", "And none of those that need privileges (setuid, chown, mount)."),
    ("SystemCallErrorNumber", "EPERM", "A filtered call fails with EPERM instead of killing the console."),
)


def _sandbox(console: ConsoleConfig, argv: list[str], console_path: Path) -> list[Line]:
    needed = [Path(argv[0]), console_path, console.users_file]
    sandbox = fit_home(list(SANDBOX), needed)
    if console.listen_path() is not None:
        why = "AF_UNIX only: the daemon's socket, the journal and its own socket; no browser connects by IP."
        sandbox = [
            ("RestrictAddressFamilies", "AF_UNIX", why) if n == "RestrictAddressFamilies" else (n, v, w)
            for n, v, w in sandbox
        ]
    return sandbox + _state_lines(console) + _listen_lines(console)


def console_warnings(daemon: Config, console: ConsoleConfig) -> list[str]:
    """What would keep the installed console from reaching the daemon, or open it to local users."""
    found = _loopback_warnings(console)
    socket = daemon.http.unix_socket
    if socket is None:
        return [
            "the daemon's config has no [http] unix_socket: the console has no socket to reach it on",
            *found,
        ]
    if console.socket is not None and console.socket != socket:
        found.insert(
            0, f"the console's socket ({console.socket}) is not the daemon's [http] unix_socket ({socket})"
        )
    return found


def _loopback_warnings(console: ConsoleConfig) -> list[str]:
    """A user header believed from loopback: every local process could name any person."""
    if console.proxy_user_header is None or console.listen_path() is not None:
        return []
    loopback = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for proxy in console.trusted_proxies:
        network = ipaddress.ip_network(proxy, strict=False)
        if any(address in network for address in loopback):
            return [
                f"trusted_proxies {proxy!r} believes {console.proxy_user_header} from any local process: "
                'listen = "unix:/run/pymgr-console/console.sock" with trusted_proxies = ["unix"] '
                "lets only the proxy's user name a person (docs/console.md, On a Unix socket)"
            ]
    return []
