"""The fitness contract: a population of prompts -> (loss_P, metrics_P), built once.

`Fitness` holds the frozen model and one split's prepared rows as pytree fields and the
scorer, loss, metric and chunking as static fields, so it is an ordinary argument of any
jitted function (the frozen weights are never baked into a compilation). Every method uses
it: the ES search (through `problem.PromptProblem`, which adds the candidate -> prompt
projection), dev/test scoring (`split_metrics`), the saved prompt's `bbt-jax eval`, and
gradient baselines (`jax.grad` of `member`).

evosax problems/vision/torchvision.py vmaps only over the candidates: the frozen params
and the data are shared, unbatched arguments. With `chunk` > 0 the population runs that
many members at a time inside the same computation (jax.lax.map with batch_size), which
bounds peak memory by the chunk.

Shape letters: see bbt_jax/types.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bbt_jax.objective import accuracy, f1_binary, loss_and_metrics
from bbt_jax.types import Prompt, TokenBatch

# backbone.score: (frozen, prepared inputs, ONE prompt) -> logits_BxC
ScoreFn = Callable[[Any, Any, Prompt], jax.Array]


@struct.dataclass
class EvalData:
    """Prepared inputs of the scorer plus the targets of every row, in the scorer's row order."""

    inputs: Any
    labels_B: jax.Array
    weight_B: jax.Array


def make_eval_data(inputs, labels_B, weight_B) -> EvalData:
    return EvalData(inputs, jnp.asarray(labels_B, jnp.int32), jnp.asarray(weight_B, jnp.float32))


@struct.dataclass
class Fitness:
    """Loss and metrics of prompts on one split (see the module docstring).

    Attributes:
      frozen: the frozen model's pytree (params, verbalizer ids).
      data: the split's prepared rows and targets.
      score: the backbone's scorer for ONE prompt (static).
      loss: "ce", "hinge" or "perf" (objective.py).
      metric: "acc" or "f1".
      chunk: members per `lax.map` step (0: one vmap over the whole population).
    """

    frozen: Any
    data: EvalData
    score: ScoreFn = struct.field(pytree_node=False)
    loss: str = struct.field(pytree_node=False, default="ce")
    metric: str = struct.field(pytree_node=False, default="acc")
    chunk: int = struct.field(pytree_node=False, default=0)

    def logits(self, prompt: Prompt) -> jax.Array:
        """logits_BxC of one prompt on every row."""
        return self.score(self.frozen, self.data.inputs, prompt)

    def member(self, prompt: Prompt):
        """(loss, metrics) of one prompt on the whole split; differentiable in the prompt."""
        return loss_and_metrics(self.loss, self.metric, self.logits(prompt), self.data.labels_B, self.data.weight_B)

    def __call__(self, candidates_P, decode: Callable[[Any], Prompt] | None = None):
        """(loss_P, metrics_P) of a population: each member is `decode(candidate)` (default: a prompt itself)."""

        def one(candidate):
            return self.member(candidate if decode is None else decode(candidate))

        size = jax.tree.leaves(candidates_P)[0].shape[0]
        if self.chunk and self.chunk < size:
            return jax.lax.map(one, candidates_P, batch_size=self.chunk)
        return jax.vmap(one)(candidates_P)


def prepare_rows(backbone, frozen, buckets: Sequence[TokenBatch]) -> EvalData:
    """The rows prepared once (e.g. the decoder's input K/V cache) with their targets."""
    buckets = tuple(buckets)
    inputs = _prepare(backbone, frozen, buckets)
    labels_B = np.concatenate([np.asarray(b.labels_B) for b in buckets])
    weight_B = np.concatenate([np.asarray(b.weight_B) for b in buckets])
    return make_eval_data(inputs, labels_B, weight_B)


def make_fitness(backbone, frozen, buckets: Sequence[TokenBatch], *, loss: str = "ce", metric: str = "acc",
                 chunk: int = 0) -> Fitness:
    """Prepare the rows once (`prepare_rows`) and bind them to the scorer."""
    return Fitness(frozen, prepare_rows(backbone, frozen, buckets), backbone.score, loss, metric, chunk)


_prepare = jax.jit(lambda backbone, frozen, buckets: backbone.prepare(frozen, buckets), static_argnums=0)

