"""CMA-ES helpers on top of evosax 0.3.2: tie-safe ranking, lazy eigendecomposition, pycma stops.

1. Ties. evosax `weights_fitness_shaping_fn` (core/fitness_shaping.py) ranks with
   `jax.scipy.stats.rankdata` (average ranks for ties) and then indexes
   `params.weights[ranks.astype(int32)]`: tied members get the truncated average rank, so
   with 17 of 20 tied the recombination weights no longer sum to 1 (~0.5 instead).
   `tie_safe_weights_fitness_shaping_fn` uses ordinal ranks with ties broken by index
   (a stable argsort, as pycma sorts with `np.argsort`), identical to evosax when no ties.
   `with_tie_safe_ranks` builds any evosax strategy with it in place of the stock weights shaping.
2. `LazyCMA_ES`: evosax `CMA_ES._ask` (algorithms/distribution_based/cma_es.py) runs `eigh`
   on the K x K covariance every generation; this subclass refreshes B, D only when
   `generation_counter % params.eigen_every == 0` (a `lax.cond`, same state shapes) and
   samples with the stored B, D in between, like pycma's lazy update.
3. `pycma_stop_update` / `pycma_stops`: pycma's `tolfun` and `tolflatfitness` criteria
   (cma 4.5, evolution_strategy.py `_CMAStopDict._update`) from three per-generation numbers.

Everything is jittable and works inside `jax.lax.scan` (fixed-shape states, no host syncs).
Shape letters: P population, K dimension (num_dims), G generations, H pycma's best-f history.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from evosax.algorithms.distribution_based.cma_es import CMA_ES, eigen_decomposition
from evosax.algorithms.distribution_based.base import metrics_fn
from evosax.algorithms.distribution_based.cma_es import Params as CMAParams
from evosax.core.fitness_shaping import weights_fitness_shaping_fn
from flax import struct

__all__ = [
    "LazyCMA_ES",
    "LazyCMAParams",
    "StopParams",
    "StopState",
    "default_eigen_every",
    "flat_index",
    "generation_stats",
    "history_length",
    "with_tie_safe_ranks",
    "ordinal_ranks",
    "pycma_stop_init",
    "pycma_stop_update",
    "pycma_stops",
    "tie_safe_weights_fitness_shaping_fn",
]


# ---------------------------------------------------------------- 1. tie-safe ranking


def ordinal_ranks(fitness: jax.Array) -> jax.Array:
    """(P,) -> (P,) int32 ranks 0..P-1, ties broken by index, NaN ranked last (as evosax)."""
    f = jnp.where(jnp.isnan(fitness), jnp.inf, fitness)  # evosax _rank_fitness: NaN -> +inf
    return jnp.argsort(jnp.argsort(f, axis=-1, stable=True), axis=-1, stable=True).astype(jnp.int32)


def tie_safe_weights_fitness_shaping_fn(population, fitness, state, params) -> jax.Array:
    """Drop-in for evosax `weights_fitness_shaping_fn` with ordinal ranks: (P,) -> (P,) weights.

    Rank r gets `params.weights[r]`, so the positive weights always sum to 1 (pycma sorts
    with a stable order as well). Bitwise equal to evosax whenever the fitness has no ties.
    """
    weights = jnp.take(params.weights, ordinal_ranks(fitness), axis=-1)
    all_failed = jnp.all(jnp.isnan(fitness), axis=-1, keepdims=True)  # as evosax's version
    return jnp.where(all_failed, jnp.zeros_like(weights), weights)


def with_tie_safe_ranks(cls, population_size: int, solution, **kw):
    """Build evosax strategy `cls` with the tie-safe weights shaping.

    Replaces evosax's `weights_fitness_shaping_fn` whether it is `cls`'s default (CMA_ES,
    Sep_CMA_ES, MA_ES, LM_MA_ES, Rm_ES, SNES, xNES, CR_FM_NES, DES, SimpleES, SV_CMA_ES) or
    passed in `kw`. Other shapings are kept: `centered_rank_fitness_shaping_fn` (Open_ES,
    PGPE) averages tied ranks in float without truncation, so its values still sum to 0.
    Extra constructor arguments (`num_populations`, `optimizer`, `eigen_every`...) go in `kw`.
    """
    sig = inspect.signature(cls.__init__).parameters
    if "fitness_shaping_fn" in sig:
        fn = kw.get("fitness_shaping_fn", sig["fitness_shaping_fn"].default)
        if fn is weights_fitness_shaping_fn:
            kw["fitness_shaping_fn"] = tie_safe_weights_fitness_shaping_fn
    return cls(population_size=population_size, solution=solution, **kw)


# ---------------------------------------------------------------- 2. lazy eigendecomposition


def default_eigen_every(c_1, c_mu, num_dims: int) -> jax.Array:
    """Generations between eigendecompositions: max(1, floor(0.5 / ((c_1 + c_mu) K))).

    pycma's purecma.py: `lazy_gap_evals = 0.5 * N * lam * (c1 + cmu)**-1 / N**2` evaluations,
    i.e. 0.5 / ((c1 + cmu) N) generations (purecma refreshes once more than that many
    evaluations passed). pycma's CMAEvolutionStrategy is 5x more eager: evolution_strategy.py
    uses `lazy_update_gap = 1 / (c1 + cmu) / N / 10` generations (option `updatecovwait`).
    """
    return jnp.maximum(1, jnp.floor(0.5 / ((c_1 + c_mu) * num_dims))).astype(jnp.int32)


@struct.dataclass
class LazyCMAParams(CMAParams):
    eigen_every: jax.Array  # () int32: refresh B, D when generation_counter % eigen_every == 0


class LazyCMA_ES(CMA_ES):
    """evosax CMA_ES sampling with B, D refreshed every `params.eigen_every` generations.

    The state is evosax's CMA_ES State unchanged. With eigen_every=1 it is bitwise evosax
    CMA_ES. In between refreshes C is left as `tell` wrote it (evosax's `ask` stores the
    symmetrised, diagonally loaded C it decomposed; here that happens on refreshes only),
    and `tell` whitens with the stored B, D as pycma does between its lazy updates.
    """

    def __init__(
        self,
        population_size: int,
        solution,
        fitness_shaping_fn: Callable = weights_fitness_shaping_fn,
        metrics_fn: Callable = metrics_fn,
        eigen_every: int | None = None,
    ):
        super().__init__(population_size, solution, fitness_shaping_fn, metrics_fn)
        self.eigen_every = eigen_every

    @property
    def _default_params(self) -> LazyCMAParams:
        base = super()._default_params
        every = (
            default_eigen_every(base.c_1, base.c_mu, self.num_dims)
            if self.eigen_every is None
            else jnp.asarray(self.eigen_every, jnp.int32)
        )
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        return LazyCMAParams(**fields, eigen_every=every)

    def _ask(self, key, state, params):
        refresh = state.generation_counter % params.eigen_every == 0
        C, B, D = jax.lax.cond(
            refresh, lambda cbd: eigen_decomposition(cbd[0]), lambda cbd: cbd, (state.C, state.B, state.D)
        )
        # sampling exactly as evosax CMA_ES._ask, Eq. (38)-(40)
        z = jax.random.normal(key, (self.population_size, self.num_dims))
        z = (z @ jnp.diag(D).T) @ B.T
        population = state.mean[None, :] + state.std * z
        return population, state.replace(C=C, B=B, D=D)


# ---------------------------------------------------------------- 3. pycma stop criteria
# cma 4.5 evolution_strategy.py, _CMAStopDict._update, checked after each tell (countiter >= 1):
#   tolfun:  max(fit.fit) - min(fit.fit) < tolfun  and  max(fit.hist) - min(fit.hist) < tolfun
#            fit.fit: this generation's sorted f-values; fit.hist: best f of the last
#            len <= 10 + 30 N / popsize generations, this one included (`tell`).
#   tolflatfitness: flatfit_iterations counts consecutive generations with
#            not fit.fit[0] < fit.fit[int(0.75 * popsize)]; fires when it exceeds
#            tolflatfitness (default 1; options_parameters.py sets 3 + 30 n_int / N only
#            when integer_variables are given).
# Needed per generation: best = min f, worst = max f (inf when any is inf/NaN, as pycma's max),
# flat_ref = sorted f at index int(0.75 * popsize).  (Older pycma, 2.x/3.x, compared
# fit[0] with fit[ceil(0.1 + popsize / 4)] for its flat-fitness sigma increase.)


@struct.dataclass
class StopParams:
    tolfun: float = 1e-11  # pycma default
    tolflatfitness: int = 1  # pycma default without integer variables


@struct.dataclass
class StopState:
    hist: jax.Array  # (H,) ring buffer of best f
    count: jax.Array  # () generations seen
    flat_count: jax.Array  # () pycma fit.flatfit_iterations
    tolfun_gen: jax.Array  # () first generation (1-based) tolfun fired, 0 if not yet
    tolflatfitness_gen: jax.Array  # () same for tolflatfitness


def history_length(num_dims: int, popsize: int) -> int:
    """pycma's fit.hist length cap: pops while len > 10 + 30 N / popsize."""
    return math.floor(10 + 30 * num_dims / popsize)


