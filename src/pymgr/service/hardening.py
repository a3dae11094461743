"""The sandboxing options of the generated systemd unit, each with its reason.

pymgr is a root task daemon: its tasks are the admin's own commands (change
a firewall rule, run a scan, install an update), and they inherit the
unit's sandbox. So the table says, for every option, what it protects and
which kind of task it would break; ``[service] hardening`` picks a level
and ``[service] overrides`` changes single directives.

Rules:
- ``strict`` (the default) turns on every option that the daemon itself
  runs under (checked option by option against what it does: Unix and TCP
  sockets, pidfds, /proc, its state directory) and that typical appliance
  tasks survive; each comment names what must be relaxed for a task that
  needs more.
- ``relaxed`` keeps only options that never limit what an admin task may
  do to the host: they fence off things no admin task needs.
- ``off`` writes none of them.
- The options this table leaves out, and why, are listed in a comment
  above ``hardening`` (and in docs/install.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pymgr.service._unitsyntax import unit_value

LEVELS = ("strict", "relaxed", "off")


@dataclass(frozen=True, slots=True)
class Option:
    """One [Service] directive: its value per level (None: not set), and why."""

    name: str
    strict: str | None
    relaxed: str | None
    why: str


OPTIONS: tuple[Option, ...] = (
    Option(
        "ProtectSystem",
        "strict",
        None,
        "The whole file system is read-only for the daemon and its tasks, except ReadWritePaths= below. "
        "A task type that writes elsewhere (/etc for a firewall rule, /var/cache/apt for an update) needs "
        "its paths in [service] read_write_paths.",
    ),
    Option(
        "ProtectHome",
        "yes",
        None,
        "/home, /root and /run/user are empty and inaccessible. A task that reads users' files needs "
        "ProtectHome=read-only (or no) in [service] overrides.",
    ),
    Option(
        "PrivateTmp",
        "yes",
        "yes",
        "A /tmp and /var/tmp of its own, emptied when the service stops: no temp-file races with other "
        "services. A task that hands files to another service through /tmp needs PrivateTmp=no.",
    ),
    Option(
        "PrivateMounts",
        "yes",
        None,
        "A mount namespace of its own: nothing the daemon or a task mounts reaches the rest of the host.",
    ),
    Option(
        "PrivateDevices",
        "yes",
        None,
        "Only pseudo devices (/dev/null, /dev/urandom, ...) exist; no disks, no raw I/O, no mknod. A task "
        "that partitions disks or talks to serial ports needs PrivateDevices=no.",
    ),
    Option(
        "ProtectKernelTunables",
        "yes",
        None,
        "/proc/sys and /sys are read-only: no sysctl changes. A task that sets net.ipv4.ip_forward needs "
        "ProtectKernelTunables=no.",
    ),
    Option(
        "ProtectKernelModules",
        "yes",
        None,
        "No explicit module loading (modprobe, insmod); the kernel still loads what nftables asks for "
        "itself.",
    ),
    Option(
        "ProtectKernelLogs",
        "yes",
        None,
        "No access to the kernel log buffer (/dev/kmsg, dmesg). An action that shows dmesg needs =no.",
    ),
    Option(
        "ProtectControlGroups",
        "yes",
        "yes",
        "The cgroup tree is read-only: neither the daemon nor a task can leave the unit's cgroup, so "
        "systemd always knows every process of pymgr (KillMode= relies on it).",
    ),
    Option(
        "ProtectProc",
        "invisible",
        None,
        "Other users' processes are hidden in /proc from processes without CAP_SYS_PTRACE (a task that "
        "dropped to a user); the root daemon still sees its tasks.",
    ),
    Option(
        "ProtectClock",
        "yes",
        None,
        "No writes to the system clock. timedatectl still works (it asks systemd-timedated over D-Bus).",
    ),
    Option(
        "ProtectHostname",
        "yes",
        None,
        "No hostname changes from inside (a UTS namespace). hostnamectl still works (systemd-hostnamed, over "
        "D-Bus).",
    ),
    Option(
        "NoNewPrivileges",
        "yes",
        None,
        "execve() never grants privileges: setuid/setgid bits and file capabilities are ignored. The daemon "
        "is root already and tasks may still drop to another user (setuid() is not affected); what breaks is "
        "a task running as a user that then calls sudo, su or another setuid program.",
    ),
    Option(
        "RestrictSUIDSGID",
        "yes",
        None,
        "No creating setuid/setgid files. An update task that installs packages shipping setuid programs "
        "(apt-get upgrade) needs RestrictSUIDSGID=no.",
    ),
    Option(
        "RestrictAddressFamilies",
        "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        None,
        "Sockets of these families only: AF_UNIX (the API, sd_notify, D-Bus), AF_INET/AF_INET6 (TCP "
        "listeners, tasks' networking) and AF_NETLINK (ip, nft, iptables). Raw-packet tools (nmap -sS, "
        "tcpdump, dhclient) need AF_PACKET added.",
    ),
    Option(
        "RestrictNamespaces",
        "yes",
        None,
        "No new namespaces. Tasks that start containers themselves (unshare, podman, bwrap) need =no; "
        "docker run works (dockerd creates them).",
    ),
    Option(
        "CapabilityBoundingSet",
        "~CAP_SYS_PACCT CAP_BLOCK_SUSPEND CAP_LEASE CAP_SYS_TTY_CONFIG CAP_MAC_ADMIN CAP_MAC_OVERRIDE "
        "CAP_WAKE_ALARM",
        None,
        "Capabilities no server admin task needs (process accounting, wake locks, file leases, vhangup, "
        "SMACK policy, wake alarms) are gone for good. Every other power of root stays: tasks are admin "
        "commands (CAP_NET_ADMIN for firewalls, CAP_NET_RAW for scans, CAP_SYS_BOOT).",
    ),
    Option(
        "UMask",
        "0027",
        None,
        "Files the daemon and its tasks create are not world-readable (task logs may hold secrets). A task "
        "that writes files other users must read needs UMask=0022.",
    ),
    Option(
        "LockPersonality",
        "yes",
        "yes",
        "No personality(2) changes (such as READ_IMPLIES_EXEC), which nothing legitimate needs.",
    ),
    Option(
        "MemoryDenyWriteExecute",
        "yes",
        None,
        "No memory that is writable and executable. The daemon runs without it (CPython, uvloop, httptools "
        "and pydantic-core compile no code at run time); a task that runs a JIT (Java, Node.js, PyPy, a "
        "browser) crashes and needs MemoryDenyWriteExecute=no.",
    ),
    Option(
        "RestrictRealtime",
        "yes",
        "yes",
        "No realtime scheduling, which a runaway task could use to starve the host.",
    ),
    Option(
        "SystemCallArchitectures",
        "native",
        "native",
        "Native system calls only (no 32-bit x86 ABI on x86-64), which closes a way around seccomp filters.",
    ),
    Option(
        "SystemCallFilter",
        "@system-service",
        None,
        "System calls of ordinary services only (systemd's @system-service: the daemon's own epoll, "
        "pidfd_open, pidfd_send_signal, close_range are in it). Tasks that mount, swap, load modules or "
        'trace processes get EPERM; drop the filter with SystemCallFilter = "" in [service] overrides.',
    ),
    Option(
        "SystemCallErrorNumber",
        "EPERM",
        None,
        "A filtered system call fails with EPERM instead of killing the process, so a task sees an error "
        "it can report.",
    ),
)

# Options deliberately not set, and why (docs/install.md repeats them):
# - CapabilityBoundingSet (a narrow allow list): tasks are admin commands that need what root may do
#   (CAP_NET_ADMIN for firewalls, CAP_SYS_BOOT, CAP_NET_RAW for scans); set yours in [service] overrides.
# - PrivateNetwork, IPAddressDeny: tasks and TCP listeners need the host's network.
# - PrivateUsers, DynamicUser, User: the daemon must be the real root to act for its callers.
# - ProcSubset=pid: tasks such as free, ps or a status page read /proc/meminfo, /proc/loadavg and the like.
# - RemoveIPC: has no effect on root.


def hardening(level: str, writable: Iterable[tuple[str, Path]]) -> list[tuple[str, str, str]]:
    """The (directive, value, comment) lines of ``level``.

    Args:
        level: "strict", "relaxed" or "off".
        writable: (config key, path) pairs for ReadWritePaths= (each path prefixed "-":
            a missing one is skipped); the key names the path in an error.

    Raises:
        ValueError: an unknown level.
        UnitValueError: a writable path systemd cannot take as one word, naming its key.
    """
    if level not in LEVELS:
        raise ValueError(f"hardening must be one of {', '.join(LEVELS)}, not {level!r}")
    if level == "off":
        return []
    lines = []
    for option in OPTIONS:
        value = option.strict if level == "strict" else option.relaxed
        if value is not None:
            lines.append((option.name, value, option.why))
    unique: dict[Path, str] = {}
    for key, path in writable:
        unique.setdefault(path, key)
    paths = " ".join(f"-{_quote_path(key, path)}" for path, key in unique.items())
    if paths:
        why = (
            "Where the daemon writes: its state (task logs), its socket and log directories, and "
            "[service] read_write_paths; '-' skips a path that does not exist."
        )
        lines.append(("ReadWritePaths", paths, why))
    return lines


def apply_overrides(
    lines: list[tuple[str, str, str]], overrides: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """``lines`` with ``[service] overrides`` applied: replaced, dropped ("") or added at the end.

    An override is written as the admin wrote it (specifiers and all), but it
    must stay one value on one line.

    Raises:
        UnitValueError: an override value that would not, naming ``service.overrides.NAME``.
    """
    for name, value in overrides.items():
        unit_value(f"service.overrides.{name}", value)
    result = []
    for name, value, why in lines:
        if name in overrides:
            value, why = overrides[name], "Set in [service] overrides."
        if value:
            result.append((name, value, why))
    known = {name for name, _, _ in lines}
    result += [
        (name, value, "Set in [service] overrides.")
        for name, value in overrides.items()
        if name not in known and value
    ]
    return result


def _quote_path(key: str, path: Path) -> str:
    return unit_value(key, str(path), word=True).replace("%", "%%")
