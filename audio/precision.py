"""The LM's number format (MODEL_PRECISION), and how close a faster format stays to float32.

Decoding a released-size LM is memory-bound: every step reads all the transformer's weights
for one new frame. Storing them in bfloat16 halves those bytes (3.1x the throughput of
float32 on this project's CPU, which has avx512_bf16; docs/benchmarks.md). What stays in
float32, and why:

* the conditioners (T5, the melody chromagram): they run once per generate call, and their
  embeddings are handed to the transformer in its dtype;
* the logits, from the LM's output on: classifier-free guidance and the sampling (softmax,
  top-k/top-p, the draw) run exactly as in the stock path;
* EnCodec, which decodes the codes to audio once per clip.

:func:`closeness` measures what the change costs: the distance between the next-token
distributions of two copies of one model, on the same codes and prompts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, get_args

#: ``auto`` is audiocraft's own: float32 on CPU, float16 weights under float16 autocast on
#: CUDA. ``bf16`` keeps the LM's weights in bfloat16; ``fp32`` is CPU only, ``fp16`` CUDA only.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


class PrecisionUnsupported(ValueError):
    """The model's device does not offer the precision asked for."""


def apply_precision(model: Any, precision: Precision) -> None:
    """Put a loaded model's LM in ``precision`` (see :data:`Precision`), in place.

    Raises :class:`PrecisionUnsupported` for a precision its device does not offer: ``fp16`` on
    CPU (no fast half-precision matmul there: use ``bf16``), ``fp32`` on CUDA (audiocraft's
    loader builds the LM in float16 there, so float32 weights could not be the released ones).
    """
    import torch
    from audiocraft.utils.autocast import TorchAutocast

    on_cuda = model.device.type == "cuda"
    if precision == "auto" or (precision == "fp32" and not on_cuda):
        return
    if precision == "fp16" and not on_cuda:
        raise PrecisionUnsupported("MODEL_PRECISION=fp16 needs a CUDA device; on CPU use bf16")
    if precision == "fp32":
        raise PrecisionUnsupported(
            "MODEL_PRECISION=fp32 is CPU only: on CUDA use auto, fp16 or bf16"
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    lm = model.lm
    lm.to(dtype)
    # The conditioners (T5, the melody chromagram) run once per generate call: they stay in
    # float32 and hand the transformer their embeddings in its dtype.
    lm.condition_provider.to(torch.float32)
    lm.condition_provider.register_forward_hook(functools.partial(_conditions_to, dtype))
    # The logits leave the LM in float32: the sampling (softmax, top-k/top-p, multinomial)
    # and classifier-free guidance then run exactly as in the stock path.
    lm.register_forward_hook(_logits_to_float32)
    # On CPU the weights' own dtype sets the matmul (autocast would add a cast per op and was
    # slower, measured); on CUDA autocast keeps normalisations and softmax in float32.
    model.autocast = TorchAutocast(enabled=on_cuda, device_type=model.device.type, dtype=dtype)


def _logits_to_float32(module: Any, inputs: Any, output: Any) -> Any:
    return output.float()


def _conditions_to(dtype: Any, module: Any, inputs: Any, output: Any) -> Any:
    # ConditioningProvider returns {name: (embeddings, mask)}.
    return {name: (embeds.to(dtype), mask) for name, (embeds, mask) in output.items()}


@dataclass(frozen=True)
class Closeness:
    """How far a model's next-token distributions are from a reference's, over every
    position and codebook of one forward pass."""

    #: Total variation distance (half the L1 distance; 0 = same, 1 = disjoint), mean and max.
    mean_tv: float
    max_tv: float
    #: Share of positions where both put their highest probability on the same token.
    top1_agreement: float
    #: Largest absolute difference of a logit, and the reference logits' standard deviation.
    max_abs_logit_diff: float
    logit_std: float


def closeness(
    reference: Any, candidate: Any, prompts: list[str], frames: int, seed: int = 0
) -> Closeness:
    """Compare the LMs of two loaded models (e.g. float32 and bfloat16 copies of one
    checkpoint) on the same random codes of ``frames`` frames, conditioned on ``prompts``."""
    import torch
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = reference.lm
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, lm.card, (len(prompts), lm.num_codebooks, frames), generator=generator)
    logits = []
    for model in (reference, candidate):
        conditions = [ConditioningAttributes(text={"description": p}) for p in prompts]
        with torch.no_grad(), model.autocast:
            out = model.lm.compute_predictions(codes.to(model.device), conditions)
        # Only the positions the codebook pattern makes valid (the delays leave some out).
        valid = out.mask.bool()
        logits.append(out.logits.float()[valid].cpu())
    ref, cand = logits
    p, q = ref.softmax(-1), cand.softmax(-1)
    tv = 0.5 * (p - q).abs().sum(-1)
    return Closeness(
        mean_tv=float(tv.mean()),
        max_tv=float(tv.max()),
        top1_agreement=float((ref.argmax(-1) == cand.argmax(-1)).float().mean()),
        max_abs_logit_diff=float((ref - cand).abs().max()),
        logit_std=float(ref.std()),
    )
