"""Prometheus metrics (GET /metrics, worker metrics) and JSON logs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
import uuid

import dramatiq
import httpx
import pika
import pytest

from core.logs import ContextFilter, JsonFormatter, bind, log_context
from tests.conftest import BIN, TOKEN, Api, free_port, start, stop


def _value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def test_metrics_after_a_text2music_task(embedded_api: Api) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=embedded_api.url, headers=headers, timeout=30) as client:
        body = {
            "workflow": "text2music",
            "user_id": f"metrics-{uuid.uuid4().hex[:6]}",
            "input": {"prompt": "calm piano", "duration": 1},
        }
        created = client.post("/v1/tasks", json=body)
        assert created.status_code == 202, created.text
        task_id = created.json()["task_id"]
        deadline = time.monotonic() + 120
        while (status := client.get(f"/v1/tasks/{task_id}").json()["status"]) != "succeeded":
            assert status not in ("failed", "canceled"), status
            assert time.monotonic() < deadline, "the task did not succeed in time"
            time.sleep(0.2)

        # No token needed.
        scraped = httpx.get(embedded_api.url + "/metrics", timeout=30)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text

    requests = _value(
        text, "aimarket_http_requests_total", method="POST", path="/v1/tasks", status_code="202"
    )
    assert requests is not None
    assert requests >= 1
    # Route templates, never ids.
    assert task_id not in text
    reads = _value(text, "aimarket_http_request_duration_seconds_count", method="GET")
    assert reads is not None
    assert reads >= 1

    submitted = _value(text, "aimarket_tasks_submitted_total", workflow="text2music")
    assert submitted is not None
    assert submitted >= 1

    generated = _value(
        text, "aimarket_stage_duration_seconds_count", actor="audio.musicgen", outcome="ok"
    )
    assert generated is not None
    assert generated >= 1
    assert _value(text, "aimarket_stage_duration_seconds_count", actor="task.validate") is not None

    ratio = _value(text, "aimarket_generation_seconds_per_audio_second_count", kind="musicgen")
    assert ratio is not None
    assert ratio >= 1
    assert (
        _value(text, "aimarket_generation_seconds_per_audio_second_bucket", le="+Inf") is not None
    )
    batch = _value(text, "aimarket_generation_batch_size_count", kind="musicgen")
    assert batch is not None
    assert batch >= 1

    finished = _value(
        text, "aimarket_tasks_finished_total", workflow="text2music", status="succeeded"
    )
    assert finished is not None
    assert finished >= 1
    # The final callback goes to the test receiver (MARKETPLACE_CALLBACK), on its own queue:
    # it may land just after the task's status says succeeded.
    deadline = time.monotonic() + 20
    while not _value(
        text, "aimarket_callback_attempts_total", event="completed", outcome="delivered"
    ):
        assert time.monotonic() < deadline, "no delivered callback counted"
        time.sleep(0.3)
        text = httpx.get(embedded_api.url + "/metrics", timeout=30).text

    # The embedded broker's queues, read at the scrape.
    assert _value(text, "aimarket_queue_messages", queue="musicgen", state="ready") == 0


def _json_lines(records: list[tuple[str, str]]) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"tests.metrics.{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    for kind, message in records:
        if kind == "inside":
            with log_context(task_id="t-1", workflow="text2music", stage="generate"):
                logger.info(message)
        elif kind == "error":
            with log_context(task_id="t-2", user_id="u-9"):
                try:
                    raise ValueError("boom\nsecond line")
                except ValueError:
                    logger.exception(message)
        else:
            logger.warning(message)
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(records)  # one line per record, even with newlines inside
    return [json.loads(line) for line in lines]


def test_json_formatter_adds_task_fields_inside_a_context_only() -> None:
    inside, outside, error = _json_lines(
        [("inside", "generating"), ("outside", 'no "task"\nhere'), ("error", "failed")]
    )
    assert inside["message"] == "generating"
    assert inside["level"] == "INFO"
    assert str(inside["logger"]).startswith("tests.metrics.")
    assert str(inside["time"]).endswith("+00:00")
    assert inside["task_id"] == "t-1"
    assert inside["workflow"] == "text2music"
    assert inside["stage"] == "generate"
    assert "user_id" not in inside

    assert outside["message"] == 'no "task"\nhere'
    assert outside["level"] == "WARNING"
    for key in ("task_id", "workflow", "stage", "user_id"):
        assert key not in outside

    assert error["task_id"] == "t-2"
    assert error["user_id"] == "u-9"
    assert "ValueError: boom" in str(error["exc_info"])


def test_log_context_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError), log_context(password="x"):
        pass
    with pytest.raises(TypeError):
        bind(token="x")


def test_worker_metrics_include_dramatiqs_own(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`aimarket worker --metrics-port`: one endpoint with the stage metrics of every worker
    process and Dramatiq's message metrics (its Prometheus middleware, without its own server).
    The worker serves a queue of its own, so no other worker of the session takes the probe."""
    queue = "metrics-probe"
    port = free_port()
    env = {**service_env, "EXTRA_QUEUES": queue}
    workdir = tmp_path_factory.mktemp("metrics-worker")
    args = [str(BIN / "aimarket"), "worker", "-Q", queue, "--metrics-port", str(port)]
    proc = start(args, env, workdir / "worker.log", workdir)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            assert proc.proc.poll() is None, proc.output()
            assert time.monotonic() < deadline, "no metrics endpoint:\n" + proc.output()
            time.sleep(0.3)
        # A stage message, published as any producer would, on the worker's own queue.
        task_id = str(uuid.uuid4())
        message = dramatiq.Message(
            queue_name=queue,
            actor_name="test.echo",
            args=(task_id, "dag-join", "probe"),
            kwargs={},
            options={},
        )
        params = pika.URLParameters(
            f"amqp://guest:guest@127.0.0.1:5672/{service_env['RABBITMQ_VHOST']}"
        )
        with contextlib.closing(pika.BlockingConnection(params)) as connection:
            connection.channel().basic_publish("", queue, message.encode())
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(url, timeout=5).text
            done = _value(text, "dramatiq_messages_total", queue_name=queue, actor_name="test.echo")
            if done:
                break
            assert time.monotonic() < deadline, "the probe was not counted:\n" + proc.output()
            time.sleep(0.3)
        assert done == 1
        assert _value(text, "dramatiq_message_errors_total", queue_name=queue) in (None, 0.0)
        duration = _value(text, "dramatiq_message_duration_milliseconds_count", queue_name=queue)
        assert duration == 1
        ours = _value(text, "aimarket_stage_duration_seconds_count", actor="test.echo")
        assert ours == 1
    finally:
        stop(proc)
