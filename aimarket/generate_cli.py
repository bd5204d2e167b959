"""``aimarket generate``: one task, run locally by the embedded stack, with a progress bar.

The task goes through the same path as an API request (validation, the workflow's stages on
in-process workers), in a throw-away data folder, so what the CLI does is what the service does.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import msgspec

from core.settings import Settings
from tasks.view import TaskOut

#: Seconds between two looks at the task's progress.
POLL_S = 0.1


class CliError(Exception):
    """A failure to report in one line; ``exit_code`` 2 for bad usage, 1 for a failed task."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def local_settings(settings: Settings, data_dir: Path) -> Settings:
    """The user's settings (models, limits, device) with every backend embedded."""
    return msgspec.structs.replace(
        settings,
        database_url=None,
        postgres_host=None,
        rabbitmq_host=None,
        redis_host=None,
        s3_bucket=None,
        s3_endpoint_url=None,
        aws_access_key=None,
        marketplace_token="local-cli",  # noqa: S106  (never served: no HTTP here)
        marketplace_callback=None,
        data_dir=str(data_dir),
        workflows_dirs=settings.workflows_dirs,
    )


class ProgressBar:
    """Decoding progress on stderr: one redrawn line on a terminal, plain lines otherwise
    (a log or a test reads every 10 %)."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.stage: str | None = None
        self.last_step = -1
        self.shown: float | None = None
        self.first: tuple[float, float] | None = None

    def update(self, stage: str | None, reported: dict[str, Any]) -> None:
        """``stage``: the one running now; ``reported``: the last progress a stage published
        (it may be a stage that has just finished: its last step is still worth showing)."""
        if stage != self.stage and stage is not None:
            if self.tty and self.last_step >= 0:
                self.stream.write("\n")
            self.stage = stage
            self._line(f"stage {stage}", final=True)
        if reported.get("fraction") is None or reported.get("fraction") == self.shown:
            return
        self.shown = fraction = float(reported["fraction"])
        now = time.monotonic()
        elapsed = now - self.start
        # The time left is the decoding rate seen so far, not counting the model's loading.
        if self.first is None or fraction < self.first[1]:
            self.first = (now, fraction)
        t0, f0 = self.first
        left = (now - t0) / (fraction - f0) * (1 - fraction) if fraction > f0 else None
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = (
            f"{reported.get('stage') or 'progress'} [{bar}] {fraction * 100:5.1f}%  "
            f"elapsed {elapsed:5.1f}s  left " + (f"{left:5.1f}s" if left is not None else "    ?")
        )
        step = int(fraction * 10)
        if self.tty:
            self.last_step = step
            self._line(text, final=False)
        elif step > self.last_step:
            self.last_step = step
            self._line(text, final=True)

    def _line(self, text: str, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Result:
    path: Path
    view: TaskOut
    seconds: float

    def audio(self) -> dict[str, Any]:
        return next(
            msgspec.to_builtins(o) for o in self.view.outputs if o.content_type.startswith("audio/")
        )


def run_generate(
    settings: Settings,
    workflow: str,
    inputs: dict[str, Any],
    output: Path | None,
    stream: TextIO = sys.stderr,
) -> Result:
    """Run one task to the end and copy its audio to ``output``. Raises CliError."""
    with tempfile.TemporaryDirectory(prefix="aimarket-generate-") as tmp:
        local = local_settings(settings, Path(tmp))
        return asyncio.run(_run(local, workflow, inputs, output, stream))


async def _run(
    settings: Settings,
    workflow: str,
    inputs: dict[str, Any],
    output: Path | None,
    stream: TextIO,
) -> Result:
    from actors.resources import use_settings
    from aimarket.broker import setup_broker
    from aimarket.embedded import start_worker, stop_worker
    from api.schemas import CreateTask
    from api.services import Services
    from api.tasks import submit_task
    from db.migrate import upgrade
    from db.models import TaskStatus
    from db.tasks import get_task
    from tasks.errors import Refused

    db_url = f"sqlite+aiosqlite:///{Path(settings.data_dir) / 'aimarket.db'}"
    await asyncio.to_thread(upgrade, db_url, "head", False)
    services = Services.build(settings, setup_broker(settings, publisher=True))
    use_settings(settings)
    await asyncio.to_thread(services.store.ensure_bucket)
    worker = start_worker(services)
    started = time.monotonic()
    try:
        try:
            task = await submit_task(
                services, CreateTask(workflow=workflow, user_id="local-cli", input=inputs)
            )
        except Refused as exc:  # ApiError is one too
            where = f"{exc.field}: " if exc.field else ""
            raise CliError(f"{where}{exc.message}", 2) from None
        bar = ProgressBar(stream)
        while True:
            row = await get_task(services.db, task.id)
            assert row is not None
            live = await services.state.get(task.id)
            running = [s for s, e in live.get("stages", {}).items() if e["status"] == "running"]
            bar.update(running[-1] if running else None, live.get("progress") or {})
            if TaskStatus(row.status).terminal:
                break
            await asyncio.sleep(POLL_S)
        bar.done()
        from tasks.view import task_view

        view = task_view(row, services.store)
        if row.status != TaskStatus.SUCCEEDED:
            raise CliError(_failure_message(view, settings), 1)
        audio = next(o for o in row.outputs if o["content_type"].startswith("audio/"))
        source = services.store.path(audio["key"])  # type: ignore[attr-defined]
        target = output or Path(f"{workflow}-{task.id[:8]}{source.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return Result(path=target, view=view, seconds=time.monotonic() - started)
    finally:
        await stop_worker(worker)
        await services.close()


def _failure_message(view: TaskOut, settings: Settings) -> str:
    error = view.error
    if error is None:
        return f"the task ended {view.status}"
    message = f"{error.code}: {error.message}"
    if error.code == "model_unavailable":
        message += (
            "\n  hint: set MUSIC_GEN_MODEL / AUDIO_GEN_MODEL to a hub name or a checkpoint "
            "folder; offline, `aimarket models make-tiny DIR --kind musicgen` writes a test one"
        )
    return message
