"""Domain types shared by every module, and the one shape legend of the package.

Shape letters (suffixes such as `z_PxK`, `logits_PxBxC`):
  P population members      K intrinsic dim (one candidate z)   N prompt tokens
  B batch rows              L sequence length                   D hidden size
  V vocabulary              C classes                           Y layers
  S sweep cells             G generations (of one interval)     R suffix tokens (decoder cache path)
  T keys attended           H query heads                       Q key/value heads
  E head dim                I FFN width
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

Array = jax.Array
# A prompt is a pytree: an N x D array for a prompt at the input (BBT), or a dict
# {"input": N x D, "layers": Y x N x D} for prompts at every layer (see models/splice.py).
Prompt = Any


@struct.dataclass
class TokenBatch:
    """A padded, fixed-shape batch of templated examples.

    The template reserves N consecutive "slots" per row starting at
    ``prompt_start_B``; a backbone either adds the soft prompt to the slot
    embeddings (BBT's "add") or replaces them ("cat", decoders). Rows with
    ``weight_B == 0`` are padding rows (fixed shapes) and never count.
    """

    input_ids_BxL: Array  # int32
    attention_mask_BxL: Array  # int32, 1 = real token (slots included)
    prompt_start_B: Array  # int32, index of the first prompt slot
    answer_pos_B: Array  # int32, where the label is read (<mask> / last token)
    labels_B: Array  # int32 class ids in [0, C)
    weight_B: Array  # float32, 1 for real rows, 0 for padding rows

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids_BxL.shape)


# A bucketed batch: one TokenBatch per length bucket, each with fixed shapes.
Buckets = tuple[TokenBatch, ...]
