"""``make bench``: pymgr against its peers and its floors, interleaved, several rounds.

    .venv-bench/bin/python -m bench.run [--rounds 5] [--duration 2] [--clients 8] [--no-docs] [--strict]
                                        [--baseline REF]

Starts every server on temporary sockets (pymgr with the demo config,
supervisord, the seed design, the two floors), runs each figure's
measurements round after round, stops every server, then prints the table
and the targets, writes ``bench/results/bench-<time>.json`` and puts the
table into docs/performance.md. ``--baseline REF`` also runs pymgr as
commit REF had it (its own src/ and examples/), as the column "pymgr at
REF" of the request and task-start figures: an A/B of two commits in one run, so that a
change's cost is read as a ratio on the same machine at the same time.
Exit status: 0, or 1 when a server or a
client failed (or, with ``--strict``, when a target does not hold).
"""

from __future__ import annotations

import argparse
import compileall
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import peers, report, servers
from bench._proc import loadavg, machine, rss_mib
from bench.figures import FIGURES, Bench, Sample, Settings, measure
from bench.loadgen import LoadError, run_load
from bench.servers import Fleet, ServerError

RESULTS = servers.BENCH / "results"
DOCS = servers.REPO / "docs" / "performance.md"
#: Seconds of each load in the warm-up pass (not recorded).
WARMUP_S = 0.5


def start_fleet(fleet: Fleet, workdir: Path, baseline: str | None = None) -> list[str]:
    """Start pymgr, the baselines that are installed and the floors; returns notes on what is missing."""
    notes = []
    pymgr = fleet.add(servers.start_pymgr(workdir / "pymgr"))
    if baseline is not None:
        source = servers.export_commit(baseline, workdir / "baseline-src")
        compileall.compile_dir(source / "src" / "pymgr", quiet=1)
        fleet.add(servers.start_pymgr(workdir / "pymgr-base", name="pymgr-base", source=source))
    if servers.has_module("supervisor"):
        examples = Path(pymgr.info["config"]).parent
        fleet.add(peers.start_supervisord(workdir / "supervisord", servers.scan_argv(), examples))
    else:
        notes.append(
            "supervisord not measured: `supervisor` is not installed in this venv (make bench installs it)"
        )
    if servers.has_module("gevent"):
        fleet.add(peers.start_seed(workdir / "seed", pymgr.info["legacy_secret"]))
    else:
        notes.append("seed not measured: `gevent` is not installed in this venv (make bench installs it)")
    fleet.add(peers.start_floor_asgi(workdir / "floor-asgi"))
    fleet.add(peers.start_floor_line(workdir / "floor-line"))
    return notes


def warm_up(bench: Bench) -> None:
    """One short pass of every load figure, not recorded: caches, allocators, branch predictors."""
    for figure in FIGURES[:3]:
        for column in bench.columns(figure):
            server, targets = bench.targets[column]
            load = {"control": "http", "newconn-legacy": "legacy", "newconn-http": "http-newconn"}[
                figure.name
            ]
            run_load(targets[load], server.pid, clients=bench.settings.clients, duration_s=WARMUP_S)


def run_rounds(bench: Bench) -> list[Sample]:
    samples = []
    rounds = bench.settings.rounds
    for round_ in range(rounds):
        for figure in FIGURES:
            columns = bench.columns(figure)
            shift = round_ % len(columns)
            parts = []
            for column in columns[shift:] + columns[:shift]:
                sample = measure(figure, bench, column, round_)
                samples.append(sample)
                parts.append(f"{column} " + " ".join(f"{k}={v:,.1f}" for k, v in sample.values.items()))
            print(
                f"round {round_ + 1}/{rounds} {figure.name}: " + "; ".join(parts), file=sys.stderr, flush=True
            )
    return samples


def _parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument(
        "--duration", type=float, default=defaults.duration_s, help="seconds per throughput run"
    )
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--latency-requests", type=int, default=defaults.latency_requests)
    parser.add_argument("--task-starts", type=int, default=defaults.task_starts)
    parser.add_argument(
        "--settle", type=float, default=defaults.idle_settle_s, help="idle seconds before RSS"
    )
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the JSON results")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the markdown file that gets the table")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/performance.md alone")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target does not hold")
    parser.add_argument(
        "--baseline", metavar="REF", help="also run pymgr as commit REF had it (an A/B column)"
    )
    args = parser.parse_args(argv)
    if (
        args.rounds < 1
        or args.duration <= 0
        or args.clients < 1
        or args.task_starts < 1
        or args.latency_requests < 1
    ):
        parser.error("--rounds, --clients, --task-starts and --latency-requests must be >= 1, --duration > 0")
    return args


