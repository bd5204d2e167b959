"""The lowest values generation can work with, named so workflow files and stages share them.

A workflow file refers to them as ``$MIN_DURATION`` and ``$MIN_TEMPERATURE`` (the loader
resolves these names like ``$SETTING`` references); the generation stages check the same
constants, so a custom workflow that sets a lower limit still fails once, with a clear
message, rather than after every retry inside audiocraft.
"""

from __future__ import annotations

__all__ = ["CONSTANTS", "FRAME_RATE_HZ", "MIN_DURATION_S", "MIN_TEMPERATURE"]

#: MusicGen and AudioGen (EnCodec at 32 kHz / 16 kHz, hop 640 / 320) decode 50 frames a second.
FRAME_RATE_HZ = 50

#: One frame. audiocraft generates ``int(duration * 50)`` frames, so anything shorter asks for
#: none and fails an assertion (measured: 0.0199999 s fails, 0.02 s gives 640 samples at
#: 32 kHz, encoded in every format). Longer durations are floored to whole frames.
MIN_DURATION_S = 1 / FRAME_RATE_HZ

#: audiocraft samples from ``softmax(logits / temperature)``. Measured on the CPU (float32):
#: 1e-38 and below overflow to inf and every generation fails ("probability tensor contains
#: either inf, nan or element < 0"); 1e-37 still works with the tiny test models' small
#: logits. On a GPU the language model runs in float16 (max 65504), where the division
#: overflows once a logit exceeds 65504 * temperature: at 0.01 that is a logit of 655, far
#: above what trained checkpoints produce even with cfg_coef 10. Going lower buys nothing: at
#: 0.01 a logit 0.1 above the next already makes its token e^10 (22 000) times likelier.
MIN_TEMPERATURE = 0.01

#: The names a workflow limit may use with ``$`` besides the numeric settings.
CONSTANTS: dict[str, float] = {
    "MIN_DURATION": MIN_DURATION_S,
    "MIN_TEMPERATURE": MIN_TEMPERATURE,
}
