"""Start-up: a broken deployment refuses to start with one clear line; the API process
never imports torch; readiness names the backend that is down."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from core.settings import load_settings
from core.storage import MediaStore
from tests.conftest import BIN, ROOT, Api, free_port, serve, start, stop


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "aimarket"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_without_token_names_the_variable(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in service_env.items() if k != "MARKETPLACE_TOKEN"}
    result = run_cli(["serve", "--port", str(free_port())], env, tmp_path)
    assert result.returncode == 2
    assert "MARKETPLACE_TOKEN is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_in_dotenv_stops_start_up(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("MAX_DURATION=forever\n")
    env = {k: v for k, v in service_env.items() if k != "MAX_DURATION"}
    result = run_cli(["serve"], env, tmp_path)
    assert result.returncode == 2
    assert "MAX_DURATION is invalid" in result.stderr


def test_broken_workflow_stops_start_up_with_file_and_line(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "flows"
    broken.mkdir()
    (broken / "unknown-actor.yaml").write_text(
        (ROOT / "tests" / "workflows_broken" / "unknown-actor.yaml").read_text()
    )
    env = {**service_env, "WORKFLOWS_DIRS": str(broken)}
    for args in (["serve", "--port", str(free_port())], ["workflows", "validate"]):
        result = run_cli(args, env, tmp_path)
        assert result.returncode != 0
        output = result.stderr + result.stdout
        assert f"{broken / 'unknown-actor.yaml'}:" in output
        assert "unknown-actor" in output
        assert "Traceback" not in output


def test_validate_json_format(service_env: dict[str, str], tmp_path: Path) -> None:
    import json

    target = ROOT / "tests" / "workflows_broken" / "many-errors.yaml"
    result = run_cli(
        ["workflows", "validate", "--format", "json", str(target)], service_env, tmp_path
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    codes = {d["code"] for d in report["diagnostics"]}
    assert {"unknown-actor", "duplicate-stage", "wrong-type"} <= codes
    assert all(d["line"] > 0 and d["column"] > 0 for d in report["diagnostics"])


def test_api_process_does_not_load_torch(api: Api) -> None:
    # The API must stay light: torch and audiocraft belong to the generation workers only.
    maps = Path(f"/proc/{api.proc.proc.pid}/maps").read_text()
    assert "libtorch" not in maps
    assert "/audiocraft/" not in maps
    assert "/torch/" not in maps


def test_ready_is_503_and_names_the_backend_that_is_down(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    dead = str(free_port())  # nothing listens there
    env = {**service_env, "REDIS_PORT": dead}
    proc = start(
        [str(BIN / "aimarket"), "serve", "--port", str(port)], env, tmp_path / "api.log", tmp_path
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                response = httpx.get(url + "/health/ready", timeout=10)
                break
            except httpx.HTTPError:
                if proc.proc.poll() is not None:
                    pytest.fail(proc.output())
                import time

                time.sleep(0.1)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "down: redis"
        assert body["checks"]["redis"].startswith("down")
        assert body["checks"]["database"] == "ok"
        assert httpx.get(url + "/health/live").status_code == 200
    finally:
        stop(proc)


def test_worker_without_rabbitmq_explains_embedded_mode(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = run_cli(["worker"], env, tmp_path)
    assert result.returncode == 2
    assert "RABBITMQ_HOST is not set" in result.stderr
    assert "embedded mode" in result.stderr


def test_importing_the_api_registers_no_actor_before_the_broker_is_set() -> None:
    # An actor module imported before setup_broker() would register on Dramatiq's default
    # broker, and the real one (embedded or RabbitMQ) would not know that actor.
    code = (
        "import sys, api.app, aimarket.app, aimarket.cli; "
        "mods = [m for m in ('actors.lifecycle', 'actors.generate', 'actors.dag', 'actors.all') "
        "if m in sys.modules]; print(mods)"
    )
    result = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_serve_creates_its_bucket_in_another_region(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    bucket = f"eu-{uuid.uuid4().hex[:8]}"
    env = {**service_env, "AWS_REGION_NAME": "eu-west-1", "S3_BUCKET": bucket}
    api = serve(env, tmp_path)
    try:
        client = MediaStore(load_settings(env, env_file=None)).client
        assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
    finally:
        stop(api.proc)


def test_serve_without_its_media_store_stops_in_one_line(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**service_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    result = run_cli(["serve", "--port", str(free_port())], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "S3 bucket 'aimarket-test'" in lines[0]
    assert "check S3_ENDPOINT_URL" in lines[0]


def test_a_max_duration_under_the_builtin_defaults_still_serves(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**service_env, "MAX_DURATION": "5"}
    result = run_cli(["workflows", "validate"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note default-clamped" in result.stdout
    assert "it becomes 5" in result.stdout
    api = serve(env, tmp_path)
    try:
        headers = {"authorization": f"Bearer {env['MARKETPLACE_TOKEN']}"}
        listed = httpx.get(api.url + "/v1/workflows", headers=headers).json()["workflows"]
        music = next(w for w in listed if w["name"] == "text2music")
        duration = music["input_schema"]["properties"]["duration"]
        assert (duration["default"], duration["maximum"]) == (5, 5)
    finally:
        stop(api.proc)
