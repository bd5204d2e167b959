"""Random-weight MusicGen/AudioGen checkpoints: tiny ones for tests, released shapes for
benchmarks.

:func:`make_random` writes a checkpoint directory in the layout of the released models
(``state_dict.bin`` + ``compression_state_dict.bin``, each ``{"xp.cfg", "best_state", ...}``),
so the real loading path, ``MusicGen.get_pretrained(dir)`` / ``AudioGen.get_pretrained(dir)``,
runs unchanged with no network and no Hugging Face cache. The weights are random: the audio
is noise, but a decoding step of a released shape costs what the released model's does.

The shapes (:data:`SHAPES`) are those of audiocraft's own configs for the released models
(``model/lm/model_scale/{small,medium}.yaml``, ``musicgen_lm.yaml``, ``audiogen_lm.yaml``,
``encodec_large_nq4_s640/s320.yaml``). One part differs on purpose: the text conditioner is
audiocraft's download-free ``lut`` (a lookup table) at the released T5's output width, where
the released models run T5 (base for MusicGen, large for AudioGen). T5 encodes each prompt
once per ``generate``, a small cost beside the hundreds of decoding steps; the ``noop``
tokenizer gives one conditioning token per prompt where T5 gives one per word piece, so
cross-attention reads a shorter memory (see the README.txt written beside the weights).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audio.checkpoints import ModelKind

README = """\
RANDOM {like} checkpoint written by `aimarket models make-random` (seed {seed}).

Its weights are random and untrained: everything it generates is noise. It has the
architecture and sizes of {like} ({params:,} parameters in all), so each decoding step costs
what the released model's does: it exists to measure speed and memory offline, and to run
the real audiocraft loading and generation code in tests. Do not serve it to users.

One part differs from the release: the text conditioner is audiocraft's `lut` lookup table
(noop tokenizer, output width {text_dim} like the released T5) instead of T5 itself, so that
nothing is downloaded. T5 encodes each prompt once per generate call, a small cost beside the
decoding steps, and gives one conditioning token per word piece where `lut` gives one per
prompt.
"""


@dataclass(frozen=True)
class Shape:
    """The sizes that set a checkpoint's compute: transformer LM, EnCodec, conditioner."""

    kind: ModelKind
    # EnCodec: sample rate and hop ratios (product = hop length; 50 Hz frames for both kinds).
    sample_rate: int
    ratios: tuple[int, ...]
    #: Must be the released 30 s / 10 s, or set_generation_params' extend_stride assertion trips.
    segment_duration: float
    dim: int
    num_heads: int
    num_layers: int
    hidden_scale: int
    #: Codebooks per frame seen by the LM (8 for stereo: 4 per channel, interleaved).
    n_q: int
    #: Codebook size; >= 250, the default top_k, since top-k takes the k best of `card` logits.
    card: int
    delays: tuple[int, ...]
    text_dim: int
    lut_bins: int
    seanet_dimension: int
    n_filters: int
    lstm: int
    stereo: bool = False


#: musicgen-small as released: audiocraft's ``model_scale/small.yaml`` (dim 1024, 16 heads, 24
#: layers) in ``musicgen_lm.yaml`` (4 codebooks of 2048 entries, delay pattern), EnCodec
#: 32 kHz from ``encodec_large_nq4_s640.yaml`` (n_filters 64, two LSTM layers), T5-base width.
_MUSICGEN_SMALL = Shape(
    kind="musicgen",
    sample_rate=32000,
    ratios=(8, 5, 4, 4),
    segment_duration=30.0,
    dim=1024,
    num_heads=16,
    num_layers=24,
    hidden_scale=4,
    n_q=4,
    card=2048,
    delays=(0, 1, 2, 3),
    text_dim=768,
    lut_bins=1024,
    seanet_dimension=128,
    n_filters=64,
    lstm=2,
)


def _medium(shape: Shape) -> Shape:
    """``model_scale/medium.yaml``: dim 1536, 24 heads, 48 layers."""
    return replace(shape, dim=1536, num_heads=24, num_layers=48)


def _stereo(shape: Shape) -> Shape:
    """The released stereo LMs: 8 codebooks, each delay shared by the two channels' ones."""
    return replace(shape, n_q=8, delays=(0, 0, 1, 1, 2, 2, 3, 3), stereo=True)


def _audiogen(shape: Shape) -> Shape:
    """AudioGen as released: 16 kHz EnCodec (``encodec_large_nq4_s320.yaml``), 10 s windows,
    T5-large width."""
    return replace(
        shape,
        kind="audiogen",
        sample_rate=16000,
        ratios=(8, 5, 4, 2),
        segment_duration=10.0,
        text_dim=1024,
    )


def _tiny(shape: Shape) -> Shape:
    """The tests' sizes: about 0.3 M LM parameters; codebooks keep >= 250 entries (top_k)."""
    return replace(
        shape,
        dim=32,
        num_heads=2,
        num_layers=2,
        hidden_scale=2,
        card=1024,
        text_dim=16,
        lut_bins=64,
        seanet_dimension=16,
        n_filters=4,
        lstm=0,
    )


#: ``--like`` names: the released shapes, and the tiny ones the tests use.
SHAPES: dict[str, Shape] = {
    "tiny-musicgen": _tiny(_MUSICGEN_SMALL),
    "tiny-audiogen": _tiny(_audiogen(_MUSICGEN_SMALL)),
    "tiny-musicgen-stereo": _tiny(_stereo(_MUSICGEN_SMALL)),
    "musicgen-small": _MUSICGEN_SMALL,
    "musicgen-medium": _medium(_MUSICGEN_SMALL),
    "musicgen-stereo-small": _stereo(_MUSICGEN_SMALL),
    "audiogen-medium": _medium(_audiogen(_MUSICGEN_SMALL)),
}

