"""Static checks of the deployment files: compose.yml, Containerfile and .env.example.

Nothing here builds or starts a container; the checks fail when these files drift away from
each other or from ``core.settings.Settings``.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yml"
CONTAINERFILE = ROOT / "Containerfile"
ENV_EXAMPLE = ROOT / ".env.example"

FIELDS = {name.upper() for name in Settings.__struct_fields__}
INFRA_SERVICES = {"rabbitmq", "redis", "postgres", "minio"}
APP_SERVICES = {"migrate", "api", "worker", "worker-musicgen", "worker-audiogen"}
GPU_WORKERS = {"worker-musicgen": "musicgen", "worker-audiogen": "audiogen"}
WIRING = {"RABBITMQ_HOST", "REDIS_HOST", "POSTGRES_HOST", "S3_ENDPOINT_URL", "MARKETPLACE_TOKEN"}
#: .env.example values that point at local services instead of being Settings' defaults.
LOCAL_VALUES = {
    "POSTGRES_HOST", "REDIS_HOST", "RABBITMQ_HOST", "S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "MARKETPLACE_TOKEN", "S3_BUCKET",
}  # fmt: skip
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, ${NAME:+alt}
BRACED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?[^}]*\}")
BARE = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): v for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def queues(service: dict[str, Any]) -> set[str]:
    cmd = command(service)
    assert cmd[0] == "worker", cmd
    assert "--queues" in cmd, cmd
    return set(cmd[cmd.index("--queues") + 1].split(","))


def instructions() -> list[tuple[str, str]]:
    """The Containerfile as (INSTRUCTION, arguments), continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Containerfile ends inside a continued line"
    result = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def arguments(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


# --- compose.yml -----------------------------------------------------------------------------


def test_compose_has_no_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_compose_names_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= INFRA_SERVICES | APP_SERVICES


def test_app_services_share_the_image(services: dict[str, dict[str, Any]]) -> None:
    image = services["api"]["image"]
    assert {name for name, s in services.items() if s.get("image") == image} == APP_SERVICES
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build["dockerfile"] == "Containerfile", name
        assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_environment(services: dict[str, dict[str, Any]], name: str) -> None:
    env = environment(services[name])
    assert env.keys() >= WIRING, WIRING - env.keys()
    unknown = env.keys() - FIELDS
    assert not unknown, f"{name} sets variables that are no setting: {unknown}"
    assert all(isinstance(v, str) for v in env.values()), "quote environment values"
    assert env["RABBITMQ_HOST"] == "rabbitmq"
    assert env["REDIS_HOST"] == "redis"
    assert env["POSTGRES_HOST"] == "postgres"
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env.get("DATABASE_URL", "") == ""
    assert env["MARKETPLACE_TOKEN"].startswith("${MARKETPLACE_TOKEN:?")
    assert {"path": ".env", "required": False} in services[name]["env_file"]


def test_app_environment_is_the_same_everywhere(services: dict[str, dict[str, Any]]) -> None:
    base = environment(services["api"])
    for name in APP_SERVICES:
        env = environment(services[name])
        extra = {k: v for k, v in env.items() if base.get(k) != v}
        assert set(extra) <= {"DEVICE"}, f"{name} differs from api: {extra}"


def test_servers_and_app_share_credentials(services: dict[str, dict[str, Any]]) -> None:
    app = environment(services["api"])
    pairs = {
        ("postgres", "POSTGRES_USER"): "POSTGRES_USER",
        ("postgres", "POSTGRES_PASSWORD"): "POSTGRES_PASSWORD",
        ("postgres", "POSTGRES_DB"): "POSTGRES_DB",
        ("rabbitmq", "RABBITMQ_DEFAULT_USER"): "RABBITMQ_USER",
        ("rabbitmq", "RABBITMQ_DEFAULT_PASS"): "RABBITMQ_PASS",
        ("minio", "MINIO_ROOT_USER"): "AWS_ACCESS_KEY",
        ("minio", "MINIO_ROOT_PASSWORD"): "AWS_SECRET_KEY",
    }
    for (server, server_var), app_var in pairs.items():
        assert environment(services[server])[server_var] == app[app_var], (server, server_var)


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_generation_workers_reserve_a_gpu(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d["capabilities"]
        and (d.get("count") == 1 or d.get("device_ids"))
        for d in devices
    ), devices  # fmt: skip
    assert queues(service) == {GPU_WORKERS[name]}
    assert environment(service)["DEVICE"] == "cuda"
    assert "models:/models" in service["volumes"]


def test_model_cache_is_where_the_image_looks(services: dict[str, dict[str, Any]]) -> None:
    image_env = " ".join(arguments("ENV"))
    assert "HF_HOME=/models" in image_env
    assert environment(services["api"])["CACHE_MODEL_DIR"] == "/models"


def test_cpu_worker_takes_the_other_queues(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert queues(worker) == {"default", "callbacks"}
    assert "deploy" not in worker
    assert not queues(worker) & set(GPU_WORKERS.values())


def test_every_queue_has_a_worker(services: dict[str, dict[str, Any]]) -> None:
    from core.queues import ALL_QUEUES, GPU_QUEUES

    consumed = {name: queues(s) for name, s in services.items() if command(s)[:1] == ["worker"]}
    assert set().union(*consumed.values()) >= set(ALL_QUEUES)
    for name, names in consumed.items():
        assert (names <= GPU_QUEUES) == ("deploy" in services[name]), f"{name}: GPU iff GPU queues"


def test_api_waits_for_migrations(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert command(migrate) == ["db", "upgrade"]
    assert migrate["restart"] == "no"  # the string: a bare `no` would load as False
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    api = services["api"]
    assert command(api)[:1] == ["serve"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for infra in ("rabbitmq", "redis", "minio"):
        assert api["depends_on"][infra]["condition"] == "service_healthy"
    assert any(str(p).endswith(f":{Settings().app_api_port}") for p in api["ports"])


def test_healthy_conditions_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, dep in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if dep["condition"] == "service_healthy":
                check = services[target].get("healthcheck")
                assert check, f"{target} has no healthcheck"
                assert not check.get("disable"), f"{target} disables its healthcheck"


def test_non_http_app_services_disable_the_image_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_SERVICES - {"api"}:
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_interpolations_have_defaults_or_are_documented() -> None:
    text = COMPOSE.read_text().replace("$$", "")
    documented = set(dotenv_values(ENV_EXAMPLE))
    braced = list(BRACED.finditer(text))
    assert braced, "compose.yml interpolates nothing?"
    for match in braced:
        name, op = match["name"], match["op"]
        assert op or name in documented, f"${{{name}}} has no default and is not in .env.example"
    bare = {m["name"] for m in BARE.finditer(BRACED.sub("", text))}
    assert bare <= documented, f"undocumented bare interpolations: {bare - documented}"


# --- .env.example ----------------------------------------------------------------------------


def test_env_example_documents_every_setting() -> None:
    keys = set(dotenv_values(ENV_EXAMPLE))
    assert keys == FIELDS, {"missing": FIELDS - keys, "unknown": keys - FIELDS}


def test_env_example_comments_every_variable() -> None:
    previous = ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"[A-Z_]+=", line):
            assert previous.startswith("#"), f"no comment above {line}"
        previous = line


def test_env_example_loads() -> None:
    settings = load_settings(environ={}, env_file=ENV_EXAMPLE)
    assert settings.marketplace_token == "change-me"
    assert settings.database_dsn == "postgresql+asyncpg://postgres@127.0.0.1:5432/aimarket"
    assert settings.rabbitmq_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    defaults = Settings()
    for field in Settings.__struct_fields__:
        if field.upper() not in LOCAL_VALUES:
            assert getattr(settings, field) == getattr(defaults, field), field


# --- Containerfile ---------------------------------------------------------------------------


def test_containerfile_entrypoint_and_command() -> None:
    (entrypoint,) = arguments("ENTRYPOINT")
    assert json.loads(entrypoint) == ["aimarket"]
    (cmd,) = arguments("CMD")
    assert json.loads(cmd) == ["serve", "--host", "0.0.0.0"]


def test_containerfile_exposes_the_api_port() -> None:
    (expose,) = arguments("EXPOSE")
    assert int(expose.split("/")[0]) == Settings().app_api_port


def test_containerfile_installs_from_the_lock() -> None:
    syncs = [args for args in arguments("RUN") if "uv sync" in args]
    assert len(syncs) == 2
    assert all("uv sync --frozen" in s and "--no-dev" in s for s in syncs)
    assert "--no-install-project" in syncs[0]
    assert "--no-install-project" not in syncs[1]
    # Dependencies are installed before any source is copied, so they stay cached.
    order = [(kw, args) for kw, args in instructions() if kw in ("COPY", "RUN")]
    first_sync = order.index(("RUN", syncs[0]))
    copied_before = [args for kw, args in order[:first_sync] if kw == "COPY"]
    assert copied_before[-1].split() == ["pyproject.toml", "uv.lock", "./"]
    (uv_image,) = [a for a in arguments("COPY") if a.startswith("--from=ghcr.io/astral-sh/uv")]
    assert re.match(r"--from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ ", uv_image), "pin uv"


def test_containerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copies = [a.split() for a in arguments("COPY") if not a.startswith("--")]
    for package in packages:
        assert [package, f"./{package}"] in copies, f"Containerfile does not copy {package}/"
    sources = [src for parts in copies for src in parts[:-1]]
    assert pyproject["project"]["readme"] in sources
    # `aimarket db upgrade` runs Alembic inside the image.
    assert "alembic" in sources
    if (ROOT / "alembic.ini").exists():
        assert "alembic.ini" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"Containerfile copies missing {src}"


def test_containerfile_runtime() -> None:
    (user,) = arguments("USER")
    assert user not in ("root", "0")
    env = " ".join(arguments("ENV"))
    assert "PATH=/app/.venv/bin:$PATH" in env
    (health,) = arguments("HEALTHCHECK")
    assert "/health/live" in health
    assert "python" in health
    assert "APP_API_PORT" in health
