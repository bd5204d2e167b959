"""Settings: the original deployment's names and defaults, .env support, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, SettingsError, load_settings


def test_original_defaults() -> None:
    s = load_settings(environ={}, env_file=None)
    assert s.app_api_port == 8007
    assert s.max_duration == 30
    assert s.max_prompt_len == 100
    assert s.api_name == "AudioCraft"
    assert s.audio_gen_model == "facebook/audiogen-medium"
    assert s.music_gen_model == "facebook/musicgen-small"
    assert s.database_dsn is None
    assert s.rabbitmq_url is None


def test_original_env_file_keeps_working(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "APP_API_PORT=9001\nMAX_DURATION=12\nMAX_PROMPT_LEN=50\n"
        "POSTGRES_USER=app\nPOSTGRES_PASSWORD=p@ss:word\nPOSTGRES_DB=audio\nPOSTGRES_HOST=db\n"
        "RABBITMQ_HOST=mq\nRABBITMQ_VHOST=/\nRABBITMQ_USER=u\nRABBITMQ_PASS=p\nRABBITMQ_PORT=5673\n"
        "REDIS_HOST=cache\nREDIS_PORT=6380\nREDIS_DB_NAME=2\n"
        "AWS_REGION_NAME=eu-west-1\nAWS_ACCESS_KEY=ak\nAWS_SECRET_KEY=sk\n"
        "MARKETPLACE_TOKEN=t\nMARKETPLACE_CALLBACK=https://m.example/cb\n"
        "CACHE_MODEL_DIR=/models\nAPI_VERSION=2.0\nUNRELATED=ignored\nS3_ENDPOINT_URL=\n"
    )
    s = load_settings(environ={"MAX_DURATION": "20"}, env_file=env)
    assert s.app_api_port == 9001
    assert s.max_duration == 20  # the environment wins over the file
    assert s.max_prompt_len == 50
    assert s.database_dsn == "postgresql+asyncpg://app:p%40ss%3Aword@db:5432/audio"
    assert s.rabbitmq_url == "amqp://u:p@mq:5673/%2F"
    assert s.redis_url == "redis://cache:6380/2"
    assert s.s3_endpoint_url is None  # empty means unset
    assert s.marketplace_callback == "https://m.example/cb"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"APP_API_PORT": "abc"}, "APP_API_PORT"),
        ({"APP_API_PORT": "70000"}, "APP_API_PORT"),
        ({"MAX_DURATION": "-1"}, "MAX_DURATION"),
        ({"MAX_PROMPT_LEN": "0"}, "MAX_PROMPT_LEN"),
        ({"REDIS_DB_NAME": "one"}, "REDIS_DB_NAME"),
        ({"DEVICE": "tpu"}, "DEVICE"),
    ],
)
def test_invalid_setting_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env, env_file=None)
    assert str(info.value).startswith(f"{name} is invalid")
    assert repr(env[name]) in str(info.value)


def test_require_names_the_missing_variable() -> None:
    with pytest.raises(SettingsError, match=r"^MARKETPLACE_TOKEN is required"):
        Settings().require("MARKETPLACE_TOKEN")


def test_embedded_threads_follow_the_batch_size_unless_set() -> None:
    # A full batch can wait for the model while two threads run the other stages.
    assert load_settings({"BATCH_MAX_SIZE": "8"}, env_file=None).embedded_threads == 10
    assert load_settings({}, env_file=None).embedded_threads == 6
    explicit = {"BATCH_MAX_SIZE": "8", "EMBEDDED_WORKER_THREADS": "3"}
    assert load_settings(explicit, env_file=None).embedded_threads == 3
    assert load_settings({"EMBEDDED_WORKER_THREADS": ""}, env_file=None).embedded_threads == 6


def test_generation_settings_are_checked() -> None:
    assert load_settings({"MODEL_PRECISION": "bf16"}, env_file=None).model_precision == "bf16"
    for env, name in (
        ({"MODEL_PRECISION": "fp8"}, "MODEL_PRECISION"),
        ({"BATCH_WINDOW_FRACTION": "1.5"}, "BATCH_WINDOW_FRACTION"),
    ):
        with pytest.raises(SettingsError, match=name):
            load_settings(env, env_file=None)
