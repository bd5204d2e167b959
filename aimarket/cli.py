"""The ``aimarket`` command: serve the API, run workers, migrate, check workflows, make models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import click
import msgspec

from audio.random_models import SHAPES, make_random, make_tiny
from core.queues import ALL_QUEUES, GPU_QUEUES
from core.settings import SettingsError, get_settings


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"aimarket: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Runs AI generation jobs (MusicGen, AudioGen) for an AI marketplace."""


@main.command()
@click.option("--host", default=None, help="Interface to bind (default: APP_API_HOST).")
@click.option("--port", type=int, default=None, help="Port (default: APP_API_PORT, 8007).")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API."""
    import uvicorn

    from aimarket.app import create_app
    from workflows.diagnostics import WorkflowError

    try:
        settings = get_settings()
        # The bound address goes into the settings: local media links are built from it.
        settings = msgspec.structs.replace(
            settings,
            app_api_host=host or settings.app_api_host,
            app_api_port=port or settings.app_api_port,
        )
        app = create_app(settings)
    except (SettingsError, WorkflowError) as exc:
        fail(str(exc))
    uvicorn.run(
        app,
        host=settings.app_api_host,
        port=settings.app_api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@main.command()
@click.option(
    "--queues",
    "-Q",
    default=",".join(ALL_QUEUES),
    show_default=True,
    help="Comma-separated queues to consume (one pool per GPU model: -Q musicgen).",
)
@click.option("--processes", "-p", type=int, default=1, show_default=True)
@click.option(
    "--threads",
    "-t",
    type=int,
    default=None,
    help="Per process; on GPU queues BATCH_MAX_SIZE (they wait on one generation thread), else 8.",
)
@click.option("--warmup", is_flag=True, help="Load and try the models of the GPU queues at start.")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0, 86400),
    default=600.0,
    show_default=True,
    help="Seconds a stopping worker (SIGTERM) lets running stages finish; keep it under the "
    "orchestrator's grace period (a stage still running then is redelivered elsewhere).",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Written once the worker is ready (after the warm-up, with --warmup).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the Prometheus metrics of every worker process on this port (/metrics).",
)
def worker(
    queues: str,
    processes: int,
    threads: int | None,
    warmup: bool,
    shutdown_timeout: float,
    ready_file: Path | None,
    metrics_port: int | None,
) -> None:
    """Run a Dramatiq worker for the given queues."""
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    names = [q.strip() for q in queues.split(",") if q.strip()]
    try:
        settings = get_settings()
    except SettingsError as exc:
        fail(str(exc))
    if settings.rabbitmq_host is None:
        fail(
            "RABBITMQ_HOST is not set: without RabbitMQ, `aimarket serve` runs the workers "
            "in its own process (embedded mode); a separate worker needs the broker"
        )
    gpu_only = bool(names) and set(names) <= GPU_QUEUES
    if threads is None:
        # A GPU worker runs one generation thread; its message threads only wait for it, and
        # as many as a batch holds can wait together (BATCH_MAX_SIZE).
        threads = settings.batch_max_size if gpu_only else 8
    if gpu_only:
        # Prefetch no more than can be batched now, so a busy worker does not hold messages
        # another worker could start.
        os.environ.setdefault("dramatiq_queue_prefetch", str(threads))
    argv = ["aimarket.worker_boot", "-p", str(processes), "-t", str(threads), "-Q", *names]
    argv += ["--worker-shutdown-timeout", str(int(shutdown_timeout * 1000))]
    argv += _worker_metrics(metrics_port) if metrics_port is not None else []
    from actors.warmup import READY_FILE_ENV, WARMUP_ENV

    if warmup:
        os.environ[WARMUP_ENV] = ",".join(q for q in names if q in GPU_QUEUES)
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
        os.environ[READY_FILE_ENV] = str(ready_file.resolve())
    args = make_argument_parser().parse_args(argv)  # type: ignore[no-untyped-call]
    sys.exit(dramatiq_main(args))  # type: ignore[no-untyped-call]


def _worker_metrics(port: int) -> list[str]:
    """Each worker process writes its samples to PROMETHEUS_MULTIPROC_DIR (set before they
    start, emptied of a previous run's); one more process serves their sum on ``port``."""
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="aimarket-metrics-"
    )
    # Before anything imports prometheus_client, which reads it once; Dramatiq's Prometheus
    # middleware (aimarket.broker) writes its message metrics to the same folder.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    os.environ["dramatiq_prom_db"] = folder  # noqa: SIM112 (the name Dramatiq reads)
    from core.metrics import METRICS_PORT_ENV, prepare_multiprocess_dir

    prepare_multiprocess_dir(folder)
    os.environ[METRICS_PORT_ENV] = str(port)
    return ["--fork-function", "core.metrics:serve_worker_metrics"]


@main.command()
@click.argument("workflow")
@click.argument("prompt", required=False)
@click.option("--duration", "-d", type=float, default=None, help="Seconds of audio.")
@click.option(
    "--input",
    "-i",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any input of the workflow (VALUE is read as JSON when it parses, else as text).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def generate(
    workflow: str,
    prompt: str | None,
    duration: float | None,
    extra: tuple[str, ...],
    output: Path | None,
    as_json: bool,
) -> None:
    """Run one task locally, without a server, and write its audio to a file.

    Example: aimarket generate text2music "lofi hip hop with warm piano" -d 8 -o out.wav
    """
    from aimarket.generate_cli import CliError, run_generate

    inputs: dict[str, object] = {}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--input takes KEY=VALUE, got {item!r}")
        try:
            inputs[key] = json.loads(value)
        except ValueError:
            inputs[key] = value
    if prompt is not None:
        inputs["prompt"] = prompt
    if duration is not None:
        inputs["duration"] = duration
    try:
        settings = get_settings()
        result = run_generate(settings, workflow, inputs, output)
    except SettingsError as exc:
        fail(str(exc))
    except CliError as exc:
        fail(str(exc), exc.exit_code)
    audio = result.audio()
    if as_json:
        report = {
            "path": str(result.path),
            "seconds": round(result.seconds, 3),
            "task": msgspec.to_builtins(result.view),
        }
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"wrote {result.path} ({audio['duration_s']:.2f} s of audio at "
            f"{audio['sample_rate']} Hz, {audio['size_bytes']} bytes) in {result.seconds:.1f} s"
        )


