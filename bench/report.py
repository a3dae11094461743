"""From samples to the table, the targets, the JSON file and docs/performance.md.

Rules:
- A cell is the median over rounds and its spread: half the range
  (max - min) as a percentage of the median ("12,345 ±3%").
- A ratio is computed per round (pymgr and the baseline measured in the
  same round) and the median of those is reported; so is every target.
- The JSON file holds everything: the machine, the settings, what the demo
  config turned on, every sample with its raw numbers, the summary and the
  checks. The docs get only the latest table, between two markers.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.figures import FIGURES, Figure, Sample

COLUMN_LABELS = {
    "pymgr": "pymgr",
    "pymgr base": "pymgr at the baseline commit",
    "supervisord": "supervisord",
    "seed": "seed (2014 design)",
    "asgi floor": "floor: ASGI on uvicorn",
    "line floor": "floor: bare uvloop protocol",
}
DOCS_BEGIN = "<!-- bench:begin (written by make bench; edit above or below) -->"
DOCS_END = "<!-- bench:end -->"


@dataclass(frozen=True)
class Check:
    id: str
    text: str
    figure: str
    metric: str
    #: The column pymgr is compared with; None for an absolute limit.
    baseline: str | None
    op: str
    limit: float


#: The targets, as issue 13 revised them from what was measured: 2b (legacy CPU <= 0.6x the seed), 2c (HTTP
#: new connection >= 2x supervisord) and 4a (task start <= 2 ms) are no longer targets (their figures stay in
#: the table); 2a is 1.0x the seed (with pymgr's auth and audit on), 4b 0.6x supervisord. The ids stay, so
#: older results and docs still name the same checks. The scale targets are bench_tasks.py's.
CHECKS = (
    Check(
        "1a",
        "control calls: server CPU/call <= 0.5x supervisord getState",
        "control",
        "cpu_us",
        "supervisord",
        "<=",
        0.5,
    ),
    Check("1b", "control calls: throughput >= 1.6x supervisord", "control", "rps", "supervisord", ">=", 1.6),
    Check(
        "1c", "control calls: throughput >= 0.6x the ASGI floor", "control", "rps", "asgi floor", ">=", 0.6
    ),
    Check(
        "2a",
        "new conn: legacy throughput >= 1.0x the seed, auth and audit on",
        "newconn-legacy",
        "rps",
        "seed",
        ">=",
        1.0,
    ),
    Check("3", "latency: p99 <= 1 ms", "latency", "p99_us", None, "<=", 1000.0),
    Check(
        "4b",
        "task start: <= 0.6x supervisord startProcess",
        "task-start",
        "median_us",
        "supervisord",
        "<=",
        0.6,
    ),
    Check("5a", "idle RSS <= 1.5x supervisord", "startup", "rss_mib", "supervisord", "<=", 1.5),
    Check("5b", "start-up to answering <= 1 s", "startup", "ready_s", None, "<=", 1.0),
)


def stats(values: list[float]) -> dict[str, Any]:
    median = statistics.median(values)
    spread = (max(values) - min(values)) / 2 / median * 100 if median else 0.0
    return {"median": median, "min": min(values), "max": max(values), "spread_pct": spread, "values": values}


def _values(samples: list[Sample], figure: str, metric: str, column: str) -> dict[int, float]:
    return {s.round: s.values[metric] for s in samples if s.figure == figure and s.server == column}


def summarize(samples: list[Sample]) -> dict[str, dict[str, dict[str, Any]]]:
    """figure -> metric -> column -> stats."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for figure in FIGURES:
        for metric in figure.metrics:
            for column in figure.columns:
                values = list(_values(samples, figure.name, metric, column).values())
                if values:
                    summary.setdefault(figure.name, {}).setdefault(metric, {})[column] = stats(values)
    return summary


def ratio(samples: list[Sample], figure: str, metric: str, baseline: str) -> dict[str, Any] | None:
    """pymgr / baseline, per round, then its stats; None when the baseline was not measured."""
    ours = _values(samples, figure, metric, "pymgr")
    theirs = _values(samples, figure, metric, baseline)
    per_round = [ours[r] / theirs[r] for r in ours if r in theirs and theirs[r]]
    return stats(per_round) if per_round else None


def evaluate(samples: list[Sample]) -> list[dict[str, Any]]:
    results = []
    for check in CHECKS:
        if check.baseline is None:
            values = list(_values(samples, check.figure, check.metric, "pymgr").values())
            measured = stats(values) if values else None
        else:
            measured = ratio(samples, check.figure, check.metric, check.baseline)
        ok = None
        if measured is not None:
            value = measured["median"]
            ok = value <= check.limit if check.op == "<=" else value >= check.limit
        results.append({**asdict(check), "measured": measured, "ok": ok})
    return results


def _fmt(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:,.1f}" if value < 10_000 else f"{value:,.0f}"


def _cell(st: dict[str, Any] | None, unit: str) -> str:
    return "—" if st is None else f"{_fmt(st['median'], unit)} ±{st['spread_pct']:.0f}%"


def _ratios(samples: list[Sample], figure: Figure, metric: str) -> str:
    parts = []
    for column in figure.columns[1:]:
        r = ratio(samples, figure.name, metric, column)
        if r is not None:
            parts.append(f"{r['median']:.2f}x {column}")
    return ", ".join(parts) or "—"


def table(samples: list[Sample]) -> str:
    """The markdown table: one row per figure and metric."""
    summary = summarize(samples)
    columns = [c for c in COLUMN_LABELS if any(c in m for f in summary.values() for m in f.values())]
    head = ["figure", "metric", *(COLUMN_LABELS[c] for c in columns), "pymgr ÷ baseline (median of rounds)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for figure in FIGURES:
        for metric, (label, unit, _) in figure.metrics.items():
            by_column = summary.get(figure.name, {}).get(metric, {})
            if not by_column:
                continue
            cells = [_cell(by_column.get(c), unit) if c in figure.columns else "" for c in columns]
            row = [figure.title, f"{label} ({unit})", *cells, _ratios(samples, figure, metric)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def checks_table(results: list[dict[str, Any]]) -> str:
    lines = ["| # | target | measured (median) | spread | holds |", "|---|---|---|---|---|"]
    for r in results:
        m = r["measured"]
        if m is None:
            lines.append(f"| {r['id']} | {r['text']} | not measured | | — |")
            continue
        value = f"{m['median']:.2f}x" if r["baseline"] else f"{_fmt(m['median'], _unit(r))} {_unit(r)}"
        mark = "yes" if r["ok"] else "**NO**"
        lines.append(f"| {r['id']} | {r['text']} | {value} | ±{m['spread_pct']:.0f}% | {mark} |")
    return "\n".join(lines)


def _unit(check: dict[str, Any]) -> str:
    figure = next(f for f in FIGURES if f.name == check["figure"])
    return figure.metrics[check["metric"]][1]


def machine_line(machine: dict[str, Any]) -> str:
    pk = machine["packages"]
    versions = ", ".join(f"{name} {v}" for name, v in pk.items() if v)
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores, {machine.get('mem_total_mib')} MiB, "
        f"Linux {machine['kernel']}, Python {machine['python']}; {versions}"
    )


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")


def update_docs(path: Path, section: str) -> bool:
    """Replace the text between the bench markers; False if the markers are missing."""
    text = path.read_text() if path.exists() else ""
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if begin < 0 or end < begin:
        return False
    path.write_text(text[: begin + len(DOCS_BEGIN)] + "\n" + section.strip() + "\n" + text[end:])
    return True
