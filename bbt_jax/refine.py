"""Two-stage search: the strategy as configured, then a small-step restart at the best candidate so far.
(`origin="start"`: a fresh restart at z = 0 instead, the second fold of train+dev cross-validation, see
search.Search's `swap_at`.)

`Refine(inner, switch, sigma)` wraps any evosax strategy whose state keeps a scalar step size `std` and the
best-so-far `best_solution` / `best_fitness` (CMA_ES, Sep_CMA_ES, xNES, Open_ES, ...; `check_refinable`). Generations
0 .. switch - 1 run `inner` unchanged; the tell of generation switch - 1 then re-initialises it
(`inner.init`) with its mean at the lowest-training-loss candidate seen so far and step size `sigma`,
keeping the best-so-far record, and the remaining generations refine locally from there (pycma's
restarts from the incumbent with a smaller sigma0, as BBT-RGB's two-stage DFO). The total number of calls
is the run's budget, unchanged. The restart is a `lax.cond` inside the tell with the same state shapes, so
it runs on device inside the search's scan and compiles nothing new.

It keeps evosax 0.3's calling convention (`init(key, mean, params)`, `ask(key, state, params)`,
`tell(key, population, fitness, state, params)`, minimising), so search.Search needs no change.
Shape letters: P population, K dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bbt_jax.errors import UserError


@struct.dataclass
class RefineState:
    inner: object  # the wrapped strategy's state
    generation_counter: jax.Array  # int32, generations told (the inner counter restarts at the switch)

    @property
    def mean(self):
        return self.inner.mean

    @property
    def std(self):
        return self.inner.std

    @property
    def best_solution(self):
        return self.inner.best_solution

    @property
    def best_fitness(self):
        return self.inner.best_fitness


def check_refinable(es, params) -> None:
    """UserError unless the strategy's state has the fields the restart sets."""
    shape = jax.eval_shape(es.init, jax.random.PRNGKey(0), es.solution, params)
    missing = [f for f in ("mean", "std", "best_solution", "best_fitness") if not hasattr(shape, f)]
    if missing or jnp.shape(getattr(shape, "std")) != ():
        raise UserError(f"--refine-at: strategy {type(es).__name__} keeps no scalar step size / best-so-far "
                        f"({', '.join(missing) or 'std is a vector'}); use cma_es, sep_cma_es, xnes, ...")


class Refine:
    """See the module docstring. `switch`: the generation the refinement starts at (>= 1); `sigma`: its step size;
    `origin` "start": restart afresh at z = 0 with the configured step size (`sigma` unused) and no record."""

    def __init__(self, inner, switch: int, sigma: float, origin: str = "best"):
        if switch < 1:
            raise UserError(f"--refine-at: the refinement would start at generation {switch}; needs >= 1")
        self.inner = inner
        self.switch = int(switch)
        self.sigma = float(sigma)
        self.origin = origin
        self.population_size = inner.population_size
        self.solution = inner.solution
        self.num_dims = inner.num_dims

    @property
    def default_params(self):
        return self.inner.default_params

    def init(self, key, mean, params) -> RefineState:
        return RefineState(inner=self.inner.init(key, mean, params), generation_counter=jnp.asarray(0, jnp.int32))

    def ask(self, key, state: RefineState, params):
        z_PxK, inner = self.inner.ask(key, state.inner, params)
        return z_PxK, state.replace(inner=inner)

    def restart(self, key, inner, params):
        """`inner` re-initialised at its best-so-far candidate with step size `sigma`, the record kept (origin
        "start": as at generation 0, at z = 0 with the params' step size, a new fitness)."""
        if self.origin == "start":
            fresh = self.inner.init(key, jnp.zeros_like(self.solution), params)
            return jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), fresh, inner)
        fresh = self.inner.init(key, inner.best_solution, params)
        fresh = fresh.replace(std=jnp.asarray(self.sigma, jnp.asarray(fresh.std).dtype),
                              best_solution=inner.best_solution, best_fitness=inner.best_fitness)
        return jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), fresh, inner)

    def tell(self, key, z_PxK, fitness_P, state: RefineState, params):
        inner, metrics = self.inner.tell(key, z_PxK, fitness_P, state.inner, params)
        told = state.generation_counter + 1
        inner = jax.lax.cond(told == self.switch, lambda s: self.restart(jax.random.fold_in(key, 1), s, params),
                             lambda s: s, inner)
        return state.replace(inner=inner, generation_counter=told), metrics
