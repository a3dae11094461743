"""The daemon's end of the keeper connection: find or start the keeper, send, receive.

Rules:
- ``connect`` reaches the keeper of this state directory, starting one
  (``python -m pymgr.keeper``, its own session, stderr appended to
  ``<run_dir>/keeper.log``, which is rotated to ``keeper.log.1`` at a
  start once it reached ``log_max_bytes``) when nobody answers on ``keeper.sock``, and
  returns once the keeper's ``hello`` arrived. A keeper that is on its way
  out (it closes before its hello) is waited out and replaced.
- Every message from the keeper goes to ``on_message``, in order, on the
  event loop, inside ``batch()`` for all the messages of one read (the
  manager commits them to its store at once); when the connection ends,
  ``on_lost`` is called once.
- ``send`` never blocks. The first message of an event loop turn leaves at
  once (a lone start's spawn request reaches the keeper while the daemon
  still answers the request, not after the reply's ~0.5 ms of work); the
  ones after it in the same turn queue and leave in one write at
  the end of the turn, or every ``FLUSH_BYTES`` (a burst of starts is a few
  system calls, not one per start). Nothing is sent
  while disconnected (``send`` raises ``Unavailable``); the manager holds
  its requests and the keeper's hello replays the state on reconnect.
- The keeper outlives the daemon on purpose, so a keeper this daemon
  started is kept referenced until it exits (a Popen dropped while its
  child runs would be reaped behind our back by the next Popen anywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymgr._fsguard import ensure_private_dir, open_private
from pymgr.errors import Unavailable
from pymgr.protocol.keeper import (
    CLOSED,
    NEWS,
    PROTOCOL,
    FrameDecoder,
    FrameError,
    Hello,
    KeeperMessageError,
    News,
    Request,
    decode,
    encode,
)

log = logging.getLogger("pymgr.keeper")

#: Seconds between two connection attempts while a keeper starts.
CONNECT_POLL_S = 0.02

#: Bytes of queued requests that are written at once, without waiting for
#: the end of the loop turn: a spawn request is ~500 bytes, so a burst of
#: starts reaches the keeper in groups of a few, and it starts spawning while
#: the daemon still answers the rest.
FLUSH_BYTES = 2048

#: Bytes read from the keeper's socket at once.
_READ_BYTES = 256 * 1024

#: Longest socket path bind/connect take (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107

#: Keepers this process started and that may still run; see the module rules.
_started: list[subprocess.Popen[bytes]] = []


class KeeperLink:
    """One connection to the keeper (see the module rules)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        idle_exit_s: float,
        start_timeout_s: float,
        log_max_bytes: int = 1024 * 1024,
        on_message: Callable[[News], None] = lambda message: None,
        on_lost: Callable[[], None] = lambda: None,
        batch: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        on_unreadable: Callable[[dict[str, Any], str], None] = lambda frame, reason: None,
    ) -> None:
        self.run_dir = state_dir / "run"
        self.state_dir = state_dir
        self.idle_exit_s = idle_exit_s
        self.start_timeout_s = start_timeout_s
        self.log_max_bytes = log_max_bytes
        self._on_message = on_message
        self._on_lost = on_lost
        self._batch = batch
        self._on_unreadable = on_unreadable
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._dir_fd: int | None = None
        #: The keeper this link started, if it did.
        self._process: subprocess.Popen[bytes] | None = None
        self._outgoing = bytearray()
        #: A message left in this loop turn: the next ones wait for its end (``_end_turn``).
        self._turn_started = False
        #: The keeper's hello: its pid and boot id.
        self.hello: Hello | None = None

    def listen(
        self,
        on_message: Callable[[News], None],
        on_lost: Callable[[], None],
        batch: Callable[[], contextlib.AbstractContextManager[Any]],
        on_unreadable: Callable[[dict[str, Any], str], None],
    ) -> None:
        """Who hears the keeper, if not given at construction (see the module rules)."""
        self._on_message, self._on_lost, self._batch = on_message, on_lost, batch
        self._on_unreadable = on_unreadable

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def _socket_path(self) -> str:
        path = str(self.run_dir / "keeper.sock")
        if len(path) <= _MAX_SOCKET_PATH:
            return path
        # Too long for sun_path: go through a descriptor of the directory instead.
        if self._dir_fd is None:
            self._dir_fd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._dir_fd}/keeper.sock"

    async def connect(self) -> None:
        """Reach the keeper (starting it if needed) and read its hello.

        Raises:
            Unavailable: no keeper answered within ``start_timeout_s``, or it
                speaks another protocol version; the message says where to look.
        """
        try:
            ensure_private_dir(self.run_dir)
        except OSError as exc:
            raise Unavailable(f"the task keeper's directory is refused: {exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        process: subprocess.Popen[bytes] | None = None
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._socket_path())
            except (FileNotFoundError, ConnectionRefusedError):
                process = self._process = process or self._start_keeper()
            else:
                decoder = FrameDecoder()
                hello = await self._first_frame(reader, decoder, deadline)
                if hello is not None:
                    self.hello = self._check(hello, writer)
                    self._writer = writer
                    self._reader_task = loop.create_task(self._read(reader, decoder))
                    self._on_message(self.hello)
                    return
                writer.close()  # a keeper that was exiting: wait for it to go, then start ours
            if process is not None and process.poll() not in (None, 0):
                raise Unavailable(f"the task keeper exited with {process.returncode}; {self._look()}")
            if loop.time() > deadline:
                raise Unavailable(f"no task keeper answered within {self.start_timeout_s} s; {self._look()}")
            await asyncio.sleep(CONNECT_POLL_S)

    async def _first_frame(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder, deadline: float
    ) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout_at(deadline):
                while not isinstance(frame := decoder.next_frame(), dict):
                    if frame is CLOSED:
                        return None
                    decoder.receive_data(await reader.read(_READ_BYTES))
        except (OSError, FrameError, TimeoutError):
            return None
        return frame

    def _check(self, hello: dict[str, Any], writer: asyncio.StreamWriter) -> Hello:
        """The keeper's hello, if it speaks this daemon's protocol.

        The raw frame is read first: a hello's shape never changes, whatever protocol follows it.
        """
        message = None
        if hello.get("op") == "hello" and hello.get("protocol") == PROTOCOL:
            with contextlib.suppress(KeeperMessageError):
                message = decode(hello, NEWS)
        if not isinstance(message, Hello):
            writer.close()
            raise Unavailable(
                f"the task keeper (pid {hello.get('keeper_pid')}) speaks protocol {hello.get('protocol')!r}, "
                f"this daemon {PROTOCOL}: it is from another pymgr version; stop it once its runs ended "
                f"(kill -TERM lets it exit when idle) and restart the daemon"
            )
        return message

    def _look(self) -> str:
        return f"see {self.run_dir / 'keeper.log'}"

    def _start_keeper(self) -> subprocess.Popen[bytes]:
        log.info("starting the task keeper for %s", self.state_dir)
        rotate_keeper_log(self.run_dir / "keeper.log", self.log_max_bytes)
        try:
            log_fd = open_private(self.run_dir / "keeper.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError as exc:
            raise Unavailable(f"cannot open the task keeper's log: {exc.strerror or exc}") from None
        with open(log_fd, "ab") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pymgr.keeper",
                    "--state-dir",
                    str(self.state_dir),
                    "--idle-exit-s",
                    str(self.idle_exit_s),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd="/",
                close_fds=True,
                start_new_session=True,
            )
        _started.append(process)
        return process

    async def _read(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> None:
        try:
            while True:
                with self._batch():  # everything one read brought, handled together (one store commit)
                    while isinstance(frame := decoder.next_frame(), dict):
                        self._deliver(frame)
                if frame is CLOSED:
                    break
                decoder.receive_data(await reader.read(_READ_BYTES))
        except (OSError, FrameError) as exc:
            log.error("task keeper connection broke: %s", exc)
        finally:
            self._lost()

    def _deliver(self, frame: dict[str, Any]) -> None:
        try:
            message = decode(frame, NEWS)
        except KeeperMessageError as exc:  # the link goes on: one bad message is that message's loss
            log.error("task keeper sent a message this daemon cannot read: %s", exc)
            self._on_unreadable(frame, str(exc))
            return
        self._on_message(message)

    def _lost(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        _reap_started()
        self._on_lost()

    def send(self, message: Request) -> None:
        """Queue one message for the keeper; queued messages leave together at the end of the loop turn.

        Raises:
            Unavailable: not connected.
            FrameError: the message is larger than a frame (nothing is queued).
        """
        if self._writer is None or self._writer.is_closing():
            raise Unavailable("the task keeper is not connected; the daemon is reconnecting, retry shortly")
        self._outgoing += encode(message)
        if not self._turn_started:
            self._turn_started = True
            asyncio.get_running_loop().call_soon(self._end_turn)
            self._flush()  # the first of the turn leaves now: the keeper starts on it at once
        elif len(self._outgoing) >= FLUSH_BYTES:
            self._flush()

    def _end_turn(self) -> None:
        self._turn_started = False
        self._flush()

    def _flush(self) -> None:
        # One write for a burst of requests (a hundred starts in one loop turn):
        # one system call, not a hundred.
        data, self._outgoing = bytes(self._outgoing), bytearray()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def close(self, wait_exit_s: float = 0.0) -> None:
        """Disconnect; with ``wait_exit_s``, wait that long for a keeper we started to exit."""
        self._flush()
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_exit_s
        while self._process is not None and self._process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(CONNECT_POLL_S)
        _reap_started()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def rotate_keeper_log(path: Path, max_bytes: int) -> None:
    """Before a keeper starts: a ``path`` of ``max_bytes`` or more becomes ``path.1`` (replacing it).

    A keeper writes a few lines in its life, so checking at each start
    bounds the two files to about ``2 * max_bytes``.
    """
    try:
        if os.lstat(path).st_size >= max_bytes:  # lstat: a planted link is refused at the open, not followed
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass  # no log yet
    except OSError as exc:
        log.warning("cannot rotate %s: %s; appending to it", path, exc)


def _reap_started() -> bool:
    """Reap keepers we started that have exited; True while one still runs."""
    _started[:] = [p for p in _started if p.poll() is None]
    return bool(_started)
