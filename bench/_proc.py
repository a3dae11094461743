"""What the bench reads from /proc: a server's CPU time and memory, the machine.

Rules:
- Server CPU is utime + stime of the whole process (every thread) from
  ``/proc/PID/stat``, read before and after a measurement; the difference
  divided by the requests served is the CPU per request.
- Memory is ``VmRSS`` from ``/proc/PID/status``.
- The machine description goes into every JSON result, so figures from two
  machines are never compared by accident.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: Clock ticks per second of the utime/stime fields (USER_HZ, 100 on Linux).
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Packages whose versions decide the figures; written into every result.
VERSIONED_PACKAGES = (
    "pymgr",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "pydantic-core",
    "supervisor",
    "gevent",
    "psutil",
    "redis",
    "cryptography",
    "rq",
    "celery",
    "kombu",
)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (comm) may contain spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line; is {pid} a zombie?")


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was around a run."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux, or /proc is hidden: say so below
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in VERSIONED_PACKAGES},
        "mem_total_mib": _mem_total_mib(),
    }


def _mem_total_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass  # no /proc/meminfo: the field stays empty
    return None
