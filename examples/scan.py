"""The demo scanner that the ``scan`` task type runs (stdlib only).

    python scan.py --task-id N --duration S --exit-code C --fork-child true|false

Prints ``scan N: P%`` every 0.1 s (flushed, so ``pymgr tasks logs -f`` shows
it live), and a progress line ``PYMGR_PROGRESS P scan N`` whenever the
percentage changes (pymgr puts the latest in the task's record and sends it
as an event; docs/tasks.md, "Progress"), then exits with the given code after
``duration`` seconds. With
``--fork-child true`` it first starts a grandchild in a new session that
sleeps for an hour: a process that escaped the task's process group, which
a stop must still find and kill. On SIGTERM it prints one line and dies of
that signal, as a well-behaved program does.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

#: Seconds between progress lines.
TICK_S = 0.1

#: How long the escaped grandchild sleeps: far longer than any test or demo.
GRANDCHILD_SLEEP_S = 3600


def _bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"must be true or false, not {text!r}")
    return text == "true"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="demo scanner for pymgr")
    parser.add_argument("--task-id", type=int, required=True)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--fork-child", type=_bool, default=False)
    return parser.parse_args(argv)


def _on_sigterm(task_id: int) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        # os.write, not print: the signal may land inside a print of the main loop, and a
        # second print into the same buffered stdout would raise ("reentrant call") and exit 1.
        os.write(sys.stdout.fileno(), f"scan {task_id}: stopped by SIGTERM\n".encode())
        # Die of the signal itself, so the parent sees "killed by SIGTERM".
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def _start_grandchild(task_id: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({GRANDCHILD_SLEEP_S})"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    print(f"scan {task_id}: grandchild pid {child.pid}", flush=True)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    _on_sigterm(args.task_id)
    if args.fork_child:
        _start_grandchild(args.task_id)
    started = time.monotonic()
    reported = -1
    while True:
        elapsed = time.monotonic() - started
        percent = 100 if args.duration <= 0 else min(100, int(100 * elapsed / args.duration))
        print(f"scan {args.task_id}: {percent}%", flush=True)
        if percent != reported:
            print(f"PYMGR_PROGRESS {percent} scan {args.task_id}", flush=True)
            reported = percent
        if elapsed >= args.duration:
            return int(args.exit_code)
        time.sleep(min(TICK_S, args.duration - elapsed))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
