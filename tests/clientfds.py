"""Run as a program: fail to connect to a socket ``N`` times each two ways, with the garbage collector off.

``python -m tests.clientfds SOCKET sync|async N`` prints, as JSON, the descriptors this process
gained (``leaked``) and the messages of its ``ConnectionFailed`` errors. Each attempt is a
``health()`` whose error is kept (as a web app's error page or log may keep it, with its frames),
and a ``wait()`` whose error is dropped (its frames hold it in a reference cycle: only the
collector frees it). A program of its own, so that it may run as another user (permission
denied) and no test's garbage is counted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys

from pymgr.client import AsyncClient, Client, ConnectionFailed


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


#: Every error of a ``health()``, kept to the end.
KEPT: list[ConnectionFailed] = []


def _fail_sync(socket: str, times: int) -> set[str]:
    messages = set()
    with Client(socket=socket) as client:
        for _ in range(times):
            try:
                client.health()
            except ConnectionFailed as exc:
                KEPT.append(exc)
            try:
                client.wait(1, 5)
            except ConnectionFailed as exc:
                messages.add(exc.message)
    return messages | {exc.message for exc in KEPT}


async def _fail_async(socket: str, times: int) -> set[str]:
    messages = set()
    async with AsyncClient(socket=socket) as client:
        for _ in range(times):
            try:
                await client.health()
            except ConnectionFailed as exc:
                KEPT.append(exc)
            try:
                await client.wait(1, 5)
            except ConnectionFailed as exc:
                messages.add(exc.message)
    return messages | {exc.message for exc in KEPT}


def main() -> None:
    socket, kind, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gc.disable()
    before = _open_fds()
    if kind == "sync":
        messages = _fail_sync(socket, times)
    else:
        messages = asyncio.run(_fail_async(socket, times))
    print(json.dumps({"leaked": _open_fds() - before, "messages": sorted(messages)}))


if __name__ == "__main__":
    main()
