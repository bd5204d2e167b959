"""What the benchmarks' measuring shares (``bench/submit_measure.py``,
``bench/runtime_measure.py``): the percentile of a latency list, and the machine's CPU time
read from ``/proc/stat``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Ticks per second of the CPU times in /proc.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (no interpolation)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def machine_ticks() -> list[int]:
    """CPU ticks of all cores since boot, by state, from the first line of /proc/stat: user
    nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user
    already)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
