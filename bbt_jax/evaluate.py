"""The fused population evaluation: one compiled call scores every candidate on
every training row (vmap over members, never a Python loop).

`score_fn(frozen, inputs, prompt_NxD) -> logits_BxC` is the backbone's scorer for
ONE candidate; this module adds the population axis (evosax
problems/vision/torchvision.py: only the candidates carry it, the frozen params
and the data are shared) and turns logits into fitness.

Shape letters: P population, K intrinsic dim, N prompt tokens, D hidden,
B batch rows, C classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from bbt_jax.objective import loss_and_metrics
from bbt_jax.prompt import Projection, prompt_from_z

ScoreFn = Callable[[Any, Any, jax.Array], jax.Array]


@struct.dataclass
class EvalData:
    """Inputs of the scorer plus the targets of every row, in the scorer's row order."""

    inputs: Any
    labels_B: jax.Array
    weight_B: jax.Array


def make_eval_data(inputs, labels_B, weight_B) -> EvalData:
    return EvalData(inputs, jnp.asarray(labels_B, jnp.int32), jnp.asarray(weight_B, jnp.float32))


def member_fitness(score_fn: ScoreFn, loss: str, metric: str, frozen, proj: Projection,
                   z_K, data: EvalData):
    """(loss, metrics) of one candidate z on the whole batch."""
    logits_BxC = score_fn(frozen, data.inputs, prompt_from_z(proj, z_K))
    return loss_and_metrics(loss, metric, logits_BxC, data.labels_B, data.weight_B)


def population_fitness(score_fn: ScoreFn, loss: str, metric: str, frozen, proj: Projection,
                       z_PxK, data: EvalData, *, chunk: int = 0):
    """(loss_P, metrics_P) of the whole population, traced as one computation.

    With `chunk` > 0 the population runs `chunk` members at a time inside the same
    computation (jax.lax.map with batch_size), so peak memory is bounded by the chunk.
    """

    def one(z_K):
        return member_fitness(score_fn, loss, metric, frozen, proj, z_K, data)

    if chunk and chunk < z_PxK.shape[0]:
        return jax.lax.map(one, z_PxK, batch_size=chunk)
    return jax.vmap(one)(z_PxK)


def make_population_eval(score_fn: ScoreFn, loss: str, metric: str, *, chunk: int = 0):
    """jit(frozen, proj, z_PxK, data) -> (loss_P, metrics_P), built once."""

    def fn(frozen, proj, z_PxK, data):
        return population_fitness(score_fn, loss, metric, frozen, proj, z_PxK, data, chunk=chunk)

    return jax.jit(fn)


def make_logits_fn(score_fn: ScoreFn):
    """jit(frozen, proj, z_PxK, inputs) -> logits_PxBxC for a few candidates (dev/test scoring)."""

    def fn(frozen, proj, z_PxK, inputs):
        return jax.vmap(lambda z_K: score_fn(frozen, inputs, prompt_from_z(proj, z_K)))(z_PxK)

    return jax.jit(fn)
