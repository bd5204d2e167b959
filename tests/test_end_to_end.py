"""The whole path, for real: HTTP API -> RabbitMQ -> worker -> S3 + Redis + Postgres ->
callback. The API and the worker are the `aimarket` commands, as an operator runs them."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import pytest
import soundfile as sf

from tests.conftest import Proc, Receiver, Stack


def submit(
    client: httpx.Client, workflow: str, user: str, receiver: Receiver, **inputs: Any
) -> str:
    response = client.post(
        "/v1/tasks",
        json={"workflow": workflow, "user_id": user, "input": inputs, "callback_url": receiver.url},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == f"/v1/tasks/{body['task_id']}"
    return str(body["task_id"])


@pytest.mark.parametrize(
    ("workflow", "duration", "sample_rate"),
    [("text2music", 1.5, 32000), ("text2sound", 1.0, 16000)],
)
def test_workflow_runs_to_a_downloadable_wav(
    stack_client: httpx.Client,
    receiver: Receiver,
    stack: Stack,
    workflow: str,
    duration: float,
    sample_rate: int,
) -> None:
    user = f"user-{uuid.uuid4().hex[:6]}"
    task_id = submit(
        stack_client, workflow, user, receiver, prompt="warm lofi piano", duration=duration
    )

    called = receiver.wait_for(task_id)
    assert called["status"] == "succeeded", (called, stack.output())

    task = stack_client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "succeeded"
    assert task["workflow"] == workflow
    assert task["user_id"] == user
    assert task["input"]["prompt"] == "warm lofi piano"
    assert task["input"]["duration"] == duration
    assert task["input"]["format"] == "wav"  # the schema's defaults are filled in
    assert task["started_at"]
    assert task["finished_at"]
    assert task["error"] is None
    outputs = {o["name"]: o for o in task["outputs"]}
    assert set(outputs) == {"audio", "waveform", "spectrogram"}
    output = outputs["audio"]
    assert output["content_type"] == "audio/wav"
    assert output["sample_rate"] == sample_rate
    assert output["duration_s"] == pytest.approx(duration, abs=0.05)

    # The presigned URL is fetched with a plain HTTP client, no credentials.
    media = httpx.get(output["url"], timeout=30)
    assert media.status_code == 200
    assert len(media.content) == output["size_bytes"]
    info = sf.info(io.BytesIO(media.content))
    assert info.samplerate == sample_rate
    assert info.duration == pytest.approx(duration, abs=0.05)
    # The pictures rendered by the visualize stage are real PNGs beside the audio.
    for name in ("waveform", "spectrogram"):
        picture = httpx.get(outputs[name]["url"], timeout=30)
        assert picture.status_code == 200
        assert picture.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert outputs[name]["content_type"] == "image/png"
        assert outputs[name]["duration_s"] is None
    # The callback carried the same view (a fresh presigned URL for the same object).
    assert called["outputs"][0]["size_bytes"] == output["size_bytes"]

    stats = stack_client.get("/v1/stats", params={"user_id": user}).json()
    [row] = stats["workflows"]
    assert row["workflow"] == workflow
    assert row["counts"] == {"succeeded": 1}
    assert row["audio_seconds"] == pytest.approx(duration, abs=0.05)
    assert row["avg_processing_s"] > 0


def test_failing_stage_ends_failed_and_calls_back(
    stack_client: httpx.Client, receiver: Receiver, stack: Stack
) -> None:
    user = f"user-{uuid.uuid4().hex[:6]}"
    task_id = submit(stack_client, "broken-model", user, receiver, prompt="anything")

    called = receiver.wait_for(task_id)
    assert called["status"] == "failed", stack.output()
    assert called["error"]["code"] == "model_unavailable"
    assert "/nonexistent/aimarket-test-checkpoint" in called["error"]["message"]

    task = stack_client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "failed"
    assert task["outputs"] == []
    assert task["error"]["code"] == "model_unavailable"
    assert task["finished_at"] is not None

    stats = stack_client.get("/v1/stats", params={"user_id": user}).json()
    assert stats["workflows"][0]["counts"] == {"failed": 1}
    assert stats["workflows"][0]["audio_seconds"] == 0


def test_both_workflows_counted_per_user(
    stack_client: httpx.Client, receiver: Receiver, stack: Stack
) -> None:
    user = f"user-{uuid.uuid4().hex[:6]}"
    ids = [
        submit(stack_client, "text2music", user, receiver, prompt="drums", duration=0.5),
        submit(stack_client, "text2sound", user, receiver, prompt="rain", duration=0.5),
        submit(stack_client, "text2sound", user, receiver, prompt="wind", duration=0.5),
    ]
    for task_id in ids:
        assert receiver.wait_for(task_id)["status"] == "succeeded", stack.output()
    stats = stack_client.get("/v1/stats", params={"user_id": user}).json()
    rows = {row["workflow"]: row for row in stats["workflows"]}
    assert rows["text2music"]["counts"] == {"succeeded": 1}
    assert rows["text2sound"]["counts"] == {"succeeded": 2}
    assert rows["text2sound"]["total"] == 2
    assert rows["text2sound"]["audio_seconds"] == pytest.approx(1.0, abs=0.05)
    # Another user sees none of it.
    other = stack_client.get("/v1/stats", params={"user_id": user + "-other"}).json()
    assert other["workflows"] == []


def test_without_callback_url_the_marketplace_callback_is_used(
    stack_client: httpx.Client, receiver: Receiver, stack: Stack
) -> None:
    response = stack_client.post(
        "/v1/tasks",
        json={"workflow": "text2sound", "user_id": "u-default", "input": {"prompt": "door"}},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["input"]["duration"] == 5.0  # the schema's default
    called = receiver.wait_for(body["task_id"])
    assert called["status"] == "succeeded", stack.output()
    assert called["_path"] == "/hook?default=1"
    assert called["outputs"][0]["duration_s"] == pytest.approx(5.0, abs=0.05)


def test_stats_time_window(stack_client: httpx.Client, receiver: Receiver, stack: Stack) -> None:
    user = f"user-{uuid.uuid4().hex[:6]}"
    task_id = submit(stack_client, "text2music", user, receiver, prompt="harp", duration=0.5)
    receiver.wait_for(task_id)
    created = stack_client.get(f"/v1/tasks/{task_id}").json()["created_at"]
    inside = stack_client.get("/v1/stats", params={"user_id": user, "from": created}).json()
    assert inside["workflows"][0]["counts"] == {"succeeded": 1}
    before = stack_client.get("/v1/stats", params={"user_id": user, "to": created}).json()
    assert before["workflows"] == []  # `to` is exclusive


def test_result_is_kept_in_redis_with_a_ttl(
    client: httpx.Client, receiver: Receiver, worker: Proc, service_env: dict[str, str]
) -> None:
    import msgspec
    import redis

    task_id = submit(client, "text2music", "u-redis", receiver, prompt="bells", duration=0.5)
    assert receiver.wait_for(task_id)["status"] == "succeeded"
    r = redis.Redis(host="127.0.0.1", port=6379, db=int(service_env["REDIS_DB_NAME"]))
    key = f"aimarket:task:{task_id}"
    result = msgspec.json.decode(r.hget(key, "result"))
    assert result["status"] == "succeeded"
    keys = {o["key"] for o in result["outputs"]}
    assert keys == {
        f"tasks/{task_id}/audio-0.wav",
        f"tasks/{task_id}/waveform-0.png",
        f"tasks/{task_id}/spectrogram-0.png",
    }
    assert 0 < r.ttl(key) <= 86_400
    stages = {k.decode() for k in r.hkeys(key)}
    assert {"stage:validate", "stage:generate", "stage:visualize", "stage:store"} <= stages
    # The audio handed from generate to store is gone once stored.
    assert not r.keys(f"aimarket:blob:{task_id}:*")


def test_soundtrack_mixes_parallel_music_and_effects(
    stack_client: httpx.Client, receiver: Receiver, stack: Stack
) -> None:
    task_id = submit(
        stack_client,
        "soundtrack",
        "u-soundtrack",
        receiver,
        music_prompt="slow strings",
        sfx_prompt="thunder",
        duration=1.5,
        sfx_level=0.3,
    )
    called = receiver.wait_for(task_id)
    assert called["status"] == "succeeded", stack.output()
    task = stack_client.get(f"/v1/tasks/{task_id}").json()
    stages = task["stages"]
    for stage in ("music", "sfx", "mix", "visualize", "store", "aggregate"):
        assert stages[stage]["status"] == "succeeded", stage
    [mixed] = stages["mix"]["output"]["media"]
    assert mixed["sample_rate"] == 32000  # AudioGen's 16 kHz effects were resampled
    outputs = {o["name"]: o for o in task["outputs"]}
    assert set(outputs) == {"audio", "waveform", "spectrogram"}
    info = sf.info(io.BytesIO(httpx.get(outputs["audio"]["url"], timeout=30).content))
    assert info.samplerate == 32000
    assert info.duration == pytest.approx(1.5, abs=0.05)


def test_variations_fan_out_with_reproducible_seeds(
    stack_client: httpx.Client, receiver: Receiver, stack: Stack
) -> None:
    def takes(seed: int) -> list[bytes]:
        task_id = submit(
            stack_client,
            "variations",
            "u-var",
            receiver,
            prompt="jazz",
            duration=0.5,
            takes=3,
            seed=seed,
        )
        assert receiver.wait_for(task_id)["status"] == "succeeded", stack.output()
        task = stack_client.get(f"/v1/tasks/{task_id}").json()
        assert task["stages"]["takes"]["items"] == 3
        audio = [o for o in task["outputs"] if o["name"] == "audio"]
        assert [o["duration_s"] for o in audio] == [0.5, 0.5, 0.5]
        assert len([o for o in task["outputs"] if o["name"] == "spectrogram"]) == 3
        return [httpx.get(o["url"], timeout=30).content for o in audio]

    first = takes(seed=7)
    assert len(set(first)) == 3  # three different takes
    assert takes(seed=7) == first  # the same seeds give the same audio


def test_variations_limits_takes(stack_client: httpx.Client, stack: Stack) -> None:
    response = stack_client.post(
        "/v1/tasks",
        json={"workflow": "variations", "user_id": "u", "input": {"prompt": "x", "takes": 9}},
    )
    assert response.status_code == 422
    assert response.json()["field"] == "input.takes"


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension", "sf_format"),
    [("mp3", "audio/mpeg", "mp3", "MP3"), ("flac", "audio/flac", "flac", "FLAC")],
)
def test_text2music_in_another_format_and_normalised(
    stack_client: httpx.Client,
    receiver: Receiver,
    stack: Stack,
    fmt: str,
    content_type: str,
    extension: str,
    sf_format: str,
    request: pytest.FixtureRequest,
) -> None:
    import numpy as np
    import pyloudnorm

    task_id = submit(
        stack_client,
        "text2music",
        f"user-{uuid.uuid4().hex[:6]}",
        receiver,
        prompt="warm lofi piano",
        duration=1.5,
        format=fmt,
        loudness_lufs=-16,
    )
    called = receiver.wait_for(task_id)
    assert called["status"] == "succeeded", (called, stack.output())

    task = stack_client.get(f"/v1/tasks/{task_id}").json()
    assert task["input"]["format"] == fmt
    assert task["input"]["loudness_lufs"] == -16
    outputs = {o["name"]: o for o in task["outputs"]}
    audio = outputs["audio"]
    assert audio["content_type"] == content_type
    assert audio["sample_rate"] == 32000
    assert audio["duration_s"] == pytest.approx(1.5, abs=0.06)
    assert outputs["waveform"]["content_type"] == "image/png"  # pictures are untouched

    media = httpx.get(audio["url"], timeout=30)
    assert media.status_code == 200
    assert media.headers["content-type"].startswith(content_type)
    assert len(media.content) == audio["size_bytes"]
    info = sf.info(io.BytesIO(media.content))
    assert info.format == sf_format
    assert info.samplerate == 32000
    samples, rate = sf.read(io.BytesIO(media.content), dtype="float64", always_2d=True)
    assert samples.shape[0] / rate == pytest.approx(1.5, abs=0.06)
    assert samples.shape[0] / rate == pytest.approx(audio["duration_s"], abs=0.001)
    # Normalised to the requested loudness (or less, if the peak ceiling held it back).
    loudness = pyloudnorm.Meter(rate).integrated_loudness(samples)
    assert loudness <= -16 + 0.5
    assert np.max(np.abs(samples)) <= 1.0

    if stack.mode == "services":
        import msgspec
        import redis

        r = redis.Redis(host="127.0.0.1", port=6379, db=request.getfixturevalue("redis_db"))
        result = msgspec.json.decode(r.hget(f"aimarket:task:{task_id}", "result"))
        [stored] = [o for o in result["outputs"] if o["name"] == "audio"]
        assert stored["key"] == f"tasks/{task_id}/audio-0.{extension}"
        assert stored["loudness"]["target_lufs"] == -16
        assert stored["loudness"]["loudness_lufs_after"] == pytest.approx(loudness, abs=0.05)
        if not stored["loudness"]["peak_limited"]:
            assert loudness == pytest.approx(-16, abs=0.5)
