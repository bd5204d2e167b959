"""Tiny random MusicGen/AudioGen checkpoints for offline smoke tests.

:func:`make_tiny` writes a checkpoint directory in the layout of the released models
(``state_dict.bin`` + ``compression_state_dict.bin``), so the real loading path,
``MusicGen.get_pretrained(dir)`` / ``AudioGen.get_pretrained(dir)``, runs unchanged with no
network and no Hugging Face cache. The weights are random: the audio is noise. It takes a
fraction of a second once ``import audiocraft`` (several seconds) is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.audio_models import ModelKind

README = """\
Tiny RANDOM {kind} checkpoint written by aimarket.tiny_models.make_tiny (seed {seed}).

Its weights are random and untrained: everything it generates is noise. It exists so the
service and its tests can run the real audiocraft loading and generation code offline.
Do not serve it to users. Point MUSIC_GEN_MODEL / AUDIO_GEN_MODEL at a real model for that.
"""

# Shapes of the released models: sample rate, EnCodec hop ratios (product = hop length,
# giving the 50 Hz frame rate of both), and segment_duration, which must equal the released
# 30 s / 10 s or the default extend_stride of set_generation_params trips an assertion.
_SPECS: dict[str, tuple[int, list[int], float]] = {
    "musicgen": (32000, [8, 5, 4, 4], 30.0),
    "audiogen": (16000, [8, 5, 4, 2], 10.0),
}
_N_Q = 4  # codebooks, as released (the delay pattern below has one delay per codebook)
# Codebook size: must be >= 250, the default top_k of set_generation_params, since
# top-k sampling takes the k best of `card` logits.
_CARD = 1024


def make_tiny(out_dir: Path, kind: ModelKind, seed: int = 0) -> Path:
    """Write a tiny random ``kind`` checkpoint into ``out_dir`` (created) and return it.

    The text conditioner is audiocraft's ``lut`` with the ``noop`` tokenizer (each whole
    prompt hashed to one embedding), which needs no T5 download. Same seed, same weights.
    """
    if kind not in _SPECS:
        raise ValueError(f"unknown model kind {kind!r}")
    import audiocraft
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    sample_rate, ratios, segment_duration = _SPECS[kind]
    lm_cfg = _lm_cfg(segment_duration)
    comp_cfg = _compression_cfg(sample_rate, ratios)
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching caller RNG
        torch.manual_seed(seed)
        lm = builders.get_lm_model(OmegaConf.create(lm_cfg))
        comp = builders.get_compression_model(OmegaConf.create(comp_cfg))

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
    (out_dir / "README.txt").write_text(README.format(kind=kind, seed=seed), encoding="utf-8")
    return out_dir


def _lm_cfg(segment_duration: float) -> dict[str, Any]:
    # Keys of the released musicgen-small xp.cfg, sizes shrunk (about 0.3 M LM parameters).
    return {
        "device": "cpu",
        "dtype": "float32",
        "lm_model": "transformer_lm",
        "dataset": {"segment_duration": segment_duration},
        "transformer_lm": {
            "dim": 32,
            "num_heads": 2,
            "num_layers": 2,
            "hidden_scale": 2,
            "n_q": _N_Q,
            "card": _CARD,
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
            "delay": {"delays": list(range(_N_Q)), "flatten_first": 0, "empty_initial": 0},
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
            "description": {"model": "lut", "lut": {"n_bins": 64, "dim": 16, "tokenizer": "noop"}}
        },
    }


def _compression_cfg(sample_rate: int, ratios: list[int]) -> dict[str, Any]:
    return {
        "device": "cpu",
        "compression_model": "encodec",
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": sample_rate,
            "channels": 1,
            "causal": False,
            "renormalize": False,
        },
        "seanet": {
            "dimension": 16,
            "channels": 1,
            "causal": False,
            "n_filters": 4,
            "n_residual_layers": 1,
            "ratios": ratios,
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
            "lstm": 0,
            "disable_norm_outer_blocks": 0,
            "encoder": {},
            "decoder": {"trim_right_ratio": 1.0},
        },
        "rvq": {
            "n_q": _N_Q,
            "bins": _CARD,
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
