"""The runtime benchmark's report: the machine it ran on, the ratios of the two sides against
the goals, and the table printed at the end. Part of ``bench/runtime.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from pathlib import Path
from typing import Any

from bench.runtime_measure import Side
from bench.runtime_stack import STAGES

GOALS = {"throughput_ratio_min": 0.5, "p50_ratio_max": 3.0}


def machine() -> dict[str, Any]:
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load,
        "host": platform.node(),
    }


def ratios(hw: Side, am: Side) -> dict[str, Any]:
    throughput = am.concurrent.per_s / hw.concurrent.per_s if hw.concurrent.per_s else math.nan
    p50 = am.sequential.p50_ms / hw.sequential.p50_ms if hw.sequential.p50_ms else math.nan
    return {
        "throughput_aimarket_over_handwritten": round(throughput, 3),
        "p50_aimarket_over_handwritten": round(p50, 2),
        "p99_aimarket_over_handwritten": round(am.sequential.p99_ms / hw.sequential.p99_ms, 2)
        if hw.sequential.p99_ms
        else math.nan,
        "meets_throughput_goal": throughput >= GOALS["throughput_ratio_min"],
        "meets_p50_goal": p50 <= GOALS["p50_ratio_max"],
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"runtime benchmark ({report['mode']}): {STAGES} no-op stages per run"]
    header = (
        f"  {'side':<13}{'seq p50':>9}{'seq p90':>9}{'seq p99':>9}{'runs':>6}"
        f"{'conc /s':>10}{'in flight':>10}{'conc p50':>10}{'conc p99':>10}{'errors':>8}"
    )
    lines.append(header)
    for side in report["sides"]:
        s, c = side["sequential"], side["concurrent"]
        lines.append(
            f"  {side['name']:<13}{s['p50_ms']:>9.2f}{s['p90_ms']:>9.2f}{s['p99_ms']:>9.2f}"
            f"{s['runs']:>6}{c['per_s']:>10.1f}{c['in_flight']:>10}{c['p50_ms']:>10.1f}"
            f"{c['p99_ms']:>10.1f}{s['errors'] + c['errors']:>8}"
        )
    lines.append(
        "  machine CPU busy % (of it, this bench's processes) in seq / conc phases: "
        + "; ".join(
            f"{side['name']} {side['sequential']['machine_busy_pct']}"
            f" ({side['sequential']['bench_processes_pct']}) / "
            f"{side['concurrent']['machine_busy_pct']}"
            f" ({side['concurrent']['bench_processes_pct']})"
            for side in report["sides"]
        )
    )
    r = report["ratios"]
    lines.append("  (latencies in ms, submit -> done)")
    lines.append(
        f"ratios: throughput aimarket/hand-written {r['throughput_aimarket_over_handwritten']:.3f}"
        f" (goal >= {GOALS['throughput_ratio_min']}: "
        f"{'met' if r['meets_throughput_goal'] else 'NOT met'}), "
        f"p50 aimarket/hand-written {r['p50_aimarket_over_handwritten']:.2f}"
        f" (goal <= {GOALS['p50_ratio_max']}: {'met' if r['meets_p50_goal'] else 'NOT met'})"
    )
    am = report["sides"][1]["notes"]
    if "per_task" in am:
        lines.append("per task (sequential, counting on), by process:")
        for role, counts in am["per_task"].items():
            lines.append(f"  {role}: " + ", ".join(f"{k} {v:g}" for k, v in counts.items()))
    if "profile" in am:
        for name in ("worker", "api"):
            prof = am["profile"].get(name)
            if not prof:
                continue
            lines.append(
                f"py-spy, aimarket {name} during the concurrent phase ({prof['samples']} samples):"
            )
            lines.extend(f"  {v:5.1f}%  {k}" for k, v in prof["category_pct"].items())
            lines.append(f"  busy samples only ({prof['busy_samples']}):")
            lines.extend(f"  {v:5.1f}%  {k}" for k, v in prof["busy_category_pct"].items())
            lines.append("  top leaf frames:")
            lines.extend(f"  {v:5.1f}%  {k}" for k, v in prof["top_leaf_pct"].items())
    return "\n".join(lines)