#: The released shapes (what ``models make-random --like`` offers).
RELEASED = tuple(name for name in SHAPES if not name.startswith("tiny-"))


def make_tiny(out_dir: Path, kind: ModelKind, seed: int = 0) -> Path:
    """Write a tiny random ``kind`` checkpoint into ``out_dir`` (created) and return it.
    It takes a fraction of a second once ``import audiocraft`` (several seconds) is done."""
    if f"tiny-{kind}" not in SHAPES:
        raise ValueError(f"unknown model kind {kind!r}")
    return make_random(out_dir, f"tiny-{kind}", seed=seed)


def make_random(out_dir: Path, like: str, seed: int = 0) -> Path:
    """Write a random checkpoint of shape ``like`` (a :data:`SHAPES` name) into ``out_dir``
    (created) and return it. Same seed, same weights. A released shape takes a while and
    space: musicgen-small about 1.8 GB and half a minute on two cores, medium about 6 GB."""
    shape = SHAPES.get(like)
    if shape is None:
        raise ValueError(f"unknown shape {like!r}; expected one of {', '.join(SHAPES)}")
    import audiocraft
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    lm_cfg = lm_config(shape)
    comp_cfg = compression_config(shape)
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching caller RNG
        torch.manual_seed(seed)
        lm = builders.get_lm_model(OmegaConf.create(lm_cfg))
        comp = builders.get_compression_model(OmegaConf.create(comp_cfg))
    params = sum(p.numel() for m in (lm, comp) for p in m.parameters())

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for filename, cfg, module in (
        ("state_dict.bin", lm_cfg, lm),
        ("compression_state_dict.bin", comp_cfg, comp),
    ):
        # The exported layout: config as a YAML string, so weights_only loading accepts it.
        pkg = {
            "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(cfg)),
            "best_state": module.state_dict(),
            "version": audiocraft.__version__,
            "exported": True,
        }
        torch.save(pkg, out_dir / filename)
    readme = README.format(like=like, seed=seed, params=params, text_dim=shape.text_dim)
    (out_dir / "README.txt").write_text(readme, encoding="utf-8")
    return out_dir


def lm_config(shape: Shape) -> dict[str, Any]:
    """The LM's ``xp.cfg``: keys of the released musicgen-small one, sizes from ``shape``."""
    cfg: dict[str, Any] = {
        "device": "cpu",
        "dtype": "float32",
        "lm_model": "transformer_lm",
        "dataset": {"segment_duration": shape.segment_duration},
        "transformer_lm": {
            "dim": shape.dim,
            "num_heads": shape.num_heads,
            "num_layers": shape.num_layers,
            "hidden_scale": shape.hidden_scale,
            "n_q": shape.n_q,
            "card": shape.card,
            "dropout": 0.0,
            "emb_lr": None,
            "activation": "gelu",
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "past_context": None,
            "causal": True,
            "custom": False,
            "memory_efficient": True,
            "attention_as_float32": False,
            "layer_scale": None,
            "positional_embedding": "sin",
            "xpos": False,
            "checkpointing": "none",
            "weight_init": "gaussian",
            "depthwise_init": "current",
            "zero_bias_init": True,
            "norm": "layer_norm",
            "cross_attention": False,
            "qk_layer_norm": False,
            "qk_layer_norm_cross": False,
            "attention_dropout": None,
            "kv_repeat": 1,
            "two_step_cfg": False,
        },
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": list(shape.delays), "flatten_first": 0, "empty_initial": 0},
        },
        "attribute_dropout": {},
        "classifier_free_guidance": {"training_dropout": 0.0, "inference_coef": 3.0},
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": [],
            "cross": ["description"],
            "input_interpolate": [],
        },
        # Download-free text conditioner; the released models use T5 here.
        "conditioners": {
            "description": {
                "model": "lut",
                "lut": {"n_bins": shape.lut_bins, "dim": shape.text_dim, "tokenizer": "noop"},
            }
        },
    }
    if shape.stereo:
        # As the released stereo LMs: a mono EnCodec run on each channel, codebooks interleaved.
        cfg["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
    return cfg


def compression_config(shape: Shape) -> dict[str, Any]:
    """EnCodec's ``xp.cfg`` (always mono: stereo shapes wrap it, see :func:`lm_config`)."""
    n_q = 4
    return {
        "device": "cpu",
        "compression_model": "encodec",
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": shape.sample_rate,
            "channels": 1,
            "causal": False,
            "renormalize": False,
        },
        "seanet": {
            "dimension": shape.seanet_dimension,
            "channels": 1,
            "causal": False,
            "n_filters": shape.n_filters,
            "n_residual_layers": 1,
            "ratios": list(shape.ratios),
            "activation": "ELU",
            "activation_params": {"alpha": 1.0},
            "norm": "weight_norm",
            "norm_params": {},
            "kernel_size": 7,
            "residual_kernel_size": 3,
            "last_kernel_size": 7,
            "dilation_base": 2,
            "pad_mode": "constant",
            "true_skip": True,
            "compress": 2,
            "lstm": shape.lstm,
            "disable_norm_outer_blocks": 0,
            "encoder": {},
            "decoder": {"trim_right_ratio": 1.0},
        },
        "rvq": {
            "n_q": n_q,
            "bins": shape.card,
            "decay": 0.99,
            "kmeans_init": False,  # k-means init needs training data; random codebooks do
            "kmeans_iters": 5,
            "threshold_ema_dead_code": 2,
            "orthogonal_reg_weight": 0.0,
            "orthogonal_reg_active_codes_only": False,
            "orthogonal_reg_max_codes": None,
            "q_dropout": False,
        },
    }
