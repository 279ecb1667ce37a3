"""BBTv2 (Sun et al., EMNLP 2022; Black-Box-Tuning `deepbbt.py`): a prompt at every layer, a z_i per layer.

Candidate: z_YxK, one K-dim vector per layer. `DeepProjection` maps it to the prompt pytree
{"input": p0, "layers": A_i z_i} (models/splice.py); each layer's prompt is added to the hidden
states of the N prompt slots at that layer's input, as deepbbt.py's RoBERTa adds
`prompt_embedding[i]` right after <s> before layer i (layer 0 included, after the embeddings).

Projection scale, as deepbbt.py: A_0's std comes from the word embeddings (bbt.py's formula);
A_i (i >= 1) from the hidden states entering layer i, measured once on the training rows: all
values flattened, outliers clipped to mean +- 3 std for 5 rounds, std_i = alpha * std_hat_i /
(sqrt(d) * sigma) (`clipped_std`, `layer_stds`). Differences from deepbbt.py, both small: pad
positions are left out of the statistics (the original's padded batch includes them) and they are
measured with the prompt at z = 0 (the original's first forward carries the first candidate's
layer-0 prompt).

Search: `Layerwise` turns any registered evosax strategy over K into an evosax-style algorithm over
Y x K with one stacked state (a leading Y axis on every leaf), so `search.Search` runs BBTv2
unchanged: one fused population evaluation per generation, no host sync inside an interval, and
the layer index is traced (no recompilation per layer).

  sequential (deepbbt.py's divide and conquer): generation g asks and tells the strategy of layer
    g mod Y only; the other layers hold their best-so-far (`best_solution`, pycma's `xbest`; z = 0
    before their first visit). deepbbt.py runs budget // (popsize x Y) rounds over the Y layers
    (`sequential_generations`: 16 rounds at roberta-large's 24 layers and 8000 calls).
  parallel (ours): every layer's strategy is asked and told in every generation on one shared
    fitness: member j uses every layer's j-th candidate. One call advances every layer.

Shape letters: see bbt_jax/types.py (Y layers, P population, K intrinsic dim, N prompt, D hidden).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bbt_jax.errors import UserError
from bbt_jax.prompt import embedding_std, projection_std

SCHEDULES = ("sequential", "parallel")
CLIP_ROUNDS = 5  # deepbbt.py


# ----------------------------------------------------------------------------- projection
@struct.dataclass
class DeepProjection:
    """z_YxK -> {"input": p0_NxD, "layers": Y x N x D}; frozen, only z is searched."""

    A_YxKxND: jax.Array
    p0_NxD: jax.Array

    @property
    def intrinsic_dim(self) -> int:
        return self.A_YxKxND.shape[1]

    @property
    def num_layers(self) -> int:
        return self.A_YxKxND.shape[0]

    def __call__(self, z_YxK: jax.Array) -> dict:
        n, d = self.p0_NxD.shape
        layers_YxNxD = jnp.einsum("yk,ykm->ym", z_YxK, self.A_YxKxND).reshape(-1, n, d)
        return {"input": self.p0_NxD, "layers": layers_YxNxD}


def clipped_std(values, rounds: int = CLIP_ROUNDS) -> float:
    """deepbbt.py's outlier-robust std: clip to mean +- 3 std, recompute, `rounds` times (float32, as np)."""
    x = np.asarray(values, np.float32).reshape(-1)
    mu, std = np.mean(x), np.std(x)
    for _ in range(rounds):
        x = np.clip(x, mu - 3 * std, mu + 3 * std)
        mu, std = np.mean(x), np.std(x)
    return float(std)


def layer_stds(word_VxD, measured) -> np.ndarray:
    """std_hat per layer: layer 0 from the word embeddings (bbt.py), layer i >= 1 from the real
    (unpadded) positions of the hidden states entering layer i. `measured`: (inputs_YxBxLxD, mask_BxL)
    pairs, one per batch of training rows."""
    measured = [(np.asarray(x, np.float32), np.asarray(m) > 0) for x, m in measured]
    num_layers = measured[0][0].shape[0]
    out = [embedding_std(word_VxD)]
    out += [clipped_std(np.concatenate([x[y][keep] for x, keep in measured])) for y in range(1, num_layers)]
    return np.asarray(out, np.float64)


def make_deep_projection(key: jax.Array, *, intrinsic_dim: int, p0_NxD, stds_Y, alpha: float = 1.0,
                         sigma: float = 1.0, kind: str = "normal") -> DeepProjection:
    """One A_i per layer from split(key, Y)[i]; "normal": N(0, alpha std_hat_i / (sqrt(d) sigma)) as
    deepbbt.py, "uniform": torch's Linear default U(-1/sqrt(d), 1/sqrt(d))."""
    p0_NxD = jnp.asarray(p0_NxD, jnp.float32)
    n, d = p0_NxD.shape
    keys = jax.random.split(key, len(stds_Y))
    shape = (intrinsic_dim, n * d)
    if kind == "normal":
        scale_Y = np.asarray([projection_std(s, intrinsic_dim, alpha, sigma) for s in stds_Y], np.float32)
        A = jax.vmap(lambda k: jax.random.normal(k, shape))(keys) * scale_Y[:, None, None]
    elif kind == "uniform":
        bound = 1.0 / np.sqrt(intrinsic_dim)
        A = jax.vmap(lambda k: jax.random.uniform(k, shape, minval=-bound, maxval=bound))(keys)
    else:
        raise UserError(f"--random-proj {kind}: choose from normal, uniform")
    return DeepProjection(A_YxKxND=A.astype(jnp.float32), p0_NxD=p0_NxD)