@main.group()
def db() -> None:
    """Database schema (owned by Alembic)."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Migrate the database to REVISION (same as `alembic upgrade head`)."""
    from db.migrate import upgrade as run_upgrade

    try:
        dsn = get_settings().database_dsn
    except SettingsError as exc:
        fail(str(exc))
    if dsn is None:
        fail("no database configured: set POSTGRES_HOST (or DATABASE_URL)")
    run_upgrade(dsn, revision)
    click.echo(f"database at {revision}")


@main.group()
def workflows() -> None:
    """Workflow definitions."""


@workflows.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def validate(paths: tuple[Path, ...], fmt: str) -> None:
    """Check workflow files or folders (default: the built-in and configured folders)."""
    from aimarket.broker import actor_catalog
    from workflows.diagnostics import Diagnostic
    from workflows.loader import BUILTIN_DIR, check_file

    try:
        settings = get_settings()
    except SettingsError as exc:
        fail(str(exc))
    catalog = actor_catalog()
    targets = list(paths) or [BUILTIN_DIR, *settings.extra_workflow_dirs]
    files = sorted(
        f
        for target in targets
        for f in ([target] if target.is_file() else [*target.glob("*.yaml"), *target.glob("*.yml")])
    )
    diagnostics: list[Diagnostic] = []
    for file in files:
        _, found = check_file(
            file,
            catalog.queues,
            settings,
            actor_outputs=catalog.outputs,
            extra_queues=settings.extra_queue_names,
        )
        diagnostics.extend(found)
    errors = sum(d.severity == "error" for d in diagnostics)
    if fmt == "json":
        import msgspec

        report = {"files": [str(f) for f in files], "diagnostics": msgspec.to_builtins(diagnostics)}
        click.echo(json.dumps(report, indent=2))
    else:
        for d in diagnostics:
            click.echo(d.format())
        warnings = sum(d.severity == "warning" for d in diagnostics)
        notes = len(diagnostics) - errors - warnings
        summary = f"{len(files)} file(s) checked, {errors} error(s), {warnings} warning(s)"
        click.echo(summary + (f", {notes} note(s)" if notes else ""))
    sys.exit(1 if errors else 0)


@workflows.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "outline"]), default="mermaid")
def graph(name: str, fmt: str) -> None:
    """Print a workflow's plan: stages, branches, fan-outs and queues."""
    from aimarket.broker import actor_catalog
    from workflows.compiler import compile_workflow
    from workflows.diagnostics import WorkflowError
    from workflows.graph import mermaid, outline
    from workflows.loader import load_configured

    try:
        settings = get_settings()
        catalog = actor_catalog()
        loaded = load_configured(settings, catalog)
    except (SettingsError, WorkflowError) as exc:
        fail(str(exc))
    if name not in loaded:
        fail(f"no workflow {name!r} (known: {', '.join(sorted(loaded))})")
    plan = compile_workflow(loaded[name], catalog.queues)
    stage_queues = {s.stage.id: s.queue for s in (*plan.steps, *plan.on_failure, *plan.finally_)}
    render = mermaid if fmt == "mermaid" else outline
    click.echo(render(loaded[name], stage_queues))
    click.echo(f"%% runs as a {plan.mode}" if fmt == "mermaid" else f"runs as a {plan.mode}")


@workflows.command()
def schema() -> None:
    """Print the JSON Schema of the workflow language (for editors and CI)."""
    from workflows.loader import LANGUAGE_SCHEMA_PATH

    click.echo(LANGUAGE_SCHEMA_PATH.read_text())


@main.group()
def models() -> None:
    """Model checkpoints."""


@models.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["musicgen", "audiogen"]), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
def make_tiny_command(directory: Path, kind: str, seed: int) -> None:
    """Write a tiny random checkpoint to DIRECTORY, for offline smoke tests.

    Its audio is noise: it exercises the real loading and generation code, nothing more.
    """
    path = make_tiny(directory, kind, seed=seed)  # type: ignore[arg-type]
    var = "MUSIC_GEN_MODEL" if kind == "musicgen" else "AUDIO_GEN_MODEL"
    click.echo(f"wrote a tiny random {kind} checkpoint to {path} (its audio is noise)")
    click.echo(f"use it with: {var}={path.resolve()}")


@models.command("make-random")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--like",
    type=click.Choice(list(SHAPES)),
    required=True,
    help="The released model whose architecture and sizes to copy (tiny-* for tests).",
)
@click.option("--seed", type=int, default=0, show_default=True)
def make_random_command(directory: Path, like: str, seed: int) -> None:
    """Write a random-weight checkpoint of a released model's shape to DIRECTORY, offline.

    A decoding step costs what the released model's does, so it measures speed and memory;
    its audio is noise. Released shapes take GBs of disk (musicgen-small about 1.8 GB,
    medium about 6 GB): never commit one.
    """
    path = make_random(directory, like, seed=seed)
    var = "MUSIC_GEN_MODEL" if SHAPES[like].kind == "musicgen" else "AUDIO_GEN_MODEL"
    click.echo(f"wrote a random {like} checkpoint to {path} (its audio is noise)")
    click.echo(f"use it with: {var}={path.resolve()}")
