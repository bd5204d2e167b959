"""One typed settings object, read once from the environment and an optional ``.env`` file.

Field names are the environment variable names in lower case (``APP_API_PORT`` ->
``app_api_port``). The names and defaults of the original deployment are kept so an existing
``.env`` keeps working; every variable is documented in ``.env.example``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec
from dotenv import dotenv_values

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
WebhookSecret = Annotated[str, msgspec.Meta(pattern=r"^whsec_[A-Za-z0-9+/]{16,}={0,2}$")]


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Settings(msgspec.Struct, kw_only=True, rename="upper", forbid_unknown_fields=False):
    # --- API -----------------------------------------------------------------------------
    #: Interface the API binds to (``aimarket serve --host`` overrides it).
    app_api_host: str = "127.0.0.1"
    #: Port of the API (``aimarket serve --port`` overrides it).
    app_api_port: Port = 8007
    #: Title and version shown in the OpenAPI document.
    api_name: str = "AudioCraft"
    api_version: str = "1.0.0"
    #: Bearer token the marketplace sends on every call but health and docs. Required to serve.
    marketplace_token: str | None = None
    #: Where results are POSTed when a request gives no ``callback_url``.
    marketplace_callback: str | None = None

    # --- Limits --------------------------------------------------------------------------
    #: Longest audio a request may ask for, in seconds.
    max_duration: PositiveFloat = 30.0
    #: Longest prompt, in characters.
    max_prompt_len: PositiveInt = 100

    # --- Models --------------------------------------------------------------------------
    #: MusicGen and AudioGen checkpoints: a hub name or a local checkpoint directory.
    music_gen_model: str = "facebook/musicgen-small"
    audio_gen_model: str = "facebook/audiogen-medium"
    #: Where downloaded weights are cached (sets HF_HOME / AUDIOCRAFT_CACHE_DIR for workers).
    cache_model_dir: str | None = None
    #: ``auto`` uses CUDA when there is a GPU, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # --- Postgres (durable record of every request) ---------------------------------------
    #: A full SQLAlchemy URL wins over the POSTGRES_* parts when set.
    database_url: str | None = None
    postgres_host: str | None = None
    postgres_port: Port = 5432
    postgres_user: str = "postgres"
    postgres_password: str = ""
    postgres_db: str = "aimarket"

    # --- Redis (short-lived task state) --------------------------------------------------
    redis_host: str | None = None
    redis_port: Port = 6379
    redis_db_name: Annotated[int, msgspec.Meta(ge=0)] = 0
    redis_password: str | None = None
    #: How long finished results and intermediate state stay in Redis, in seconds.
    result_ttl: PositiveInt = 86_400

    # --- RabbitMQ (the queue between the API and the workers) ----------------------------
    rabbitmq_host: str | None = None
    rabbitmq_port: Port = 5672
    rabbitmq_vhost: str = "/"
    rabbitmq_user: str = "guest"
    rabbitmq_pass: str = "guest"  # noqa: S105  (RabbitMQ's own default, local only)

    # --- S3 (media) -------------------------------------------------------------------------
    #: Bucket for media (default "aimarket"). Setting it, S3_ENDPOINT_URL or AWS_ACCESS_KEY
    #: selects S3; with none of them, media is kept in DATA_DIR/media.
    s3_bucket: str | None = None
    #: For MinIO-style servers; empty means AWS itself. The bucket is created when missing.
    s3_endpoint_url: str | None = None
    #: Endpoint written into presigned URLs when clients reach S3 by another address than the
    #: services do (e.g. http://minio:9000 inside compose, https://media.example.com outside).
    s3_public_endpoint_url: str | None = None
    aws_region_name: str = "us-east-1"
    aws_access_key: str | None = None
    aws_secret_key: str | None = None
    #: Lifetime of the presigned media URLs handed to clients, in seconds.
    presigned_url_ttl: PositiveInt = 3600

    # --- Generation workers ----------------------------------------------------------------
    #: Most requests decoded together in one generate call (1 turns batching off). A GPU
    #: worker runs this many threads, so this many messages can wait to be batched.
    batch_max_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    #: How long a forming batch waits for its next request, in milliseconds: a lone request
    #: waits this long, a burst keeps the batch open while its requests keep coming.
    batch_max_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 50
    #: The longest a batch stays open, as a fraction of the last batch's decoding time (at
    #: least BATCH_MAX_WAIT_MS): the latency a burst may add to win a bigger batch.
    batch_window_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    #: Durations are padded within buckets of this many seconds (bounds wasted decoding).
    batch_bucket_s: PositiveFloat = 5.0
    #: Models one worker process keeps loaded; the least recently used is evicted beyond it.
    model_cache_size: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    #: The LM's number format. ``auto`` is audiocraft's own (float32 on CPU, float16 on CUDA);
    #: ``bf16`` keeps the LM's weights in bfloat16, which halves the bytes each decoding step
    #: reads (3.1x the throughput of float32 at batch 1 on an avx512_bf16 CPU, docs/benchmarks.md);
    #: ``fp32`` is CPU only, ``fp16`` CUDA only.
    model_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    # --- Embedded mode (what runs in-process when a backend above is not configured) --------
    #: Folder of the embedded SQLite database, media files and generated secrets.
    data_dir: str = "data"
    #: Base URL that links to local media start with (default http://127.0.0.1:APP_API_PORT).
    public_base_url: str | None = None
    #: Worker threads the API process runs when there is no RabbitMQ (default: BATCH_MAX_SIZE
    #: + 2, see :attr:`embedded_threads`).
    embedded_worker_threads: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None

    # --- Workflows and delivery ----------------------------------------------------------
    #: Extra folders of workflow YAML files, separated by commas.
    workflows_dirs: str = ""
    #: Extra Python modules to import for their stage actors, separated by commas (installed
    #: packages register theirs through the ``aimarket.stages`` entry point instead).
    actor_modules: str = ""
    #: Queues served by worker pools beyond the actors' own (e.g. ``musicgen-large``), so a
    #: workflow may route a stage there; separated by commas.
    extra_queues: str = ""
    #: Seconds a callback POST may take before it counts as failed (it is then retried).
    callback_timeout: PositiveFloat = 10.0
    #: Python logging level name.
    log_level: str = "INFO"
    #: ``json`` writes one JSON object per log line (time, level, logger, message, and the
    #: task_id, workflow, stage and user_id when known); ``text`` is for people.
    log_format: Literal["text", "json"] = "text"

    # --- Webhooks ------------------------------------------------------------------------
    #: Key that signs every callback (Standard Webhooks: ``whsec_`` + the key in base64).
    #: Unset with the embedded database: one is generated into DATA_DIR/webhook-secret.
    #: Required with a real database.
    webhook_secret: WebhookSecret | None = None
    #: Hosts and CIDR ranges (separated by commas) that callbacks may reach although they are
    #: loopback, link-local, private or reserved addresses (refused otherwise).
    callback_allowlist: str = ""
    #: The same for audio input URLs (``audio_prompt``, ``melody``), which workers fetch.
    audio_url_allowlist: str = ""
    #: When the terminal callback (succeeded, failed, cancelled) is tried, separated by commas:
    #: the first try at once (``0``), then each entry is the wait after a failed try (a network
    #: error, a 5xx or 429) before the next; after the last one it gives up. Units ``ms``,
    #: ``s``, ``m``, ``h`` (a bare number is seconds). The default is the schedule Svix
    #: documents for Standard Webhooks: 8 tries over about 27.6 hours.
    callback_retry_schedule: str = "0,5s,5m,30m,2h,5h,10h,10h"

    # --- Limits per user and back-pressure ------------------------------------------------
    #: Tasks one user may submit per minute (0: no limit), shared by every API process
    #: through Redis; a user over it gets 429 with Retry-After.
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 60
    #: Submissions a user may make at once on top of the steady rate.
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1)] = 10
    #: Tasks of one user that may be queued or running at the same time (0: no limit); over
    #: it, 429 with Retry-After.
    max_active_tasks_per_user: Annotated[int, msgspec.Meta(ge=0)] = 20
    #: Messages waiting in a queue a workflow uses beyond which new tasks of that workflow get
    #: 503 with Retry-After instead of waiting for hours (0: no bound).
    max_queue_depth: Annotated[int, msgspec.Meta(ge=0)] = 1000

    # --- Deadlines, sweep and admin --------------------------------------------------------
    #: Seconds a task may take from submission to its end, unless its workflow sets
    #: ``deadline_s``; past it the task ends ``failed`` with code ``timeout``.
    task_deadline_s: PositiveFloat = 3600.0
    #: Seconds between two sweeps for stuck tasks (past their deadline, or whose work is gone).
    sweep_interval_s: PositiveFloat = 60.0
    #: A task with no sign of work (no stage started or finished) for this long is resumed once
    #: (its messages were lost); a second time, it fails.
    stuck_after_s: PositiveFloat = 900.0
    #: Bearer token of the admin API (/v1/admin/...): dead letters, sweep. Unset: the admin
    #: API answers 403. Must differ from MARKETPLACE_TOKEN.
    admin_token: str | None = None

    @property
    def embedded_threads(self) -> int:
        """Worker threads of the embedded mode: EMBEDDED_WORKER_THREADS, or enough for a full
        batch to wait for the batcher while two more threads run the other stages."""
        return self.embedded_worker_threads or self.batch_max_size + 2

    @property
    def database_dsn(self) -> str | None:
        """The SQLAlchemy async URL, or None when no database is configured."""
        if self.database_url:
            return self.database_url
        if not self.postgres_host:
            return None
        auth = quote(self.postgres_user, safe="")
        if self.postgres_password:
            auth += ":" + quote(self.postgres_password, safe="")
        return (
            f"postgresql+asyncpg://{auth}@{self.postgres_host}:{self.postgres_port}"
            f"/{self.postgres_db}"
        )

    @property
    def rabbitmq_url(self) -> str | None:
        if not self.rabbitmq_host:
            return None
        vhost = quote(self.rabbitmq_vhost, safe="")
        user, password = quote(self.rabbitmq_user, safe=""), quote(self.rabbitmq_pass, safe="")
        return f"amqp://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"

    @property
    def redis_url(self) -> str | None:
        if not self.redis_host:
            return None
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db_name}"

    @property
    def callback_schedule_s(self) -> tuple[float, ...]:
        """CALLBACK_RETRY_SCHEDULE in seconds (see parse_schedule)."""
        return parse_schedule(self.callback_retry_schedule, "CALLBACK_RETRY_SCHEDULE")

    @property
    def extra_queue_names(self) -> list[str]:
        return [q.strip() for q in self.extra_queues.split(",") if q.strip()]

    @property
    def bucket(self) -> str:
        return self.s3_bucket or "aimarket"

    @property
    def s3_configured(self) -> bool:
        return bool(self.s3_bucket or self.s3_endpoint_url or self.aws_access_key)

    @property
    def extra_workflow_dirs(self) -> list[Path]:
        return [Path(p.strip()) for p in self.workflows_dirs.split(",") if p.strip()]

    def require(self, *names: str) -> None:
        """Stop with one clear message when any of these variables is unset."""
        for name in names:
            if getattr(self, name.lower()) in (None, ""):
                raise SettingsError(
                    f"{name} is required but not set (see .env.example for what it means)"
                )


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DELAY = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")


def parse_schedule(text: str, name: str) -> tuple[float, ...]:
    """``"0,5s,5m,2h"`` -> ``(0.0, 5.0, 300.0, 7200.0)``. The first entry is the first try,
    which is always at once: it must be 0. Raises SettingsError naming the variable."""
    delays: list[float] = []
    for entry in text.split(","):
        match = _DELAY.fullmatch(entry.strip())
        if match is None:
            raise SettingsError(
                f"{name} is invalid: {entry.strip()!r} is not a delay such as 0, 500ms, 5s, 5m "
                f"or 2h (got {text!r})"
            )
        delays.append(float(match[1]) * _UNITS[match[2] or "s"])
    if delays[0] != 0:
        raise SettingsError(
            f"{name} is invalid: it must start with 0, the first try (got {text!r})"
        )
    return tuple(delays)


_FIELD_NAMES = {name.upper() for name in Settings.__struct_fields__}
_PATH = re.compile(r"\$\.(\w+)")


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Read the settings: the process environment wins over the ``.env`` file.

    Empty values count as unset, as they do in most ``.env`` files.
    """
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    data = {k: v for k, v in values.items() if k in _FIELD_NAMES and v != ""}
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        name = match.group(1) if match else "a setting"
        reason = _PATH.sub("", text).replace(" - at ", "").strip(" -")
        raise SettingsError(f"{name} is invalid: {reason} (got {data.get(name)!r})") from None
    settings.callback_schedule_s  # noqa: B018  (checked at start-up, not at the first callback)
    return settings


@cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
