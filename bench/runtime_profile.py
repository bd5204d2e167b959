"""The runtime benchmark's looking inside aimarket's processes: the per-task counts written
by bench/runtime_stages/counting.py (``--count``), and py-spy records of the worker and the
API during the concurrent phase (``--py-spy``), summed into shares by category. Part of
``bench/runtime.py``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.runtime_stack import Proc, busiest_child, log
from bench.stack import BIN


@dataclass
class Profiling:
    folder: Path
    seconds: int


def snapshot_counts(folder: Path | None) -> dict[str, Counter[str]]:
    if folder is None:
        return {}
    found: dict[str, Counter[str]] = {}
    for path in folder.glob("*.json"):
        role = path.stem.split("-")[0]
        with contextlib.suppress(OSError, ValueError):
            found.setdefault(role, Counter()).update(json.loads(path.read_text()))
    return found


def per_task(
    before: dict[str, Counter[str]], after: dict[str, Counter[str]], tasks: int
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for role, totals in after.items():
        diff = totals.copy()
        diff.subtract(before.get(role, Counter()))
        out[role] = {k: round(v / tasks, 2) for k, v in sorted(diff.items()) if v}
    return out


def py_spy() -> str:
    found = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(found).exists():
        raise SystemExit("runtime: --py-spy needs py-spy (uv pip install py-spy)")
    return found


def start_profilers(
    profiling: Profiling | None, api: Proc, worker: Proc
) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    if profiling is None:
        return []
    started = []
    for name, pid in (("worker", busiest_child(worker.proc.pid)), ("api", api.proc.pid)):
        out = profiling.folder / f"{name}.txt"
        args = [
            py_spy(),
            "record",
            "-o",
            str(out),
            "-f",
            "raw",
            "--pid",
            str(pid),
            "-d",
            str(profiling.seconds),
            "-r",
            "250",
        ]
        started.append(
            (
                name,
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                out,
            )
        )
        log(f"py-spy records the {name} (pid {pid}) for {profiling.seconds} s into {out}")
    return started


def finish_profilers(
    profilers: list[tuple[str, subprocess.Popen[bytes], Path]], phase_s: float
) -> dict[str, Any]:
    result: dict[str, Any] = {"phase_s": phase_s}
    for name, proc, out in profilers:
        proc.wait(timeout=120)
        if out.exists():
            result[name] = summarize_profile(out)
    return result


#: Where a frame belongs, first match wins (frames are "function (file:line)").
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    (
        "idle: waiting for messages / work",
        (
            "_wait_for_tstate_lock",
            "consume (dramatiq/brokers",
            "process_data_events",
            "worker.py:2",
            "Queue.get",
            "select (selectors",
            "_run_once (asyncio/base_events",
        ),
    ),
    ("database (SQLAlchemy/asyncpg)", ("sqlalchemy/", "asyncpg/", "db/tasks.py", "db/engine")),
    ("Redis", ("redis/", "aimarket/state.py")),
    ("RabbitMQ publish/ack (pika)", ("pika/", "brokers/rabbitmq.py")),
    (
        "thread<->asyncio hop",
        (
            "run_coroutine_threadsafe",
            "asyncio/futures.py",
            "concurrent/futures/_base.py",
            "event_loop_thread",
            "middleware/asyncio.py",
        ),
    ),
    ("JSON / msgspec", ("json/", "msgspec")),
    ("logging", ("logging/", "aimarket/logs.py")),
    ("metrics (prometheus)", ("prometheus_client",)),
    ("Dramatiq middleware and worker", ("dramatiq/",)),
    ("HTTP (litestar/uvicorn/httptools)", ("litestar/", "uvicorn/", "httptools", "h11")),
]


def categorize(stack: str) -> str:
    """The category of a sample: its innermost frame that matches one."""
    for frame in reversed(stack.split(";")):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


#: Leaf frames of a thread that waits (py-spy samples waiting threads too): left out of the
#: "busy" shares, which tell where the CPU goes.
WAITING = (
    "Condition.wait",
    "PollPoller.poll",
    "EpollSelector.select",
    "_worker (concurrent/futures/thread.py",
    "_CtypesTimeoutManager.run",
    "worker_process (dramatiq/cli.py",
)


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Shares of py-spy's collapsed stacks: by category (all samples, waiting threads
    included, and busy samples only), and the top leaf frames."""
    busy: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        by_category[categorize(stack)] += count
        leaves[stack.split(";")[-1]] += count
        if not any(wait in stack.split(";")[-1] for wait in WAITING):
            busy[categorize(stack)] += count
    share = {k: round(100 * v / total, 1) for k, v in by_category.most_common()} if total else {}
    top_leaves = {k: round(100 * v / total, 1) for k, v in leaves.most_common(top)} if total else {}
    busy_n = sum(busy.values())
    busy_share = {k: round(100 * v / busy_n, 1) for k, v in busy.most_common()} if busy_n else {}
    return {
        "samples": total,
        "busy_samples": busy_n,
        "busy_category_pct": busy_share,
        "category_pct": share,
        "top_leaf_pct": top_leaves,
        "file": str(path),
    }
