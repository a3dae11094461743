"""systemd's service notification protocol (sd_notify), and the watchdog ping.

Written by hand on purpose: the protocol is one datagram of ``KEY=value``
lines sent to the ``AF_UNIX`` socket named in ``$NOTIFY_SOCKET`` (about 30
lines here). The libraries that do it are worse deals: systemd-python needs
the libsystemd headers and a compiler at install time, cysystemd too, and
sdnotify (pure Python) has been unmaintained since 2017.

Rules:
- Without ``$NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``)
  every call is a no-op that returns False: the same code runs under systemd,
  in a container and in a terminal.
- An address starting with ``@`` is in the abstract namespace (a leading NUL
  byte); otherwise it must be an absolute path. Anything else (a ``vsock:``
  address) is reported once and notifications stay off.
- Reading the environment removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
  ``WATCHDOG_PID`` from ``os.environ`` (as ``sd_notify(unset_environment=1)``
  does), so nothing the daemon starts can notify in its name.
- A failed send is logged once as a warning, never raised: a daemon must not
  die because its supervisor's socket went away.
- The watchdog pings at half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)
  recommends it) from a task on the daemon's event loop, so pings stop when
  the loop is stuck: that is what the watchdog is for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("pymgr.service")


class Notifier:
    """Sends sd_notify messages; a no-op without a notification socket.

    Args:
        address: the ``$NOTIFY_SOCKET`` value, or None for no notifications.
    """

    def __init__(self, address: str | None) -> None:
        self.address = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for, taking ``NOTIFY_SOCKET`` out of ``env``."""
        return cls(env.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one message of ``KEY=value`` fields; True if it was sent.

        Raises:
            ValueError: a field is not ``KEY=value`` or has a newline in its value.
        """
        for item in fields:
            key, sep, value = item.partition("=")
            if not sep or not key or "\n" in value:
                raise ValueError(f"sd_notify fields are KEY=value without newlines, not {item!r}")
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %r failed: %s (later failures are not logged)", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """READY=1: start-up is complete (systemd's ``Type=notify`` waits for it)."""
        return self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> bool:
        """STATUS=: the free-text line ``systemctl status`` shows."""
        return self.send(f"STATUS={_one_line(status)}")

    def reloading(self) -> bool:
        """RELOADING=1: a reload began; ``ready`` ends it."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str = "stopping") -> bool:
        """STOPPING=1: shutdown began."""
        return self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the daemon is alive."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | None:
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract name; sd_notify is off", address)
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval_s(env: MutableMapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when off.

    Takes ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` out of ``env``. A
    ``WATCHDOG_PID`` naming another process means the watchdog is not ours.
    """
    usec = env.pop("WATCHDOG_USEC", None)
    owner = env.pop("WATCHDOG_PID", None)
    if usec is None:
        return None
    if owner is not None and owner != str(pid if pid is not None else os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; the watchdog ping is off", usec)
        return None
    return value / 2 / 1_000_000 if value > 0 else None


async def ping_watchdog(notifier: Notifier, interval_s: float) -> None:
    """Ping the watchdog every ``interval_s`` until cancelled.

    Raises:
        ValueError: ``interval_s`` is not positive.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, not {interval_s!r}")
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)
