"""Reports of a concurrency sweep: a markdown table (with ratios against a reference system), a
PNG plot of throughput and p99 TTFT against concurrency, and the raw figures as JSON."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cyserve.loadgen.metrics import BenchmarkMetrics


@dataclass(frozen=True)
class SweepPoint:
    system: str
    concurrency: int
    metrics: BenchmarkMetrics

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, "concurrency": self.concurrency, **self.metrics.to_json()}


def _systems(points: Sequence[SweepPoint]) -> list[str]:
    return list(dict.fromkeys(p.system for p in points))


def _concurrencies(points: Sequence[SweepPoint]) -> list[int]:
    return sorted({p.concurrency for p in points})


def _lookup(points: Sequence[SweepPoint]) -> dict[tuple[str, int], BenchmarkMetrics]:
    return {(p.system, p.concurrency): p.metrics for p in points}


def markdown_table(points: Sequence[SweepPoint]) -> str:
    """One row per concurrency and system; then, with several systems, each one's ratio to the
    last (the reference, e.g. llama.cpp): >1 means more throughput or a longer p99 TTFT."""
    header = (
        "| concurrency | system | completed | req/s | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) "
        "| TPOT p50 (ms) | ITL p50 (ms) | E2EL p50 (ms) |"
    )
    lines = [header, _rule(header)]
    systems = _systems(points)
    for p in sorted(points, key=lambda p: (p.concurrency, systems.index(p.system))):
        m = p.metrics
        lines.append(
            f"| {p.concurrency} | {p.system} | {m.completed} | {m.request_throughput:.2f} "
            f"| {m.output_throughput:.1f} | {m.ttft_ms.p50:.1f} | {m.ttft_ms.p99:.1f} "
            f"| {m.tpot_ms.p50:.1f} | {m.itl_ms.p50:.1f} | {m.e2el_ms.p50:.1f} |"
        )
    ratios = ratio_table(points)
    return "\n".join(lines) + ("\n\n" + ratios if ratios else "") + "\n"


def ratio_table(points: Sequence[SweepPoint]) -> str:
    """Each system against the reference (the last system), per concurrency; '' for one system."""
    systems = _systems(points)
    if len(systems) < 2:
        return ""
    reference = systems[-1]
    by_key = _lookup(points)
    header = "| concurrency | " + " | ".join(
        f"{s} / {reference}: output tok/s | {s} / {reference}: TTFT p99" for s in systems[:-1]
    ) + " |"
    lines = [header, _rule(header)]
    for c in _concurrencies(points):
        ref = by_key.get((reference, c))
        cells = []
        for s in systems[:-1]:
            m = by_key.get((s, c))
            cells.append(_ratio(m and m.output_throughput, ref and ref.output_throughput))
            cells.append(_ratio(m and m.ttft_ms.p99, ref and ref.ttft_ms.p99))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(value: float | None, reference: float | None) -> str:
    if not value or not reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def plot(points: Sequence[SweepPoint], path: str, title: str = "") -> bool:
    """Writes the PNG; False when matplotlib is not installed (pip install 'cyserve[bench]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_key = _lookup(points)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system in _systems(points):
        xs = [c for c in _concurrencies(points) if (system, c) in by_key]
        left.plot(xs, [by_key[system, c].output_throughput for c in xs], marker="o", label=system)
        right.plot(xs, [by_key[system, c].ttft_ms.p99 for c in xs], marker="o", label=system)
    for axes, ylabel in ((left, "output tokens/s"), (right, "p99 TTFT (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(_concurrencies(points), [str(c) for c in _concurrencies(points)])
        axes.set_xlabel("concurrent requests")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend()
    right.set_yscale("log")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def write_reports(points: Sequence[SweepPoint], output_dir: str, title: str = "") -> dict[str, str]:
    """sweep.json, sweep.md and (with matplotlib) sweep.png in `output_dir`; their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "json": os.path.join(output_dir, "sweep.json"),
        "markdown": os.path.join(output_dir, "sweep.md"),
    }
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"title": title, "points": [p.to_json() for p in points]}, f, indent=2)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write((f"{title}\n\n" if title else "") + markdown_table(points))
    png = os.path.join(output_dir, "sweep.png")
    if plot(points, png, title):
        paths["plot"] = png
    return paths
