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
2b. `PyCMA_ES(population_size, solution, fitness_shaping_fn, metrics_fn, eigen_every=None, tpa=None)`:
   LazyCMA_ES with pycma 4.5's defaults (`pycma_constants(num_dims, popsize)`): TPA step size
   for N >= 300 (pycma's default there; evosax's CSA is what made d=500 lag), pycma's c_1, c_mu,
   weights, CSA c_sigma/d_sigma, h_sigma and lazy gap. State `PyCMAState`, params `PyCMAParams`.
4. `bound_transform(x, lower, upper)`: pycma's BoundTransform / BoxConstraintsLinQuadTransformation.
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
from functools import partial

import jax
import jax.numpy as jnp
from evosax.algorithms.distribution_based.base import metrics_fn
from evosax.algorithms.distribution_based.cma_es import CMA_ES, eigen_decomposition
from evosax.algorithms.distribution_based.cma_es import Params as CMAParams
from evosax.algorithms.distribution_based.cma_es import State as CMAState
from evosax.core.fitness_shaping import weights_fitness_shaping_fn
from flax import struct

__all__ = [
    "LazyCMA_ES",
    "PyCMAParams",
    "PyCMAState",
    "PyCMA_ES",
    "TPA_DIMENSION",
    "bound_transform",
    "pycma_constants",
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

    def _lazy_refresh(self, state, params):
        """Decompose C (evosax `eigen_decomposition`) iff generation_counter % eigen_every == 0."""
        refresh = state.generation_counter % params.eigen_every == 0
        C, B, D = jax.lax.cond(
            refresh, lambda cbd: eigen_decomposition(cbd[0]), lambda cbd: cbd, (state.C, state.B, state.D)
        )
        return state.replace(C=C, B=B, D=D)

    def _ask(self, key, state, params):
        state = self._lazy_refresh(state, params)
        # sampling exactly as evosax CMA_ES._ask, Eq. (38)-(40)
        z = jax.random.normal(key, (self.population_size, self.num_dims))
        z = (z @ jnp.diag(state.D).T) @ state.B.T
        population = state.mean[None, :] + state.std * z
        return population, state


# ---------------------------------------------------------------- 2b. pycma's defaults
# cma 4.5 (options_parameters.py CMAParameters.set, sigma_adaptation.py, sampler.py) vs evosax:
# - step size: pycma's `AdaptSigma=True` picks TPA (two-point adaptation, CMAAdaptSigmaTPA)
#   when N >= evolution_strategy.TPA_dimension = 300, CSA below. evosax always uses CSA, whose
#   c_sigma ~ mu_eff / N is tiny at N=500: on the d=500 sphere (pop 20, 300 generations)
#   pycma forced to CSA ends at f ~ 77 like evosax, pycma with TPA at ~4 (experiments/cma_vs_pycma.md).
# - c_mu has an offset 0.25: 2 (0.25 + mueff + 1/mueff - 2) / ((N + 2)^2 + mueff) (evosax: no 0.25);
#   c_1 carries a factor min(1, popsize / 6); negative weights are finalized with these c_1, c_mu.
# - CSA: c_sigma = min(1/2, (mueff + 2) / (N + mueff + 3)), d_sigma = 1 + 2 max(0, a sqrt((mueff - 1)
#   / (N + 1)) - 1) + c_sigma with a = max(1, 3 (1 - 2^(-N/9))), log-step clipped to [-1, 1].
# - h_sigma: |p_sigma|^2 / (1 - (1 - c_sigma)^(2 t)) / N < 2 + 4 / (N + 1), t = 1, 2, ...
# - lazy eigendecomposition every 1 / (10 N (c_1 + c_mu)) generations (sampler.py), rounded up.
# - CMA_active=True (negative weights, as evosax), CMA_diagonal = 0 * 100 * N / popsize**0.5 = 0
#   (no separable phase), CMA_mirrors = popsize < 6 (none for popsize >= 6), cmean = 1, no std clip.


TPA_DIMENSION = 300  # cma.evolution_strategy.TPA_dimension


@struct.dataclass
class PyCMAState(CMAState):
    mean_shift: jax.Array  # (K,) mean - previous mean (zeros before the first tell)
    tpa_s: jax.Array  # () TPA's smoothed rank difference (pycma CMAAdaptSigmaTPA.s)


@struct.dataclass
class PyCMAParams(LazyCMAParams):
    tpa_damp: jax.Array  # () 0.7 + 2 ln N + 2 ln max(1, popsize - N)
    tpa_c: float = 0.3
    tpa_z_exponent: float = 0.5
    max_delta_log_sigma: float = 1.0  # CSA's clip of the log step-size change


def pycma_constants(num_dims: int, popsize: int) -> dict:
    """pycma 4.5 default strategy constants for dimension N and popsize >= 6 (no mirrors)."""
    N, lam = num_dims, popsize
    mu = lam // 2
    wp = [math.log((lam + 1) / 2) - math.log(i + 1) for i in range(lam)]
    pos, neg = wp[:mu], wp[mu:]
    mueff = sum(pos) ** 2 / sum(w * w for w in pos)
    mueff_minus = sum(neg) ** 2 / sum(w * w for w in neg) if neg else 0.0
    cc = (4 + mueff / N) / (N + 4 + 2 * mueff / N)
    c1 = min(1, lam / 6) * 2 / ((N + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (0.25 + mueff + 1 / mueff - 2) / ((N + 2) ** 2 + mueff))
    neg_sum = min(1 + c1 / cmu, (1 - c1 - cmu) / cmu / N, 1 + 2 * mueff_minus / (mueff + 2))
    weights = [w / sum(pos) for w in pos] + [neg_sum * w / abs(sum(neg)) for w in neg]
    cs = min(0.5, (mueff + 2) / (N + mueff + 3))
    damp_in = max(1, 3 * (1 - 0.5 ** (N / 9)))
    damps = 1 + 2 * max(0, damp_in * ((mueff - 1) / (N + 1)) ** 0.5 - 1) + cs
    chi_n = math.exp(0.5 * math.log(2) + math.lgamma((N + 1) / 2) - math.lgamma(N / 2))  # E|N(0, I_N)|, pycma Mh.chiN
    return dict(
        weights=weights, mu_eff=mueff, c_c=cc, c_1=c1, c_mu=cmu, c_std=cs, d_std=damps, chi_n=chi_n,
        eigen_every=max(1, math.ceil(1 / (c1 + cmu) / N / 10)),
        tpa_damp=0.7 + 2 * math.log(N) + 2 * math.log(max(1, lam - N)),
    )


class PyCMA_ES(LazyCMA_ES):
    """CMA-ES with pycma 4.5's defaults: TPA step size for N >= 300, pycma's constants.

    Same sampling / mean / covariance update as evosax CMA_ES (active CMA with negative
    weights, rank-mu rescaling of negative steps to Mahalanobis length sqrt(N)), lazy B, D
    refresh every `eigen_every` generations (default pycma's gap, `eigen_every=1` eager).

    TPA (`tpa=True`, default iff N >= 300, as pycma): from the second generation on, the
    first two members are mean +- sigma * chi * dm / |C^-1/2 dm| with dm the last mean shift
    and chi = |N(0, I)|; after evaluation z = (#{f < f_1} - #{f < f_0}) / (P - 1) (raw f, NaN
    as +inf), s <- (1 - c) s + c sign(z) |z|^0.5, sigma <- sigma exp(s / d). Without TPA, CSA
    with pycma's c_sigma, d_sigma and clipped log step. The state is a fixed-shape pytree.
    """

    def __init__(
        self,
        population_size: int,
        solution,
        fitness_shaping_fn: Callable = weights_fitness_shaping_fn,
        metrics_fn: Callable = metrics_fn,
        eigen_every: int | None = None,
        tpa: bool | None = None,
    ):
        super().__init__(population_size, solution, fitness_shaping_fn, metrics_fn, eigen_every)
        self.tpa = self.num_dims >= TPA_DIMENSION if tpa is None else bool(tpa)

    @property
    def _default_params(self) -> PyCMAParams:
        k = pycma_constants(self.num_dims, self.population_size)
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        every = k["eigen_every"] if self.eigen_every is None else self.eigen_every
        return PyCMAParams(
            std_init=jnp.asarray(1.0), std_min=0.0, std_max=1e8,
            weights=f32(k["weights"]), mu_eff=f32(k["mu_eff"]), c_mean=1.0,
            c_std=f32(k["c_std"]), d_std=f32(k["d_std"]), c_c=f32(k["c_c"]), c_1=f32(k["c_1"]),
            c_mu=f32(k["c_mu"]), chi_n=f32(k["chi_n"]),
            eigen_every=jnp.asarray(every, jnp.int32), tpa_damp=f32(k["tpa_damp"]),
        )

    def _init(self, key, params):
        base = super()._init(key, params)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        return PyCMAState(**fields, mean_shift=jnp.zeros(self.num_dims), tpa_s=jnp.zeros(()))

    def _ask(self, key, state, params):
        if not self.tpa:
            return super()._ask(key, state, params)
        key_pop, key_chi = jax.random.split(key)
        population, state = super()._ask(key_pop, state, params)
        dm = state.mean_shift
        maha = jnp.linalg.norm((state.B.T @ dm) / state.D)  # |C^-1/2 dm| with the sampling B, D
        chi = jnp.linalg.norm(jax.random.normal(key_chi, (self.num_dims,)))
        y = dm * jnp.where(maha > 0, chi / jnp.where(maha > 0, maha, 1.0), 0.0)
        use = (state.generation_counter > 0) & (maha > 0)  # pycma: no injection in generation 1
        mirrored = state.mean + state.std * jnp.stack([y, -y])
        population = population.at[:2].set(jnp.where(use, mirrored, population[:2]))
        return population, state

    @partial(jax.jit, static_argnames=("self",))
    def tell(self, key, population, fitness, state, params):
        if self.tpa:  # TPA reads the raw f-values of members 0 and 1 (pycma: unsorted input order)
            f = jnp.where(jnp.isnan(fitness), jnp.inf, fitness)
            z = (jnp.sum(f < f[1]) - jnp.sum(f < f[0])) / (self.population_size - 1)
            s = (1 - params.tpa_c) * state.tpa_s + params.tpa_c * jnp.sign(z) * jnp.abs(z) ** params.tpa_z_exponent
            state = state.replace(tpa_s=s)
        return super().tell(key, population, fitness, state, params)

    def _tell(self, key, population, fitness, state, params):
        new = super()._tell(key, population, fitness, state, params)
        if self.tpa:  # replace CSA's std by TPA's (p_std is still kept: it drives h_sigma)
            std = jnp.clip(state.std * jnp.exp(new.tpa_s / params.tpa_damp), params.std_min, params.std_max)
            new = new.replace(std=std)
        return new.replace(mean_shift=new.mean - state.mean)

    def update_std(self, std, norm_p_std, params):
        """pycma CSA: log step clipped to +-max_delta_log_sigma."""
        log_step = (params.c_std / params.d_std) * (norm_p_std / params.chi_n - 1)
        log_step = jnp.clip(log_step, -params.max_delta_log_sigma, params.max_delta_log_sigma)
        return jnp.clip(std * jnp.exp(log_step), min=params.std_min, max=params.std_max)

    def h_std(self, norm_p_std, generation_counter, params):
        """pycma CMAAdaptSigmaBase.hsig; evosax's _tell passes t = countiter (1 on the first tell)."""
        squared = norm_p_std**2 / (1 - (1 - params.c_std) ** (2 * generation_counter))
        return squared / self.num_dims - 1 < 1 + 4.0 / (self.num_dims + 1)


# ---------------------------------------------------------------- 4. pycma bound transform


def bound_transform(x: jax.Array, lower, upper) -> jax.Array:
    """pycma's BoxConstraintsLinQuadTransformation (the BoundTransform repair), elementwise.

    Genotype x (any shape) -> phenotype in [lower, upper] (scalars or broadcastable arrays,
    +-inf allowed): identity on [lb + al, ub - au], quadratic towards the bounds, mirrored
    beyond lb - al / ub + au and periodic with period 2 (ub - lb + al + au), where
    al = min((ub - lb) / 2, max(1, |lb|) / 20), au likewise with ub (margin_width2), or 1 for
    an infinite bound. Same steps as cma 4.5 transformations.py `__call__`.
    """
    x = jnp.asarray(x)
    dtype = jnp.result_type(x.dtype, jnp.float32)
    y = x.astype(dtype)
    lb = jnp.broadcast_to(jnp.asarray(lower, dtype), y.shape)
    ub = jnp.broadcast_to(jnp.asarray(upper, dtype), y.shape)
    half = (ub - lb) / 2
    al = jnp.where(jnp.isfinite(lb), jnp.minimum(half, jnp.maximum(1.0, jnp.abs(lb)) / 20), 1.0)
    au = jnp.where(jnp.isfinite(ub), jnp.minimum(half, jnp.maximum(1.0, jnp.abs(ub)) / 20), 1.0)
    far = (y < lb - 2 * al - half) | (y > ub + 2 * au + half)
    r = 2 * (ub - lb + al + au)  # period
    start = lb - 2 * al - half
    y = jnp.where(far, y - r * jnp.floor_divide(y - start, r), y)
    y = jnp.where(y > ub + au, y - 2 * (y - ub - au), y)
    y = jnp.where(y < lb - al, y + 2 * (lb - al - y), y)
    y = jnp.where(y < lb + al, lb + (y - (lb - al)) ** 2 / 4 / al, y)
    y = jnp.where(y > ub - au, ub - (y - (ub + au)) ** 2 / 4 / au, y)
    return y


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
