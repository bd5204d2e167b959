"""`aimarket models make-random`: checkpoints of the released shapes with random weights,
written offline and loaded through the same path as a released checkpoint.

The released shapes are GBs, so they are checked here without writing them (their parameter
counts, built on torch's meta device); the tiny shapes run the whole path: write, load,
generate."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest

from audio import audio_models
from audio.random_models import RELEASED, SHAPES, compression_config, lm_config
from tests.conftest import BIN

#: Parameters of the released checkpoints' LMs (audiocraft's "300M" and "1.5B" count the
#: self-attention and feed-forward only; cross-attention to the text adds a third) and of
#: their 32 kHz / 16 kHz EnCodec, in millions, give or take 2 %.
RELEASED_SIZES_M = {
    "musicgen-small": (420, 57),
    "musicgen-medium": (1838, 57),
    "musicgen-stereo-small": (436, 57),
    "audiogen-medium": (1838, 57),
}


def _parameters_m(like: str) -> tuple[float, float]:
    import torch  # noqa: F401  (audiocraft's builders need it imported first)
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    shape = SHAPES[like]
    lm_cfg, comp_cfg = lm_config(shape), compression_config(shape)
    lm_cfg["device"] = comp_cfg["device"] = "meta"  # shapes only: no memory, no time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = builders.get_lm_model(OmegaConf.create(lm_cfg))
        comp = builders.get_compression_model(OmegaConf.create(comp_cfg))
    count = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (lm, comp)]
    return count[0], count[1]


@pytest.mark.parametrize("like", RELEASED)
def test_released_shapes_have_the_released_sizes(like: str) -> None:
    lm_m, codec_m = _parameters_m(like)
    expected_lm, expected_codec = RELEASED_SIZES_M[like]
    assert lm_m == pytest.approx(expected_lm, rel=0.02)
    assert codec_m == pytest.approx(expected_codec, rel=0.02)
    shape = SHAPES[like]
    assert shape.card == 2048
    assert shape.lstm == 2
    assert shape.n_filters == 64
    # The text conditioner stands in for T5 at its output width.
    assert shape.text_dim == (1024 if shape.kind == "audiogen" else 768)


def test_make_random_writes_a_checkpoint_that_loads_and_generates(tmp_path: Path) -> None:
    out = tmp_path / "stereo"
    result = subprocess.run(
        [
            str(BIN / "aimarket"),
            "models",
            "make-random",
            str(out),
            "--like",
            "tiny-musicgen-stereo",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"MUSIC_GEN_MODEL={out.resolve()}" in result.stdout
    readme = (out / "README.txt").read_text()
    assert "noise" in readme
    assert "lut" in readme
    assert "T5" in readme
    # The same loader as a released checkpoint: audiocraft's get_pretrained on the folder.
    audio = audio_models.generate("musicgen", str(out), ["a", "b"], 0.1, device="cpu")
    assert audio.samples.shape == (2, 2, 3200)  # stereo: codebooks of both channels interleaved


def test_make_random_refuses_an_unknown_shape(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "aimarket"), "models", "make-random", str(tmp_path / "x"), "--like", "gpt-5"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "musicgen-small" in result.stderr  # the choices are listed
    assert not (tmp_path / "x").exists()
