"""A Unix-socket proxy to Redis that holds the client's commands containing a marker, until released.

It puts a daemon's Redis write at a chosen moment of its life (a job's take held while the host stops).
"""

from __future__ import annotations

import os
import select
import socket
import threading
from pathlib import Path


class HoldingProxy:
    """Listens on ``listen``, relays to the Redis on ``upstream``; a chunk holding ``marker`` waits for ``release``."""

    def __init__(self, listen: Path, upstream: Path) -> None:
        self.listen, self.upstream = listen, upstream
        self.marker: bytes | None = None
        self.held = threading.Event()  # set when a chunk was held
        self.release = threading.Event()
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(listen))
        os.chmod(listen, 0o777)
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.listen}"

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(str(self.upstream))
            threading.Thread(target=self._pump, args=(client, up), daemon=True).start()

    def _pump(self, client: socket.socket, up: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([client, up], [], [])
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if self.marker is not None and self.marker in data:
                            self.held.set()
                            self.release.wait()
                        up.sendall(data)
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            up.close()
