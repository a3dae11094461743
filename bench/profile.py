"""Where pymgr's server time goes under the bench's load: py-spy on the daemon.

    .venv-bench/bin/python -m bench.profile http|legacy|http-newconn [--seconds 5] [--native]

Starts pymgr with the demo config (as ``make bench`` does), drives one of
the bench's loads at it from 8 client processes, and samples the daemon
with ``py-spy record`` meanwhile. Prints the functions with the most
samples, by self time and by inclusive time, and writes the collapsed
stacks (flame-graph input) to ``bench/results/profile-<load>.txt``.
Needs py-spy (in the bench venv) and the right to ptrace the daemon (root,
or the same user with ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import servers
from bench.targets import pymgr_targets
from bench.loadgen import run_load

RESULTS = servers.BENCH / "results"
#: Samples per second: enough for a few thousand samples in 5 s.
RATE_HZ = 500
#: Rows printed per table.
TOP = 25


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "func (path/to/file.py:123)"; keep "func (file.py)".
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(path).name})" if path else name


def summarize(collapsed: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Self and inclusive sample counts per function from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return own, inclusive, total


def _print(title: str, counts: collections.Counter[str], total: int) -> None:
    print(f"\n{title} ({total} samples)")
    for name, count in counts.most_common(TOP):
        print(f"  {100 * count / total:5.1f}%  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("load", choices=["http", "legacy", "http-newconn"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(servers.BIN / "py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="pymgr-profile-"))
    out = RESULTS / f"profile-{args.load}.txt"
    RESULTS.mkdir(exist_ok=True)
    try:
        result, err = _profiled_load(args, py_spy, workdir, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if err is not None:
        print(f"py-spy failed: {err}", file=sys.stderr)
        return 1
    print(f"load {args.load}: {result}")
    own, inclusive, total = summarize(out.read_text())
    _print("self", own, total)
    _print("inclusive", inclusive, total)
    print(f"\ncollapsed stacks: {out}")
    return 0


def _profiled_load(
    args: argparse.Namespace, py_spy: str, workdir: Path, out: Path
) -> tuple[object, str | None]:
    """Run the load with py-spy attached; returns the load's result and py-spy's error, if any."""
    with servers.Fleet() as fleet:
        pymgr = fleet.add(servers.start_pymgr(workdir / "pymgr"))
        target = pymgr_targets(pymgr)[args.load]
        command = [
            py_spy,
            "record",
            "--format",
            "raw",
            "--rate",
            str(RATE_HZ),
            "-d",
            str(int(args.seconds) + 1),
            "-p",
            str(pymgr.pid),
            "-o",
            str(out),
        ]
        # --native cannot sample without pausing the process; plain Python stacks can.
        command += ["--native"] if args.native else ["--nonblocking"]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            result = run_load(target, pymgr.pid, clients=8, duration_s=args.seconds)
        finally:
            _, err = spy.communicate()
    return result, (err.decode(errors="replace") if spy.returncode != 0 else None)


if __name__ == "__main__":
    sys.exit(main())
