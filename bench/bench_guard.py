"""What the guard costs in-process: ``GuardedDispatcher.call`` (plus the edge checks) vs ``Dispatcher.call``.

Run it: ``.venv-bench/bin/python bench/bench_guard.py [--rounds N] [--calls N] [--profile PATH]``.
It prints, per caller, CPU µs per call with the guard and without, and their ratio:

    caller    guarded   plain   ratio

How:
- One process, one event loop, no sockets: the figures are the security code
  alone (bench/bench_security.py measures it through the real server).
- The call is ``demo.echo`` with ``{"a": 1}``. "guarded" is what a transport
  runs per request with security on: the rate limit (``EdgeGuard.admit``),
  for signed TCP the signature check (``parse_headers`` + ``Verifier.verify``
  on a request signed beforehand, each with its own nonce), then
  ``GuardedDispatcher.call`` with a policy like the demo's and a real audit
  file in a temporary directory. "plain" is ``Dispatcher.call`` alone.
- Callers: a Unix-socket identity (one object per connection, as peercred
  makes it), a legacy one (a new object per request, as the legacy server
  makes it, in both columns) and a signed-key one.
- CPU is ``time.process_time`` over ``--calls`` calls; rounds alternate
  guarded and plain per caller; the medians of ``--rounds`` are reported
  (the ratio is the median of the rounds' ratios).
- ``BENCH_GUARD_SRC=/path/to/src`` runs it against another copy of the
  sources (e.g. a checkout before a change): run both, alternating, to
  compare before and after on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: bench/ itself must not shadow the standard library (bench/profile.py would hide cProfile's ``profile``).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
#: BENCH_GUARD_SRC runs the bench against another copy of the sources (a baseline checkout).
sys.path.insert(0, os.environ.get("BENCH_GUARD_SRC", str(REPO / "src")))

from pymgr.auth.audit import AuditLog, Auditor  # noqa: E402
from pymgr.auth.guard import EdgeGuard  # noqa: E402

try:  # BENCH_GUARD_SRC may name a tree from before the call pipeline had its own module
    from pymgr.auth.pipeline import GuardedDispatcher  # noqa: E402
except ImportError:
    from pymgr.auth.guard import GuardedDispatcher  # type: ignore[attr-defined,no-redef]  # noqa: E402
from pymgr.auth.policy import Policy, PolicyConfig  # noqa: E402
from pymgr.auth.ratelimit import RateLimiter  # noqa: E402
from pymgr.auth.signing import NonceCache, Verifier, parse_headers, signed_headers  # noqa: E402
from pymgr.core.dispatch import Call, Dispatcher  # noqa: E402
from pymgr.core.identity import Identity  # noqa: E402
from pymgr.core.registry import Registry  # noqa: E402
from pymgr.modules.demo import Demo  # noqa: E402

KEY_ID = "bench"
SECRET = b"bench-secret-0123456789abcdef"
PATH = "/v1/modules/demo/echo"
BODY = b'{"a":1}'
PARAMS = {"a": 1}
#: Calls per measurement: ~0.1-0.3 s of CPU, well above process_time's resolution.
CALLS = 5_000
#: Rounds per caller, each guarded then plain.
ROUNDS = 5

Step = Callable[[int], Awaitable[Any]]


def build(audit_path: Path) -> tuple[GuardedDispatcher, Dispatcher, EdgeGuard, Verifier]:
    """The guard as ``build_security`` wires it, and a plain dispatcher on the same registry."""
    registry = Registry()
    registry.add(Demo())
    config = PolicyConfig.model_validate(
        {
            "rules": [
                {"name": "owner", "subjects": ["owner"], "actions": ["*"]},
                {"name": "legacy", "subjects": ["legacy"], "actions": ["demo.echo"]},
                {"name": "key", "subjects": [f"key:{KEY_ID}"], "actions": ["demo.*"]},
            ]
        }
    )
    policy = Policy(config, registry, key_ids=[KEY_ID], owner_uid=os.geteuid())
    audit_log = AuditLog(audit_path, max_bytes=1 << 30, backups=1)
    audit_log.open()
    auditor = Auditor(audit_log, fail_closed=True)
    guarded = GuardedDispatcher(registry, policy=policy, auditor=auditor, max_params_bytes=65536)
    edge = EdgeGuard(RateLimiter(1e12, 10**12), auditor)
    verifier = Verifier({KEY_ID: SECRET}, clock_skew_s=300, nonces=NonceCache(10**7), clock=time.time)
    return guarded, Dispatcher(registry), edge, verifier


def signed_batch(count: int) -> list[dict[str, str]]:
    """Request headers (lower-case names) signed beforehand, each with its own nonce."""
    now = int(time.time())
    return [
        {
            name.lower(): value
            for name, value in signed_headers(
                KEY_ID, SECRET, "POST", PATH, b"", BODY, timestamp=now, nonce=secrets.token_urlsafe(18)
            ).items()
        }
        for _ in range(count)
    ]


def steps(
    guarded: GuardedDispatcher, plain: Dispatcher, edge: EdgeGuard, verifier: Verifier, calls: int
) -> dict[str, tuple[Step, Step]]:
    """Per caller: (guarded step, plain step), each handling request number i."""
    unix = Identity(
        transport="unix", uid=os.geteuid(), gid=os.getegid(), pid=os.getpid(), user="bench", groups=("bench",)
    )
    signed_caller = Identity(transport="tcp", peer="127.0.0.1:40000", key_id=KEY_ID)
    batches: list[list[dict[str, str]]] = []

    async def unix_guarded(i: int) -> Any:
        edge.admit(unix, "http", "POST", PATH)
        return await guarded.call(Call("demo", "echo", PARAMS, unix))

    async def unix_plain(i: int) -> Any:
        return await plain.call(Call("demo", "echo", PARAMS, unix))

    async def legacy_guarded(i: int) -> Any:
        identity = Identity(transport="legacy", peer=f"127.0.0.1:{30000 + i % 20000}")
        edge.admit(identity, "legacy demo.echo")
        return await guarded.call(Call("demo", "echo", PARAMS, identity))

    async def legacy_plain(i: int) -> Any:
        identity = Identity(transport="legacy", peer=f"127.0.0.1:{30000 + i % 20000}")
        return await plain.call(Call("demo", "echo", PARAMS, identity))

    async def signed_guarded(i: int) -> Any:
        if i == 0:
            batches.append(signed_batch(calls))
        key_id = verifier.verify("POST", PATH, b"", BODY, parse_headers(batches[-1][i]))
        if key_id != KEY_ID:
            raise RuntimeError(f"verify returned {key_id!r}")
        edge.admit(signed_caller, "http", "POST", PATH)
        return await guarded.call(Call("demo", "echo", PARAMS, signed_caller))

    async def signed_plain(i: int) -> Any:
        return await plain.call(Call("demo", "echo", PARAMS, signed_caller))

    return {
        "unix": (unix_guarded, unix_plain),
        "legacy": (legacy_guarded, legacy_plain),
        "signed": (signed_guarded, signed_plain),
    }


async def cpu_per_call(step: Step, calls: int, prepare: bool) -> float:
    """CPU seconds per call of ``step`` over ``calls`` calls (signed batches are built outside the window)."""
    if prepare:
        await step(0)  # builds the batch; its call is not counted
        first = 1
    else:
        first = 0
    started = time.process_time()
    for i in range(first, calls):
        await step(i)
    return (time.process_time() - started) / (calls - first)


async def run(calls: int, rounds: int, audit_path: Path) -> dict[str, dict[str, Any]]:
    guarded, plain, edge, verifier = build(audit_path)
    table = steps(guarded, plain, edge, verifier, calls)
    results: dict[str, dict[str, Any]] = {}
    for name, (with_step, without_step) in table.items():
        await cpu_per_call(with_step, min(calls, 500), name == "signed")  # warm caches and code paths
        await cpu_per_call(without_step, min(calls, 500), False)
        pairs = []
        for _ in range(rounds):
            pairs.append(
                (
                    await cpu_per_call(with_step, calls, name == "signed"),
                    await cpu_per_call(without_step, calls, False),
                )
            )
        results[name] = {
            "guarded_us": statistics.median(w for w, _ in pairs) * 1e6,
            "plain_us": statistics.median(p for _, p in pairs) * 1e6,
            "ratio": statistics.median(w / p for w, p in pairs),
        }
    return results


async def profile(calls: int, audit_path: Path, out: str) -> None:
    import cProfile

    guarded, plain, edge, verifier = build(audit_path)
    table = steps(guarded, plain, edge, verifier, calls)
    profiler = cProfile.Profile()
    for name, (with_step, _) in table.items():
        await cpu_per_call(with_step, 200, name == "signed")
        profiler.enable()
        await cpu_per_call(with_step, calls, name == "signed")
        profiler.disable()
    profiler.dump_stats(out)
    print(f"wrote {out} (guarded steps of every caller, {calls} calls each)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--profile", metavar="PATH", help="write a cProfile of the guarded steps instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pymgr-bench-guard-") as tmp:
        audit_path = Path(tmp) / "audit.log"
        if args.profile:
            asyncio.run(profile(args.calls, audit_path, args.profile))
            return 0
        results = asyncio.run(run(args.calls, args.rounds, audit_path))
    print(
        f"{'caller':<8}{'guarded':>12}{'plain':>11}{'ratio':>8}   (CPU per call, median of {args.rounds} rounds "
        f"of {args.calls}; load {os.getloadavg()[0]:.1f})"
    )
    for name, r in results.items():
        print(f"{name:<8}{r['guarded_us']:>9.2f} µs{r['plain_us']:>8.2f} µs{r['ratio']:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
