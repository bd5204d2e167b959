"""Input audio: the `audio` input type, POST /v1/uploads, fetching and decoding, continuation
and melody generation (issue 5 §3)."""

from __future__ import annotations

import asyncio
import http.server
import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from api.uploads import MAX_UPLOAD_BYTES
from audio.audio_input import MAX_AUDIO_BYTES, decode_audio, fetch_audio
from core.errors import StageError
from core.settings import Settings
from tests.conftest import TOKEN, Api, Receiver, free_port
from workflows.inputs import InputError, input_json_schema, validate_input
from workflows.loader import check_file


def wav_bytes(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    n = int(seconds * rate)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
    data = np.repeat(tone[:, None], channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# --- the `audio` input type ------------------------------------------------------------------

AUDIO_WORKFLOW = """
name: takes-audio
version: 1
input:
  clip: {type: audio, description: Some audio.}
  backing: {type: audio, default: "upload:abc"}
stages:
  - {id: generate, actor: audio.musicgen}
"""


def test_audio_input_type_checks_the_form_only(tmp_path: Path) -> None:
    path = tmp_path / "takes-audio.yaml"
    path.write_text(AUDIO_WORKFLOW)
    workflow, diagnostics = check_file(path, {"audio.musicgen": "musicgen"}, Settings())
    assert diagnostics == []
    assert workflow is not None
    assert workflow.input["clip"].type == "audio"

    ok = ["upload:0f3a", "https://example.com/a.wav", "http://127.0.0.1:8000/x?y=1"]
    for ref in ok:
        assert validate_input(workflow, {"clip": ref})["clip"] == ref
    assert validate_input(workflow, {"clip": ok[0]})["backing"] == "upload:abc"
    for bad in ["ftp://example.com/a.wav", "https:///a.wav", "upload:", "upload:../x", "a.wav"]:
        with pytest.raises(InputError) as exc:
            validate_input(workflow, {"clip": bad})
        assert exc.value.field == "input.clip"
        assert "upload id" in exc.value.message
    with pytest.raises(InputError, match="at most 2000 characters"):
        validate_input(workflow, {"clip": "https://example.com/" + "a" * 2000})
    with pytest.raises(InputError, match="must be a string"):
        validate_input(workflow, {"clip": 3})
    schema = input_json_schema(workflow)["properties"]["clip"]
    assert schema["type"] == "string"
    assert schema["maxLength"] == 2000
    assert "pattern" in schema


def test_audio_fields_take_no_limits_and_a_well_formed_default(tmp_path: Path) -> None:
    path = tmp_path / "takes-audio.yaml"
    path.write_text(
        AUDIO_WORKFLOW.replace("Some audio.}", "Some audio., max_length: 10}").replace(
            '"upload:abc"', '"file:///etc/passwd"'
        )
    )
    workflow, diagnostics = check_file(path, {"audio.musicgen": "musicgen"}, Settings())
    assert workflow is None
    assert sorted(d.code for d in diagnostics) == ["bad-default", "not-for-type"]


# --- decoding ----------------------------------------------------------------------------


def test_decode_audio_limits() -> None:
    samples, rate = decode_audio(wav_bytes(0.5, 8000, channels=2))
    assert (samples.shape, rate, samples.dtype) == ((2, 4000), 8000, np.float32)
    many = decode_audio(wav_bytes(0.1, 8000, channels=4))[0]
    assert many.shape == (1, 800)  # more than 2 channels are mixed down
    with pytest.raises(StageError) as exc:
        decode_audio(b"RIFF....WAVEfmt definitely not audio")
    assert exc.value.code == "not_audio"
    with pytest.raises(StageError) as exc:
        decode_audio(wav_bytes(2.0, 8000), max_seconds=1.0)
    assert exc.value.code == "audio_too_long"


# --- URLs --------------------------------------------------------------------------------

#: Paths the audio server was asked for.
SERVED: list[str] = []


@pytest.fixture(scope="module")
def audio_server() -> Iterator[str]:
    """Serves /clip.wav (1 s), /redirect (302), /big (over the cap) and 404 on loopback."""
    clip = wav_bytes(1.0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            SERVED.append(self.path)
            if self.path == "/clip.wav":
                self.send_response(200)
                self.send_header("content-type", "audio/wav")
                self.send_header("content-length", str(len(clip)))
                self.end_headers()
                self.wfile.write(clip)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("location", "/clip.wav")
                self.send_header("content-length", "0")
                self.end_headers()
            elif self.path == "/big":
                self.send_response(200)
                self.end_headers()  # no length: the cap is found while streaming
                chunk = b"\0" * 65536
                try:
                    for _ in range(MAX_AUDIO_BYTES // len(chunk) + 2):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            else:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def worker_resources(allowlist: str) -> Any:
    """What fetch_audio reads of a worker's resources: the settings."""
    return SimpleNamespace(settings=Settings(audio_url_allowlist=allowlist), store=None)


def test_fetch_audio_from_a_url(audio_server: str) -> None:
    res = worker_resources("127.0.0.1")
    samples, rate = asyncio.run(fetch_audio(audio_server + "/clip.wav", res))
    assert (samples.shape, rate) == ((1, 16000), 16000)
    for path in ("/redirect", "/missing", "/big"):
        with pytest.raises(StageError) as exc:
            asyncio.run(fetch_audio(audio_server + path, res))
        assert exc.value.code == "audio_unavailable", path


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/clip.wav",  # loopback
        "http://localhost:{port}/clip.wav",  # a name that resolves to loopback (/etc/hosts)
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://10.0.0.7/clip.wav",  # a private range
        "http://[::1]:{port}/clip.wav",
    ],
)
def test_audio_urls_to_non_public_addresses_are_refused_before_any_connection(
    url: str, audio_server: str
) -> None:
    port = audio_server.rsplit(":", 1)[1]
    SERVED.clear()
    with pytest.raises(StageError) as exc:
        # Not allow-listed: refused by the check, before a connection is opened (none of these
        # addresses but loopback exists here; the loopback server would answer a fetch).
        asyncio.run(fetch_audio(url.format(port=port), worker_resources("")))
    assert exc.value.code == "audio_unavailable"
    assert "AUDIO_URL_ALLOWLIST" in exc.value.message
    assert SERVED == []  # the loopback server, reachable, was never asked


# --- continuation and melody on the tiny checkpoint ---------------------------------------


def test_generate_continuation_keeps_the_prompt(tiny_models: dict[str, Path]) -> None:
    from audio import audio_models

    prompt, _ = decode_audio(wav_bytes(1.0, 16000))
    steps: list[tuple[int, int]] = []
    audio = audio_models.generate_continuation(
        "musicgen",
        str(tiny_models["musicgen"]),
        prompt,
        16000,
        ["piano"],
        1.5,
        "cpu",
        seed=7,
        progress=lambda done, total: steps.append((done, total)),
    )
    assert audio.sample_rate == 32000
    assert audio.samples.shape[:2] == (1, 1)
    assert audio.duration_s == pytest.approx(2.5, abs=0.05)  # the prompt, then 1.5 s more
    assert steps
    assert steps[-1][0] == steps[-1][1]


def test_one_frame_continues_a_prompt_that_ends_mid_frame(tiny_models: dict[str, Path]) -> None:
    """EnCodec pads such a prompt to a whole frame; counted in seconds, it plus one frame of
    new audio came to no new frame, and audiocraft failed an assertion."""
    from audio import audio_models

    prompt, _ = decode_audio(wav_bytes(1.01, 16000))
    audio = audio_models.generate_continuation(
        "musicgen", str(tiny_models["musicgen"]), prompt, 16000, ["piano"], 0.02, "cpu", seed=7
    )
    assert audio.duration_s == pytest.approx(1.03, abs=0.02)  # within a frame


def test_generate_melody_needs_a_melody_checkpoint(tiny_models: dict[str, Path]) -> None:
    from audio import audio_models

    melody, _ = decode_audio(wav_bytes(1.0, 16000))
    with pytest.raises(audio_models.ModelUnsupported, match="melody"):
        audio_models.generate_melody(
            "musicgen", str(tiny_models["musicgen"]), melody, 16000, ["x"], 1.0, "cpu"
        )


# --- the API, embedded mode ----------------------------------------------------------------


@pytest.fixture
def api_client(embedded_api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=embedded_api.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60
    ) as client:
        yield client


def upload(client: httpx.Client, data: bytes, content_type: str = "audio/wav") -> httpx.Response:
    return client.post("/v1/uploads", content=data, headers={"content-type": content_type})


def test_upload_endpoint(api_client: httpx.Client, embedded_api: Api) -> None:
    good = upload(api_client, wav_bytes(1.0, 22050, channels=2))
    assert good.status_code == 201, good.text
    body = good.json()
    assert body["upload_id"].startswith("upload:")
    assert body["duration_s"] == pytest.approx(1.0, abs=0.01)
    assert body["sample_rate"] == 22050

    not_audio = upload(api_client, b"hello, not a sound")
    assert (not_audio.status_code, not_audio.json()["code"]) == (422, "not_audio")
    wrong_type = upload(api_client, wav_bytes(0.1), "text/plain")
    assert (wrong_type.status_code, wrong_type.json()["code"]) == (422, "not_audio")

    too_long = upload(api_client, wav_bytes(61.0, 8000))  # under 1 MB
    assert (too_long.status_code, too_long.json()["code"]) == (422, "audio_too_long")

    too_large = upload(api_client, b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert (too_large.status_code, too_large.json()["code"]) == (413, "upload_too_large")

    anonymous = httpx.post(embedded_api.url + "/v1/uploads", content=wav_bytes(0.1), timeout=30)
    assert anonymous.status_code == 401

    schema = api_client.get("/schema/openapi.json").json()
    assert "/v1/uploads" in schema["paths"]


def run_task(
    client: httpx.Client, receiver: Receiver, workflow: str, **inputs: Any
) -> dict[str, Any]:
    user = f"user-{uuid.uuid4().hex[:6]}"
    response = client.post(
        "/v1/tasks", json={"workflow": workflow, "user_id": user, "input": inputs}
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    receiver.wait_for(task_id, timeout=180)
    task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
    return task


def test_continuation_of_an_upload(
    api_client: httpx.Client, receiver: Receiver, embedded_api: Api
) -> None:
    ref = upload(api_client, wav_bytes(1.0)).json()["upload_id"]
    task = run_task(
        api_client, receiver, "continuation", prompt="more", audio_prompt=ref, duration=2
    )
    assert task["status"] == "succeeded", (task, embedded_api.proc.output())
    [audio] = [o for o in task["outputs"] if o["name"] == "audio"]
    assert audio["sample_rate"] == 32000
    assert audio["duration_s"] == pytest.approx(3.0, abs=0.05)  # 1 s prompt + 2 s
    media = httpx.get(audio["url"], timeout=30)
    assert sf.info(io.BytesIO(media.content)).duration == pytest.approx(3.0, abs=0.05)


def test_continuation_of_a_url_and_a_missing_upload(
    api_client: httpx.Client, receiver: Receiver, audio_server: str, embedded_api: Api
) -> None:
    task = run_task(
        api_client,
        receiver,
        "continuation",
        prompt="more",
        audio_prompt=audio_server + "/clip.wav",
        duration=1,
    )
    assert task["status"] == "succeeded", (task, embedded_api.proc.output())
    [audio] = [o for o in task["outputs"] if o["name"] == "audio"]
    assert audio["duration_s"] == pytest.approx(2.0, abs=0.05)

    gone = run_task(
        api_client, receiver, "continuation", prompt="x", audio_prompt="upload:nope", duration=1
    )
    assert gone["status"] == "failed"
    assert gone["error"]["code"] == "audio_unavailable"


def test_melody_with_a_non_melody_checkpoint_fails_clearly(
    api_client: httpx.Client, receiver: Receiver
) -> None:
    ref = upload(api_client, wav_bytes(1.0)).json()["upload_id"]
    task = run_task(api_client, receiver, "melody", prompt="a tune", melody=ref, duration=1)
    assert task["status"] == "failed"
    assert task["error"]["code"] == "model_unsupported"
    assert "musicgen-melody" in task["error"]["message"]


def test_invalid_audio_reference_is_refused_at_submit(api_client: httpx.Client) -> None:
    response = api_client.post(
        "/v1/tasks",
        json={
            "workflow": "continuation",
            "user_id": "u",
            "input": {"prompt": "x", "audio_prompt": "file:///etc/passwd"},
        },
    )
    assert response.status_code == 422
    assert response.json()["field"] == "input.audio_prompt"


def test_audio_url_to_a_private_address_is_refused_at_submit(api_client: httpx.Client) -> None:
    response = api_client.post(
        "/v1/tasks",
        json={
            "workflow": "continuation",
            "user_id": "u",
            "input": {"prompt": "x", "audio_prompt": "http://169.254.169.254/latest/x.wav"},
        },
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["code"], body["field"]) == ("invalid_input", "input.audio_prompt")
    assert "link-local" in body["message"]
