"""Domain types shared by every module.

Shape letters: P population, B batch, L sequence, D hidden, N prompt tokens,
K intrinsic dim, V vocab, C classes, S sweep members.
"""

from __future__ import annotations

import jax
from flax import struct

Array = jax.Array


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