PREPARED_CACHE_BATCHES = 64  # prepared batches a cache keeps (least recently used dropped first) ...
# ... and bytes: SmolLM2's input cache of 1000 test rows at max_length 256 is 3.9 GiB on dbpedia and 7.0 GiB on
# yelpp, and a sweep held two tasks' (17 GB in all); 8 GiB keeps one task's whole test set (a smaller bound
# would prepare every batch again on every pass), and grid.run drops a task's batches when it moves on
PREPARED_CACHE_BYTES = 8 << 30


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _eval_fitness(backbone, frozen, batch: TokenBatch, metric: str, cache: dict | None):
    """(Fitness on one batch, the batch's cache key or None): prepared once per key while `cache` keeps it."""
    if cache is None:
        return make_fitness(backbone, frozen, (batch,), metric=metric), None
    key = rows_key(backbone, frozen, (batch,))
    if key not in cache:
        cache[key] = prepare_rows(backbone, frozen, (batch,))
        while len(cache) > 1 and (len(cache) > PREPARED_CACHE_BATCHES
                                  or sum(nbytes(d) for d in cache.values()) > PREPARED_CACHE_BYTES):
            cache.pop(next(iter(cache)))  # the least recently used; the batch just prepared stays
    data = cache.pop(key)
    cache[key] = data  # most recently used last
    return Fitness(frozen, data, backbone.score, metric=metric), key


def rows_key(backbone, frozen, buckets: Sequence[TokenBatch]) -> tuple:
    """What identifies prepared rows across harnesses of one loaded model: the backbone (config and layout),
    the rows' tokens and the verbalizer, and the compute dtype."""
    return (backbone, _digest(frozen["verbalizer"], *jax.tree.leaves(tuple(buckets))),
            str(jax.tree.leaves(frozen["params"])[0].dtype))


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@jax.jit
def population_logits(fitness: Fitness, prompts_P) -> jax.Array:
    """logits_PxBxC of a few prompts (dev/test scoring)."""
    return jax.vmap(fitness.logits)(prompts_P)


SCORED_CACHE_ENTRIES = 8192  # (batch, prompt) logits a `scored` memo keeps


def split_metrics(backbone, frozen, batches: Sequence[TokenBatch], prompts_P, metric: str, *,
                  cache: dict | None = None, scored: dict | None = None) -> list[dict]:
    """Metrics of P prompts in one pass over fixed-shape batches: each batch is prepared once (the
    decoder's input cache) and shared by the P prompts; one host pull at the end.

    `cache`: prepared batches kept between calls (LoadedModel.prepared): every prompt later scored on
    the same rows with the same model and layout (other seeds, methods, runs of one process) costs
    only its own part (the decoder's suffix), not the rows' input cache again.
    `scored` (with `cache`): logits of (batch, prompt) pairs already computed (LoadedModel.scored), so
    that a prompt scored again on the same rows (the same start prompt in every cell of a sweep) costs
    nothing; equal prompts are found by their bytes."""
    size = jax.tree.leaves(prompts_P)[0].shape[0]
    memo = scored if cache is not None else None
    # a prompt's name: its bytes where a memo can hold it (equal prompts are computed once), else its index
    names = list(range(size))
    if memo is not None:
        host_P = jax.device_get(prompts_P)
        names = [_digest(*(leaf[i] for leaf in jax.tree.leaves(host_P))) for i in range(size)]
    known, pending = [], []  # known[j]: name -> logits_BxC of batch j; pending: (j, batch key, names, device logits)
    for j, b in enumerate(batches):
        fit, key = _eval_fitness(backbone, frozen, b, metric, cache)
        known.append({n: memo[key, n] for n in names if memo is not None and (key, n) in memo})
        todo = {n: i for i, n in reversed(list(enumerate(names))) if n not in known[j]}  # name -> first index
        if todo:
            index = sorted(todo.values())
            chosen = prompts_P if len(index) == size else jax.tree.map(lambda x, t=np.asarray(index): x[t], prompts_P)
            pending.append((j, key, [names[i] for i in index], population_logits(fit, chosen)))
    for (j, key, computed, _), logits in zip(pending, jax.device_get([p[3] for p in pending]), strict=True):
        known[j].update(zip(computed, logits, strict=True))
        if memo is not None:
            memo.update({(key, n): lg for n, lg in zip(computed, logits, strict=True)})
    while memo is not None and len(memo) > SCORED_CACHE_ENTRIES:
        memo.pop(next(iter(memo)))
    columns = [np.stack([row[n] for n in names]) for row in known]
    logits_PxBxC = np.concatenate(columns, axis=1)
    labels_B = np.concatenate([np.asarray(b.labels_B) for b in batches])
    weight_B = np.concatenate([np.asarray(b.weight_B) for b in batches])
    outs = []
    for logits_BxC in logits_PxBxC:
        out = {"acc": float(accuracy(logits_BxC, labels_B, weight_B)), "rows": int(weight_B.sum())}
        if metric == "f1":
            out["f1"] = float(f1_binary(logits_BxC, labels_B, weight_B))
        outs.append(out)
    return outs
