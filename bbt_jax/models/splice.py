"""Putting soft-prompt vectors into a sequence: the one splice every backbone uses.

A row holds N prompt slots from `start_B`. "add" adds the prompt to the slots' vectors
(BBT's placement: A z is added to placeholder-token embeddings; also the per-layer
deep prompt added to hidden states), "replace" writes the prompt over them (BBT's
"cat" on RoBERTa, the decoders' prompt slots).

A prompt is a pytree (`bbt_jax.types.Prompt`): an N x D array at the input, or a dict
{"input": N x D, "layers": Y x N x D}; `parts` splits it for a backbone.

Shape letters: see bbt_jax/types.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("add", "replace")


def parts(prompt) -> tuple[jax.Array | None, jax.Array | None]:
    """(input prompt N x D or None, per-layer prompts Y x N x D or None)."""
    if isinstance(prompt, dict):
        return prompt.get("input"), prompt.get("layers")
    return prompt, None


def slots(start_B, n: int, length: int) -> jax.Array:
    """bool B x L: True at the N prompt slots of every row."""
    idx_BxL = jnp.arange(length)[None, :] - start_B[:, None]
    return (idx_BxL >= 0) & (idx_BxL < n)


def scatter(prompt_NxD, start_B, length: int) -> tuple[jax.Array, jax.Array]:
    """(B x L x D holding the prompt at each row's slots and zeros elsewhere, bool B x L slot mask)."""
    n = prompt_NxD.shape[0]
    idx_BxL = jnp.arange(length)[None, :] - start_B[:, None]
    inside_BxL = slots(start_B, n, length)
    gathered_BxLxD = prompt_NxD[jnp.clip(idx_BxL, 0, n - 1)]
    return jnp.where(inside_BxL[..., None], gathered_BxLxD, jnp.zeros_like(gathered_BxLxD)), inside_BxL


def splice(h_BxLxD, prompt_NxD, start_B, mode: str) -> jax.Array:
    """"add": h + p at the slots; "replace": the slots become p."""
    full_BxLxD, inside_BxL = scatter(prompt_NxD.astype(h_BxLxD.dtype), start_B, h_BxLxD.shape[1])
    if mode == "add":
        return h_BxLxD + full_BxLxD
    if mode == "replace":
        return jnp.where(inside_BxL[..., None], full_BxLxD, h_BxLxD)
    raise ValueError(f"unknown splice mode {mode!r}; choose from {MODES}")


def layer_additions(layers_YxNxD, start_B, length: int, dtype) -> jax.Array:
    """Y x B x L x D: each layer's prompt at the slots (added to that layer's input)."""
    return jax.vmap(lambda p_NxD: scatter(p_NxD.astype(dtype), start_B, length)[0])(layers_YxNxD)