def flat_index(popsize: int) -> int:
    """Sorted-fitness index pycma compares the best with for flat fitness."""
    return int(0.75 * popsize)


def generation_stats(fitness: jax.Array) -> jax.Array:
    """(P,) f-values -> (3,) [best, worst, flat_ref], NaN counted as +inf."""
    f = jnp.sort(jnp.where(jnp.isnan(fitness), jnp.inf, fitness))
    return jnp.stack([f[0], f[-1], f[flat_index(fitness.shape[-1])]])


def pycma_stop_init(num_dims: int, popsize: int) -> StopState:
    zero = jnp.zeros((), jnp.int32)
    return StopState(jnp.zeros(history_length(num_dims, popsize)), zero, zero, zero, zero)


def pycma_stop_update(stop: StopState, stats: jax.Array, params: StopParams = StopParams()):
    """One generation: stats (3,) from `generation_stats` -> (StopState, (tolfun, tolflat) bools)."""
    best, worst, flat_ref = stats[0], stats[1], stats[2]
    H = stop.hist.shape[0]
    hist = stop.hist.at[stop.count % H].set(best)
    count = stop.count + 1
    valid = jnp.arange(H) < count
    hist_range = jnp.max(jnp.where(valid, hist, -jnp.inf)) - jnp.min(jnp.where(valid, hist, jnp.inf))
    tolfun = (worst - best < params.tolfun) & (hist_range < params.tolfun)
    flat_count = jnp.where(best < flat_ref, 0, stop.flat_count + 1)
    tolflat = flat_count > params.tolflatfitness
    stop = StopState(
        hist=hist,
        count=count,
        flat_count=flat_count,
        tolfun_gen=jnp.where((stop.tolfun_gen == 0) & tolfun, count, stop.tolfun_gen),
        tolflatfitness_gen=jnp.where((stop.tolflatfitness_gen == 0) & tolflat, count, stop.tolflatfitness_gen),
    )
    return stop, (tolfun, tolflat)


def pycma_stops(stats: jax.Array, num_dims: int, popsize: int, params: StopParams = StopParams()):
    """stats (G, 3) -> (final StopState, tolfun (G,) bool, tolflatfitness (G,) bool).

    Row g holds `generation_stats` of generation g + 1; num_dims and popsize fix pycma's H.
    """
    stop = pycma_stop_init(num_dims, popsize)
    stop, (tolfun, tolflat) = jax.lax.scan(lambda s, x: pycma_stop_update(s, x, params), stop, stats)
    return stop, tolfun, tolflat