def bench_once(settings: Settings, *, warmup: bool = True, baseline: str | None = None) -> dict[str, Any]:
    """Start everything, run every round, stop everything; returns the JSON document."""
    # As pip does for an installed package: the start-up figure must not include compiling pymgr.
    compileall.compile_dir(servers.REPO / "src" / "pymgr", quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="pymgr-bench-"))
    started_at = datetime.now(timezone.utc)
    began = time.monotonic()
    load_before = loadavg()
    try:
        with Fleet() as fleet:
            notes = start_fleet(fleet, workdir, baseline)
            bench = Bench(fleet, workdir, settings)
            if warmup:
                warm_up(bench)
            samples = run_rounds(bench)
            rss_after = {name: rss_mib(server.pid) for name, server in fleet.servers.items()}
            demo = fleet["pymgr"].info["demo"]
            start_s = {name: server.start_s for name, server in fleet.servers.items()}
        # After the fleet stopped: every audit line is in the file now.
        demo["audit_lines_written"] = servers.audit_lines(workdir / "pymgr")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "schema": 1,
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - began, 1),
        "machine": machine(),
        # Other work on the machine shows up here: it makes every figure noisier.
        "loadavg": {"before": load_before, "after": loadavg()},
        "settings": settings.__dict__,
        "baseline": baseline,
        "demo_config": demo,
        "notes": notes,
        "servers": {"start_s": start_s, "rss_mib_after_load": rss_after},
        "samples": [s.__dict__ for s in samples],
        "summary": report.summarize(samples),
        "checks": report.evaluate(samples),
        "_samples": samples,
    }


def docs_section(document: dict[str, Any], table: str, checks: str, json_path: Path) -> str:
    s = document["settings"]
    demo = document["demo_config"]
    lines = [
        f"Latest run: {document['started_at']} ({document['wall_s']:.0f} s), "
        f"`{json_path.relative_to(servers.REPO) if json_path.is_relative_to(servers.REPO) else json_path}`.",
        "",
        f"Machine: {report.machine_line(document['machine'])}. Load average (1 min) before and after the run: "
        f"{document['loadavg']['before'][:1]} / {document['loadavg']['after'][:1]} (other work on the machine "
        "makes every figure noisier; the ratios are taken within a round to cancel some of it).",
        "",
        f"Settings: {s['rounds']} rounds, {s['clients']} client processes, {s['duration_s']:g} s per throughput run, "
        f"{s['latency_requests']} sequential calls per latency run, {s['task_starts']} task starts per round.",
        "",
        f"pymgr ran examples/demo.toml as `make run` serves it (ports made ephemeral): sections "
        f"{', '.join(demo['sections'])}; modules {', '.join(demo['modules'] or [])}; log level {demo['log_level']}; "
        f"policy rules: {demo['policy_rules']}; HMAC keys: {len((demo['auth'] or {}).get('keys', []))}; "
        f"audit lines written during the run: {demo['audit_lines_written']:,}.",
        *(f"\nNote: {note}." for note in document["notes"]),
        *(
            [f'\nA/B: the column "pymgr at the baseline commit" ran `{document["baseline"]}`.']
            if document["baseline"]
            else []
        ),
        "",
        table,
        "",
        checks,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = Settings(
        args.rounds, args.duration, args.clients, args.latency_requests, args.task_starts, args.settle
    )
    try:
        document = bench_once(settings, warmup=not args.no_warmup, baseline=args.baseline)
    except (ServerError, LoadError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    samples = document.pop("_samples")
    table, checks = report.table(samples), report.checks_table(document["checks"])
    stamp = document["started_at"].replace(":", "").replace("-", "")[:15]
    json_path = args.results / f"bench-{stamp}.json"
    report.write_json(json_path, document)
    print(f"\n{table}\n\n{checks}\n\nraw results: {json_path}")
    if not args.no_docs:
        if report.update_docs(args.docs, docs_section(document, table, checks, json_path)):
            print(f"table written to {args.docs}")
        else:
            print(f"{args.docs} has no bench markers; table not written there", file=sys.stderr)
    failed = [c["id"] for c in document["checks"] if c["ok"] is False]
    if failed:
        print(f"targets that do not hold: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
