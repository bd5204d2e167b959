"""Submit benchmark: how fast the API accepts tasks, against a bare loop doing the same work.

What it measures
    *Acceptance* of ``POST /v1/tasks``: body validation, one INSERT committed to Postgres, one
    confirmed publish of the pipeline's first message to RabbitMQ, the 202 answer. No worker
    runs, so the messages pile up in a throw-away vhost and nothing is generated.

    1. The real API (``aimarket serve``, a subprocess) is driven by ``--concurrency`` httpx
       clients for ``--requests`` submits, after ``--warmup`` submits. Only 202s count as
       accepted; anything else is an error and is reported.
    2. Baseline, same Postgres and RabbitMQ, in this process and without HTTP: a sequential
       loop doing the API's per-task work with the app's own code
       (``aimarket.app.build_services``: the same ``db.engine.Database``,
       ``db.tasks.insert_task`` of a ``db.models.Task``, the broker from
       ``aimarket.broker.setup_broker`` and the compiled plan's
       ``pipeline(broker, task_id).run()``, a blocking pika publish with delivery
       confirmation, called on the loop's own thread).
    3. The same baseline with ``--concurrency`` coroutines, publishing through
       ``asyncio.to_thread`` as the API does through anyio's thread pool.

    It also reports the API's start-up time (spawn to the first 200 on ``/health/live``), its
    resident memory after the run, whether any ``libtorch`` is mapped into it, the CPU each
    process group (API, this process, Postgres, RabbitMQ, interrupts, the rest) spent per
    accepted task, read from ``/proc``, and how long the INSERT and the publish each took in
    the bare loops. Everything shares the machine's cores, so the CPU split is what tells
    where the time goes; a busy neighbour shows up in it as "other".

How to run
    ``uv run python bench/submit.py`` with the options ``--requests N`` (2000),
    ``--concurrency C`` (32), ``--warmup W`` (100), ``--json`` (one JSON object on stdout),
    ``--no-concurrent-baseline`` and ``--profile-api FILE`` (cProfile of the API; slow), on a
    machine with Postgres (127.0.0.1:5432, user postgres, trust auth), Redis (6379) and
    RabbitMQ (5672, guest/guest, ``rabbitmqctl`` usable by this user) running.

    The per-user limits and the queue bound are off (``RATE_LIMIT_PER_MINUTE``,
    ``MAX_ACTIVE_TASKS_PER_USER`` and ``MAX_QUEUE_DEPTH`` are 0), so the figures stay
    comparable with those measured before the limits existed.

    It builds its own backends and removes them at the end, also on an error or Ctrl-C: a
    fresh database ``aimarket_bench_<hex>`` migrated by Alembic, a RabbitMQ vhost, Redis
    database 12 (flushed) and moto's S3 server on a free loopback port.

Its parts are the modules beside it: ``submit_stack.py`` (the backends and the API process),
``submit_load.py`` (the load on the API and the bare loops), ``submit_measure.py`` (a phase's
figures and the CPU read from ``/proc``) and ``submit_report.py`` (the machine and the table),
with ``stack.py`` and ``stats.py``, which bench/runtime.py shares.

Figures and their reading are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/: make the project importable without installing it
# (its modules are imported inside the functions that need them, after this), and with it this
# script's sibling modules, as bench.submit_*.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.submit_load import measure_api, measure_bare  # noqa: E402
from bench.submit_measure import Phase, background_busy  # noqa: E402
from bench.submit_report import machine, render  # noqa: E402
from bench.submit_stack import (  # noqa: E402
    LIMITS_ON,
    inspect_process,
    log,
    require_reachable,
    service_env,
    setup_backends,
    start_api,
    summarize_log,
)

# --- Main ---------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same way out as Ctrl-C, so the clean-up runs.
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="measured ops per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=100, help="ops before each phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--no-concurrent-baseline",
        action="store_true",
        help="skip the bare loop with --concurrency coroutines",
    )
    parser.add_argument(
        "--shared-pool",
        action="store_true",
        help="drive the API through one httpx.AsyncClient with a pool of C connections "
        "(default: C clients with one connection each; the shared pool costs more CPU)",
    )
    parser.add_argument(
        "--with-limits",
        action="store_true",
        help="then measure a second API with the per-user limits and the queue bound on (set "
        "high enough never to refuse: every submit pays for the checks, none is refused)",
    )
    parser.add_argument(
        "--profile-api",
        type=Path,
        metavar="FILE",
        help="run the API under cProfile and write its stats to FILE (slows it down)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--requests and --concurrency must be >= 1, --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_reachable()
    run_tag = uuid.uuid4().hex[:6]
    idle_load = background_busy()
    log(f"background CPU load before the run: {idle_load:.0%}")
    if idle_load > 0.15:
        log("warning: the machine is busy with other work; figures will be low and noisy")
    with contextlib.ExitStack() as stack:
        backends = setup_backends(stack)
        env = service_env(backends)
        api = start_api(env, stack, args.profile_api)

        async def measure_all() -> list[Phase]:
            api_phase = await measure_api(api, args, run_tag)
            return [api_phase, *await measure_bare(env, args, run_tag, api.proc.pid)]

        phases = asyncio.run(measure_all())
        # Read after the load, while the process still holds what the run made it allocate.
        info = inspect_process(api.proc.pid)
        limited = None
        if args.with_limits:
            limited_api = start_api({**env, **LIMITS_ON}, stack)
            limited = asyncio.run(measure_api(limited_api, args, run_tag + "L", "API+limits"))
        details = machine()
        api_log = summarize_log(api.log_path.read_text(errors="replace"))
    api_rate = phases[0].rate_per_s
    ratios = {f"API / {p.name}": api_rate / p.rate_per_s for p in phases[1:] if p.rate_per_s > 0}
    if limited is not None and api_rate > 0:
        # The limits' cost: measured after the plain API, on a queue and a table that have
        # grown by one phase (a slight handicap for the limited one).
        ratios["API+limits / API"] = limited.rate_per_s / api_rate

    # Server-side CPU per task (no HTTP client) against the bare loop's: unlike the rates, this
    # hardly moves with neighbours, and it does not charge the load generator to the API.
    def server_cpu(phase: Phase, own: str) -> float:
        use = phase.cpu_ms_per_op
        return sum(use.get(k, 0.0) for k in (own, "postgres", "rabbitmq", "irq"))

    cpu_ratios = {
        f"{p.name} / API": server_cpu(p, "bench") / server_cpu(phases[0], "api")
        for p in phases[1:]
        if server_cpu(phases[0], "api") > 0
    }
    if limited is not None:
        phases.append(limited)
    return {
        "machine": details,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "phases": [asdict(p) for p in phases],
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "background_busy": idle_load,
        "api_log": api_log,
        "api_process": {
            "start_live_s": api.start_live_s,
            "start_ready_s": api.start_ready_s,
            **asdict(info),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report = run(args)
    except KeyboardInterrupt:
        log("interrupted; backends removed")
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"failed: {exc}")
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
