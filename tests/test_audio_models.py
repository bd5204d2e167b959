"""The model layer against tiny random checkpoints: real audiocraft code, offline, CPU."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audio import audio_models as am
from audio.random_models import make_tiny
from workflows.limits import MIN_DURATION_S

SAMPLE_RATES = {"musicgen": 32000, "audiogen": 16000}
PROMPTS = ["happy rock song with drums", "dog barking in the rain"]


@pytest.fixture(scope="module", params=["musicgen", "audiogen"])
def tiny(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    kind = request.param
    return kind, make_tiny(tmp_path_factory.mktemp(kind) / "ckpt", kind)


def test_checkpoint_layout(tiny: tuple[str, Path]) -> None:
    _, ckpt = tiny
    assert {p.name for p in ckpt.iterdir()} == {
        "state_dict.bin",
        "compression_state_dict.bin",
        "README.txt",
    }
    assert "noise" in (ckpt / "README.txt").read_text()


def test_load_is_cached(tiny: tuple[str, Path]) -> None:
    kind, ckpt = tiny
    first = am.load_model(kind, str(ckpt), device="cpu")
    assert am.load_model(kind, str(ckpt), device="cpu") is first
    assert first.sample_rate == SAMPLE_RATES[kind]


def test_generate_shape_and_wav_round_trip(tiny: tuple[str, Path]) -> None:
    kind, ckpt = tiny
    sr = SAMPLE_RATES[kind]
    out = am.generate(kind, str(ckpt), PROMPTS, 1.0, device="cpu")
    assert out.sample_rate == sr
    assert out.samples.shape == (2, 1, sr)
    assert out.samples.dtype == np.float32
    assert np.isfinite(out.samples).all()
    assert np.abs(out.samples).max() <= 1.0
    assert out.duration_s == pytest.approx(1.0)

    wav = am.encode_wav(out.samples[0], out.sample_rate)
    assert wav[:4] == b"RIFF"
    assert am.wav_info(wav) == (sr, pytest.approx(1.0), 1)
    assert am.wav_info(am.encode_wav(out.samples[1, 0], sr)) == (sr, pytest.approx(1.0), 1)


def test_seeded_generate_is_reproducible(tiny: tuple[str, Path]) -> None:
    kind, ckpt = tiny
    a = am.generate(kind, str(ckpt), PROMPTS, 0.5, device="cpu", seed=7)
    b = am.generate(kind, str(ckpt), PROMPTS, 0.5, device="cpu", seed=7)
    c = am.generate(kind, str(ckpt), PROMPTS, 0.5, device="cpu", seed=8)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)


def test_weights_only_refusal_falls_back(
    tiny: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint holding a pickled OmegaConf object, as released AudioGen ones do."""
    import torch
    from omegaconf import OmegaConf

    kind, _ = tiny
    ckpt = make_tiny(tmp_path / "ckpt", kind, seed=1)
    pkg = torch.load(ckpt / "state_dict.bin", weights_only=True)
    pkg["xp.cfg"] = OmegaConf.create(pkg["xp.cfg"])  # DictConfig instead of a YAML string
    torch.save(pkg, ckpt / "state_dict.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only"):
        torch.load(ckpt / "state_dict.bin", weights_only=True)

    with caplog.at_level("WARNING", logger=am.__name__):
        model = am.load_model(kind, str(ckpt), device="cpu")
    assert "retrying with weights_only=False" in caplog.text
    assert model.sample_rate == SAMPLE_RATES[kind]
    out = am.generate(kind, str(ckpt), PROMPTS[:1], 0.2, device="cpu", seed=0)
    assert np.isfinite(out.samples).all()


def test_missing_dir_raises(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(am.ModelLoadError, match="no such directory") as err:
        am.load_model("musicgen", missing, device="cpu")
    assert missing in str(err.value)


def test_incomplete_dir_raises(tmp_path: Path) -> None:
    (tmp_path / "state_dict.bin").write_bytes(b"")
    with pytest.raises(am.ModelLoadError, match=r"lacks compression_state_dict\.bin"):
        am.load_model("audiogen", str(tmp_path), device="cpu")


def test_corrupt_checkpoint_raises(tiny: tuple[str, Path], tmp_path: Path) -> None:
    kind, _ = tiny
    ckpt = make_tiny(tmp_path / "ckpt", kind)
    (ckpt / "state_dict.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(am.ModelLoadError, match="could not be loaded") as err:
        am.load_model(kind, str(ckpt), device="cpu")
    assert str(ckpt) in str(err.value)


def test_encode_wav_stereo_and_bad_input() -> None:
    stereo = np.zeros((2, 800), dtype=np.float32)
    stereo[0] = 2.0  # clipped, not wrapped
    assert am.wav_info(am.encode_wav(stereo, 8000)) == (8000, pytest.approx(0.1), 2)
    with pytest.raises(ValueError, match="shape"):
        am.encode_wav(np.zeros((1, 1, 10), dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="not readable"):
        am.wav_info(b"garbage")


def test_generate_rejects_bad_arguments(tiny: tuple[str, Path]) -> None:
    kind, ckpt = tiny
    with pytest.raises(ValueError, match="prompts"):
        am.generate(kind, str(ckpt), [], 1.0, device="cpu")
    with pytest.raises(ValueError, match="duration"):
        am.generate(kind, str(ckpt), PROMPTS, 0.0, device="cpu")


def test_one_frame_is_the_shortest_clip(tiny: tuple[str, Path]) -> None:
    kind, ckpt = tiny
    out = am.generate(kind, str(ckpt), PROMPTS[:1], MIN_DURATION_S, device="cpu", seed=1)
    assert out.samples.shape[-1] == SAMPLE_RATES[kind] // 50
    with pytest.raises(ValueError, match="one frame"):
        am.generate(kind, str(ckpt), PROMPTS[:1], 0.0199999, device="cpu")


@pytest.mark.parametrize("tiny", ["audiogen"], indirect=True)
def test_a_clip_past_the_model_window(tiny: tuple[str, Path]) -> None:
    """audiocraft makes clips longer than its window (AudioGen 10 s, MusicGen 30 s) in strides;
    its float arithmetic failed an assertion for whole-frame durations such as AudioGen's
    10.28 s (MusicGen's first is 36.08 s, past the default MAX_DURATION and slow here)."""
    kind, ckpt = tiny
    out = am.generate(kind, str(ckpt), PROMPTS[:1], 10.28, device="cpu", seed=1)
    assert out.samples.shape[-1] == round(10.28 * SAMPLE_RATES[kind])


def test_resolve_device() -> None:
    assert am.resolve_device("cpu") == "cpu"
    assert am.resolve_device("auto") in {"cpu", "cuda"}


def test_configure_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", "unchanged")
    am.configure_cache(None)
    assert am.os.environ["HF_HOME"] == "unchanged"
    monkeypatch.delenv("AUDIOCRAFT_CACHE_DIR", raising=False)
    am.configure_cache(str(tmp_path))
    assert am.os.environ["HF_HOME"] == str(tmp_path)
    assert am.os.environ["AUDIOCRAFT_CACHE_DIR"] == str(tmp_path / "hub")


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, audio.audio_models, audio.random_models; "
        "assert 'torch' not in sys.modules and 'audiocraft' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
