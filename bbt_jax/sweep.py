"""S independent searches in ONE compiled call (vmap over the sweep axis).

What may differ between cells: the seed (PRNG key and the projection A), the initial
step size sigma, and anything else carried in the projection (alpha, p0) or the evosax
params. Shapes (d, N, popsize) and the loss are static and shared. The frozen model and
the data are shared, unbatched arguments, so the sweep costs one copy of the model. With
a mesh, the sweep axis is spread over devices.

Shape letters (bbt_jax/types.py): S sweep cells, K intrinsic dim, G generations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bbt_jax.problem import PromptProblem
from bbt_jax.search import Search, SearchState

# Only the projection carries the sweep axis; fitness (frozen model, data) is shared.
_PROBLEM_AXES = PromptProblem(fitness=None, projection=0)


def stack(trees):
    """Stack pytrees of equal structure along a new leading (sweep) axis."""
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


class Sweep:
    """vmaps `Search`'s interval over S cells; built once."""

    def __init__(self, search: Search, mesh: jax.sharding.Mesh | None = None):
        self.search = search
        self.mesh = mesh
        self.interval = jax.jit(jax.vmap(search._interval, in_axes=(_PROBLEM_AXES, _PROBLEM_AXES, 0, 0)))

    def init(self, keys_S: jax.Array, sigmas_S) -> tuple[SearchState, object]:
        """Stacked initial states and evosax params, one per (key, sigma)."""
        es_params_S = jax.vmap(self.search.es_params)(jnp.asarray(sigmas_S, jnp.float32))
        states_S = jax.vmap(self.search.init)(keys_S, es_params_S)
        return self._shard(states_S), self._shard(es_params_S)

    def _shard(self, tree):
        if self.mesh is None:
            return tree
        axis = self.mesh.axis_names[0]

        def put(x):
            spec = jax.sharding.PartitionSpec(axis, *([None] * (x.ndim - 1)))
            return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

        return jax.tree.map(put, tree)

    def run(self, train_S: PromptProblem, dev_S: PromptProblem, states_S: SearchState, es_params_S):
        """Run every interval; `*_S` carry stacked projections. Returns (states_S, curves_SxG) with
        curves_SxG[s] = best loss per generation."""
        curves: list = []
        for _ in range(self.search.num_intervals):
            states_S, out = self.interval(train_S, dev_S, es_params_S, states_S)
            curves.append(out["generations"]["best_loss"])
        curves_SxG = jnp.concatenate(curves, axis=1)[:, :self.search.total_generations]
        return states_S, jax.device_get(curves_SxG)
