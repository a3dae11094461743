"""The daemon's connection to the keeper: typed messages in and out, a bounded buffer, never a blocking write.

Rules:
- One daemon at a time; only a peer of our own uid (or root) is served.
- What arrives is decoded by the link's one decoder (``requests`` handles
  it); what leaves is a typed message (``send``), queued and written at the
  end of the loop turn, or at once past ``FLUSH_BYTES``.
- A daemon that stops reading for ``MAX_PENDING_BYTES`` is disconnected; it
  gets the whole state again when it reconnects.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import sys
from collections.abc import Callable

from pymgr.protocol.keeper import FrameDecoder, News, encode

#: Bytes of messages waiting for a daemon that does not read before it is
#: disconnected: far above any burst (a message is ~200 bytes; progress is
#: coalesced), so only a stuck daemon hits it.
MAX_PENDING_BYTES = 8 * 1024 * 1024

#: Bytes of replies that are written at once rather than at the end of the
#: loop turn (a "spawned" reply is ~200 bytes: groups of about 20).
FLUSH_BYTES = 4096

#: Bytes read from the daemon's socket at once.
READ_BYTES = 256 * 1024


def accept(listener: socket.socket) -> socket.socket | None:
    """The next daemon's socket (non-blocking), or None for a peer of another user."""
    sock, _ = listener.accept()
    uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[
        1
    ]
    if uid not in (0, os.geteuid()):
        sock.close()  # the socket is 0600 already; this is a second lock on the door
        return None
    sock.setblocking(False)
    return sock


class DaemonConnection:
    """The daemon's connection: a decoder in, a bounded buffer out (see the module rules)."""

    def __init__(
        self, sock: socket.socket, sel: selectors.BaseSelector, on_event: Callable[..., None]
    ) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.out = bytearray()
        #: Registered for EVENT_WRITE (some of ``out`` did not fit in the socket).
        self.writing = False
        self.broken = False
        self._sel = sel
        self._on_event = on_event
        sel.register(sock, selectors.EVENT_READ, on_event)

    def send(self, message: News) -> None:
        """Queue ``message``; a burst leaves in groups, the rest at the end of the loop turn (``write_out``)."""
        if self.broken:
            return
        self.out += encode(message)
        if len(self.out) > MAX_PENDING_BYTES:
            print("keeper: the daemon stopped reading; dropping its connection", file=sys.stderr, flush=True)
            self.broken = True
        elif len(self.out) >= FLUSH_BYTES and not self.writing:
            self.write_out()  # a burst of replies leaves in groups: the daemon starts on them early

    def write_out(self) -> None:
        """Write what the socket takes now; wait for it to drain only while something is left."""
        if self.broken or (not self.out and not self.writing):
            return
        try:
            sent = self.sock.send(self.out) if self.out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            return
        del self.out[:sent]
        if self.writing != bool(self.out):
            self.writing = bool(self.out)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.writing else 0)
            self._sel.modify(self.sock, events, self._on_event)

    def close(self, flush: bool = False) -> None:
        """Unregister and close; with ``flush``, first try for a second to hand over what is queued."""
        if flush and self.out and not self.broken:
            self.sock.settimeout(1.0)
            try:
                self.sock.sendall(self.out)
            except OSError:
                pass  # the daemon went away; it reads the status files on its next connect
        self._sel.unregister(self.sock)
        self.sock.close()