def zero_layers(p0_NxD, num_layers: int) -> dict:
    """The deep prompt at its start: p0 at the input, zeros at every layer (deep prompt tuning's x0)."""
    p0_NxD = jnp.asarray(p0_NxD, jnp.float32)
    return {"input": p0_NxD, "layers": jnp.zeros((num_layers, *p0_NxD.shape), jnp.float32)}


# ----------------------------------------------------------------------------- layer-wise strategy
def sequential_generations(budget: int, popsize: int, num_layers: int) -> int:
    """deepbbt.py: budget // (popsize x Y) rounds, each visiting every layer once."""
    rounds = budget // (popsize * num_layers)
    if rounds < 1:
        raise UserError(f"--budget {budget}: BBTv2's sequential schedule needs at least popsize x layers = "
                        f"{popsize} x {num_layers} = {popsize * num_layers} calls for one round over the layers "
                        "(or use --layer-schedule parallel)")
    return rounds * num_layers


@struct.dataclass
class LayerwiseState:
    states: object  # the inner strategy's state, every leaf with a leading Y axis
    generation_counter: jax.Array  # int32, tells so far

    @property
    def std(self):
        """The layers' step sizes (search.py's curve reports their mean)."""
        return getattr(self.states, "std", None)

    @property
    def mean(self):
        """Y x K: every layer's mean (search.py's `--dev-candidate mean`)."""
        return self.states.mean


def _take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _put(tree, i, leaf_tree):
    return jax.tree.map(lambda x, v: x.at[i].set(v), tree, leaf_tree)


class Layerwise:
    """An evosax-style algorithm over Y x K built from one over K (see the module docstring).

    It keeps evosax 0.3's calling convention (`init(key, mean, params)`, `ask(key, state, params)`,
    `tell(key, population, fitness, state, params)`, minimising), so search.Search needs no change.
    The params are shared by the layers (same popsize and dimension)."""

    def __init__(self, inner, num_layers: int, schedule: str = "sequential"):
        if schedule not in SCHEDULES:
            raise UserError(f"--layer-schedule {schedule}: choose from {', '.join(SCHEDULES)}")
        self.inner = inner
        self.num_layers = int(num_layers)
        self.schedule = schedule
        self.population_size = inner.population_size
        self.solution = jnp.zeros((self.num_layers, inner.num_dims), jnp.float32)
        self.num_dims = self.solution.size

    @property
    def default_params(self):
        return self.inner.default_params

    def init(self, key, mean_YxK, params) -> LayerwiseState:
        keys_Y = jax.random.split(key, self.num_layers)
        states = jax.vmap(lambda k, m: self.inner.init(k, m, params))(keys_Y, jnp.asarray(mean_YxK, jnp.float32))
        return LayerwiseState(states=states, generation_counter=jnp.asarray(0, jnp.int32))

    def best_YxK(self, state: LayerwiseState) -> jax.Array:
        """Each layer's best-so-far candidate; z = 0 for a layer never told yet."""
        seen_Y = jnp.isfinite(state.states.best_fitness)
        return jnp.where(seen_Y[:, None], state.states.best_solution, 0.0).astype(jnp.float32)

    def layer(self, state: LayerwiseState) -> jax.Array:
        """The layer the sequential schedule visits in this generation."""
        return state.generation_counter % self.num_layers

    def ask(self, key, state: LayerwiseState, params):
        if self.schedule == "parallel":
            keys_Y = jax.random.split(key, self.num_layers)
            z_YxPxK, states = jax.vmap(lambda k, s: self.inner.ask(k, s, params))(keys_Y, state.states)
            return jnp.swapaxes(z_YxPxK, 0, 1), state.replace(states=states)
        i = self.layer(state)
        z_PxK, s_i = self.inner.ask(key, _take(state.states, i), params)
        best_YxK = self.best_YxK(state)
        z_PxYxK = jnp.broadcast_to(best_YxK, (z_PxK.shape[0], *best_YxK.shape)).at[:, i].set(z_PxK)
        return z_PxYxK, state.replace(states=_put(state.states, i, s_i))

    def tell(self, key, z_PxYxK, fitness_P, state: LayerwiseState, params):
        if self.schedule == "parallel":
            keys_Y = jax.random.split(key, self.num_layers)
            told = jax.vmap(lambda k, z, s: self.inner.tell(k, z, fitness_P, s, params)[0], in_axes=(0, 1, 0))
            states = told(keys_Y, z_PxYxK, state.states)
        else:
            i = self.layer(state)
            s_i, _ = self.inner.tell(key, z_PxYxK[:, i], fitness_P, _take(state.states, i), params)
            states = _put(state.states, i, s_i)
        return state.replace(states=states, generation_counter=state.generation_counter + 1), {}
