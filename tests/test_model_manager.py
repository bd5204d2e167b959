"""The model manager on tiny checkpoints: a bounded cache with eviction, long audio through
audiocraft's extension loop, sampling settings and seeds; and a worker's warm-up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from audio import audio_models
from tests.conftest import BIN, start, stop


@pytest.fixture
def cache_of_one() -> Iterator[None]:
    audio_models.clear_model_cache()
    audio_models.set_cache_size(1)
    yield
    audio_models.set_cache_size(2)
    audio_models.clear_model_cache()


def test_cache_is_bounded_and_evicts_the_least_recently_used(
    tiny_models: dict[str, Path], cache_of_one: None
) -> None:
    music = str(tiny_models["musicgen"])
    sound = str(tiny_models["audiogen"])
    first = audio_models.load_model("musicgen", music, "cpu")
    assert audio_models.load_model("musicgen", music, "cpu") is first  # loaded once
    audio_models.load_model("audiogen", sound, "cpu")
    assert audio_models.cached_models() == [("audiogen", sound, "cpu")]
    again = audio_models.load_model("musicgen", music, "cpu")
    assert again is not first  # it had been evicted, so it loaded again
    assert audio_models.cached_models() == [("musicgen", music, "cpu")]


def test_longer_than_one_window_uses_the_extension_loop(tiny_models: dict[str, Path]) -> None:
    # AudioGen's window is 10 s: 10.5 s needs audiocraft's extension with a stride.
    audio = audio_models.generate("audiogen", str(tiny_models["audiogen"]), ["rain"], 10.5, "cpu")
    assert audio.samples.shape == (1, 1, 168_000)
    assert np.isfinite(audio.samples).all()


def test_sampling_settings_and_seeds(tiny_models: dict[str, Path]) -> None:
    model = str(tiny_models["musicgen"])

    def take(seed: int, **params: float) -> np.ndarray:
        return audio_models.generate(
            "musicgen", model, ["x"], 1.0, "cpu", seed, None, params
        ).samples

    base = take(3)
    assert np.array_equal(take(3), base)  # the same seed, the same audio
    assert not np.array_equal(take(4), base)
    assert not np.array_equal(take(3, temperature=0.3, top_k=5), base)  # settings reach the model
    # A request without settings after one with them gets the defaults, not the leftovers.
    assert np.array_equal(take(3), base)


def test_worker_warms_up_before_it_says_ready(service_env: dict[str, str], tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = start(
        [str(BIN / "aimarket"), "worker", "-Q", "musicgen", "--warmup", "--ready-file", str(ready)],
        service_env,
        tmp_path / "worker.log",
        tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            assert proc.proc.poll() is None, proc.output()
            time.sleep(0.2)
        assert ready.exists(), proc.output()
        assert "warmed musicgen model" in proc.output()
    finally:
        stop(proc)
