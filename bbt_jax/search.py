"""The search: an evosax strategy minimising the training loss of z, with dev selection.

`Search` knows nothing about models: it takes a strategy (strategy.py) and, at call
time, two problems (problem.PromptProblem, the fitness contract plus the projection): one
on the training rows, one on dev. One generation = ask -> one fused population
evaluation -> tell. The generations between two dev evaluations run in
`jax.lax.scan` inside ONE compiled call that also scores one candidate of the
interval on dev and keeps the best-on-dev z, so
the host syncs once per interval (one `jax.device_get`). A final, shorter interval
does not recompile: generations past the budget are skipped with `lax.cond`.

Selection, as Black-Box-Tuning `bbt.py` (eval_every, best_dev_perf): every
`eval_every` calls a candidate is scored on dev and kept if its dev metric is
strictly better than the best so far. Which candidate (`dev_candidate`): bbt.py run
serially (its run.sh) scores the member evaluated at the call where calls % eval_every
== 0, i.e. the last member of the interval's last generation when eval_every is a
multiple of the population ("at-eval"); our default scores the interval's
lowest-train-loss candidate ("window-best"). The best-on-dev z is evaluated on test.
Smoothing (`dev_smooth` W > 1, every method): a candidate is judged by the mean dev metric (and loss) of the
last W dev evaluations, itself the newest of them (`DevWindow`): one evaluation on a few dev rows is noisy,
consecutive candidates of one search are near each other, and a run of good evaluations is better evidence.

Train+dev cross-validation (`swap_at` > 0, --cv-folds 2): from generation `swap_at` on (a whole number of
intervals) the intervals get the two problems swapped (`fold`), so the search runs on the dev rows and
scores its candidates on the train rows, and the strategy restarts at z = 0 there (strategy.with_restart). The
best-on-dev record spans both folds: every candidate is judged on rows it was not searched on.

Bounds (`bound` > 0): "transform" is pycma's BoundTransform (cma.bound_transform), as
bbt.py gets from pycma: the loss is evaluated at the box-transformed z and the strategy
is told the unbounded genotype; "clip" clips and tells the clipped z.

Shape letters (bbt_jax/types.py): P population, K intrinsic dim, G generations of one interval.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from bbt_jax.cma import bound_transform, generation_stats
from bbt_jax.config import SearchConfig
from bbt_jax.errors import UserError
from bbt_jax.problem import PromptProblem
from bbt_jax.strategy import Strategy

# A non-finite loss is replaced by this before `tell`, so it ranks last and is never best.
NONFINITE_LOSS = 1e30


def _evosax_promotion():
    """evosax relies on implicit rank promotion; allow it there even under strict settings."""
    return jax.numpy_rank_promotion("allow")


@struct.dataclass
class DevWindow:
    """The last W dev evaluations (--dev-smooth W > 1): `recent_Wx2` (metric, loss) per evaluation, newest
    first, NaN where none yet; `best_2` the selected candidate's smoothed (metric, loss)."""

    recent_Wx2: jax.Array  # float32
    best_2: jax.Array  # float32, (-inf, inf) before the first selection


def dev_window(smooth: int) -> DevWindow | None:
    """The empty window of --dev-smooth `smooth`; None when off (1), so the state keeps its old layout and
    checkpoints written before the window existed restore unchanged."""
    if smooth <= 1:
        return None
    return DevWindow(recent_Wx2=jnp.full((smooth, 2), jnp.nan, jnp.float32),
                     best_2=jnp.asarray([-jnp.inf, jnp.inf], jnp.float32))


@struct.dataclass
class SearchState:
    es_state: object  # evosax state
    key: jax.Array  # PRNG key, split every generation
    generation: jax.Array  # int32, generations done
    best_dev_perf: jax.Array  # float32, -inf before the first dev evaluation
    best_dev_loss: jax.Array  # float32, dev loss of the best-on-dev candidate
    best_dev_z: jax.Array  # float32 candidate (K; Y x K for deep prompts), the best on dev
    best_dev_generation: jax.Array  # int32, generation at which it was scored (-1: none)
    best_train_loss: jax.Array  # float32, lowest finite training loss seen
    window_loss: jax.Array  # float32, lowest training loss in the current interval
    window_z: jax.Array  # its candidate
    last_loss: jax.Array  # float32, training loss of the last member evaluated (bbt.py's "at-eval" candidate)
    last_z: jax.Array  # that member
    nonfinite: jax.Array  # int32, non-finite losses seen so far
    dev_window: DevWindow | None = None  # --dev-smooth > 1: the recent dev evaluations (select_on_dev)


def _step_size(es_state) -> jax.Array:
    """The strategy's step size (mean over coordinates where it is a vector); NaN where it has none."""
    std = getattr(es_state, "std", None)
    return jnp.mean(std).astype(jnp.float32) if std is not None else jnp.asarray(jnp.nan, jnp.float32)


class Search:
    """Builds the jitted interval function once; holds only static settings.

    `strategy`: a registered evosax strategy (strategy.make_strategy); `config`: the schedule
    (popsize, budget, eval_every), the bound and its handling, the dev candidate and tie-break
    (the loss and the population chunk belong to the fitness); `mesh`: shard the
    population axis over the mesh's first axis (several devices, or every process's devices:
    distributed.mesh()), outputs replicated; None: one device; `generations`: the
    number of generations where the method counts them otherwise (BBTv2's rounds; default budget // popsize);
    `swap_at`: the generation from which train and dev swap roles (cross-validation; 0: never).
    """

    def __init__(self, strategy: Strategy, *, config: SearchConfig, mesh: jax.sharding.Mesh | None = None,
                 generations: int | None = None, swap_at: int = 0):
        self.strategy = strategy
        self.es = strategy.es
        self.mesh = mesh
        self.config = config
        self.solution = jnp.zeros_like(strategy.es.solution, dtype=jnp.float32)  # a candidate's shape: K, or Y x K
        self.total_generations = config.generations if generations is None else int(generations)
        self.generations_per_eval = config.generations_per_eval
        self.num_intervals = -(-self.total_generations // self.generations_per_eval)
        if swap_at % self.generations_per_eval:
            raise ValueError(f"swap_at {swap_at}: not a multiple of the interval ({self.generations_per_eval})")
        self.swap_at = int(swap_at)
        if config.dev_candidate == "mean":
            with _evosax_promotion():
                shape = jax.eval_shape(self.es.init, jax.random.PRNGKey(0), self.solution, self.es_params())
            if getattr(shape, "mean", None) is None:
                raise UserError(f"--dev-candidate mean: strategy {strategy.name} keeps no mean; use window-best")
        # With a mesh (several devices, or every process's: distributed.py) the outputs are replicated, so
        # that every process can pull them (`jax.device_get`) and feed them back.
        out = {} if mesh is None else {"out_shardings": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())}
        self.interval = jax.jit(self._interval, **out)
        self.dev_init = jax.jit(self._dev_init, **out)

    # -- state -------------------------------------------------------------
    def es_params(self, sigma: float | None = None):
        """evosax params; numeric, so a new sigma does not recompile (strategy.Strategy.params)."""
        return self.strategy.params(sigma)

    def init(self, key: jax.Array, es_params=None) -> SearchState:
        es_params = self.es_params() if es_params is None else es_params
        key, k_init = jax.random.split(key)
        z0 = self.solution  # z = 0: the initial prompt p0
        with _evosax_promotion():
            es_state = self.es.init(k_init, z0, es_params)
        # evosax leaves some fields weakly typed; fix them so the first interval's output
        # state has the same types as its input (no second compilation).
        es_state = jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), es_state)
        return SearchState(
            es_state=es_state, key=key, generation=jnp.asarray(0, jnp.int32),
            best_dev_perf=jnp.asarray(-jnp.inf, jnp.float32), best_dev_loss=jnp.asarray(jnp.inf, jnp.float32),
            best_dev_z=z0,
            best_dev_generation=jnp.asarray(-1, jnp.int32),
            best_train_loss=jnp.asarray(jnp.inf, jnp.float32),
            window_loss=jnp.asarray(jnp.inf, jnp.float32), window_z=z0,
            last_loss=jnp.asarray(jnp.inf, jnp.float32), last_z=z0,
            nonfinite=jnp.asarray(0, jnp.int32), dev_window=dev_window(self.config.dev_smooth))

    # -- one generation ----------------------------------------------------
    def _generation(self, train: PromptProblem, es_params, state: SearchState):
        key, k_ask, k_tell = jax.random.split(state.key, 3)
        with _evosax_promotion():
            genotype_PxK, es_state = self.es.ask(k_ask, state.es_state, es_params)
        genotype_PxK = self.shard_population(genotype_PxK)
        z_PxK, told_PxK = self._bounded(genotype_PxK)
        loss_P, metrics_P = train(z_PxK)
        finite_P = jnp.isfinite(loss_P)
        safe_P = jnp.where(finite_P, loss_P, NONFINITE_LOSS)
        with _evosax_promotion():
            es_state, _ = self.es.tell(k_tell, told_PxK, safe_P, es_state, es_params)
        i = jnp.argmin(safe_P)
        better = finite_P[i] & (safe_P[i] < state.window_loss)  # a non-finite loss never enters the window
        n_finite = jnp.maximum(jnp.sum(finite_P), 1)
        state = state.replace(
            es_state=es_state, key=key, generation=state.generation + 1,
            best_train_loss=jnp.minimum(state.best_train_loss, jnp.where(finite_P[i], safe_P[i], jnp.inf)),
            window_loss=jnp.where(better, safe_P[i], state.window_loss),
            window_z=jnp.where(better, z_PxK[i], state.window_z),
            last_loss=loss_P[-1], last_z=z_PxK[-1],
            nonfinite=state.nonfinite + jnp.sum(~finite_P))
        stats = generation_stats(loss_P)  # best, worst, pycma's flat-fitness reference: its stop criteria
        metrics = {"best_loss": safe_P[i], "mean_loss": jnp.sum(jnp.where(finite_P, loss_P, 0.0)) / n_finite,
                   "best_perf": metrics_P["perf"][i], "nonfinite": jnp.sum(~finite_P),
                   "worst_loss": stats[1], "flat_ref_loss": stats[2], "step_size": _step_size(es_state)}
        return state, metrics

    def _bounded(self, genotype_PxK):
        """(z evaluated, z told to the strategy): pycma's BoundTransform evaluates the box-transformed
        phenotype and updates on the genotype; "clip" clips and tells the clipped z."""
        b = self.config.bound
        if b <= 0:
            return genotype_PxK, genotype_PxK
        if self.config.bound_handling == "transform":
            return bound_transform(genotype_PxK, -b, b), genotype_PxK
        clipped = jnp.clip(genotype_PxK, -b, b)
        return clipped, clipped

    def shard_population(self, z_PxK):
        """Spread the members over the mesh's first axis; the frozen model stays replicated."""
        if self.mesh is None:
            return z_PxK
        spec = jax.sharding.PartitionSpec(self.mesh.axis_names[0], *([None] * (z_PxK.ndim - 1)))
        return jax.lax.with_sharding_constraint(z_PxK, jax.sharding.NamedSharding(self.mesh, spec))

    def _skip(self, state: SearchState):
        zero = jnp.asarray(0.0, jnp.float32)
        return state, {"best_loss": zero, "mean_loss": zero, "best_perf": zero,
                       "nonfinite": jnp.asarray(0, jnp.int32), "worst_loss": zero, "flat_ref_loss": zero,
                       "step_size": zero}

    # -- dev selection -----------------------------------------------------
    def _dev_update(self, dev: PromptProblem, state: SearchState, z_K, valid=True):
        """`valid` False (no finite training loss in the interval): score, but never select."""
        loss, metrics = dev.fitness.member(dev.projection(z_K))
        return select_on_dev(state, z_K, loss, metrics, tiebreak_loss=self.config.dev_tiebreak_loss, valid=valid,
                             by=self.config.select_by, start_margin=self.config.start_margin)

    def _dev_init(self, dev: PromptProblem, state: SearchState):
        return self._dev_update(dev, state, jnp.zeros_like(state.best_dev_z))

    def _interval(self, train: PromptProblem, dev: PromptProblem, es_params, state: SearchState):
        """`generations_per_eval` generations in lax.scan, then one dev evaluation."""

        def body(state, _):
            return jax.lax.cond(state.generation < self.total_generations,
                                lambda s: self._generation(train, es_params, s),
                                self._skip, state)

        state, gen_metrics_G = jax.lax.scan(body, state, None, length=self.generations_per_eval)
        if self.config.dev_candidate == "at-eval":  # bbt.py serial: the member evaluated at that call
            z_K, valid = state.last_z, jnp.isfinite(state.last_loss)
        elif self.config.dev_candidate == "mean":  # the distribution's centre, bounded as a member would be
            z_K = self._bounded(state.es_state.mean[None])[0][0].astype(jnp.float32)
            valid = jnp.isfinite(state.best_train_loss)
        else:  # the interval's lowest training loss
            z_K, valid = state.window_z, jnp.isfinite(state.window_loss)
        state, dev_metrics = self._dev_update(dev, state, z_K, valid=valid)
        state = state.replace(window_loss=jnp.asarray(jnp.inf, jnp.float32))
        return state, {"generations": gen_metrics_G, "dev": dev_metrics, "generation": state.generation,
                       "best_train_loss": state.best_train_loss, "nonfinite": state.nonfinite}

    # -- host loop ---------------------------------------------------------
    def curve_row(self, t: int, gens, j: int) -> dict:
        """The curve's row of generation t from the interval's host metrics (`gens`, index j): calls, the
        population's best/mean/worst loss, pycma's flat-fitness reference, the step size."""
        return {"generation": t, "calls": t * self.config.popsize,
                "best_loss": float(gens["best_loss"][j]), "mean_loss": float(gens["mean_loss"][j]),
                "best_perf": float(gens["best_perf"][j]), "nonfinite": int(gens["nonfinite"][j]),
                "worst_loss": float(gens["worst_loss"][j]), "flat_ref_loss": float(gens["flat_ref_loss"][j]),
                "step_size": float(gens["step_size"][j])}

    def run(self, train: PromptProblem, dev: PromptProblem, state: SearchState, *, es_params=None,
            history: list | None = None, on_interval: Callable | None = None):
        """Run the remaining intervals (`run_intervals`); returns (state, history)."""
        es_params = self.es_params() if es_params is None else es_params
        return run_intervals(self, train, dev, state, es_params, history=history, on_interval=on_interval)


def select_on_dev(state, candidate, loss, metrics, *, tiebreak_loss: bool, valid=True, by: str = "metric",
                  start_margin: float = -1.0):
    """bbt.py's dev selection, for every method's state (fields best_dev_perf/loss/z/generation, dev_window):
    `candidate` (any pytree) replaces the best if its dev metric is strictly better (or equal with a lower
    dev loss under `tiebreak_loss`), its dev loss is finite and `valid`. `by` "loss": strictly lower dev
    loss instead (best_dev_perf then holds the selected candidate's metric). With a `DevWindow` (--dev-smooth)
    the comparison uses the mean (metric, loss) of the window's evaluations, this one included (a valid,
    finite one enters the window); best_dev_perf/loss keep the selected candidate's own scores.
    `start_margin` >= 0 (--start-margin, with `by` "metric"): while the kept candidate is z = 0 (scored first, at
    generation 0), a candidate must exceed its dev metric by more than the margin, and a tie never replaces it.
    Returns (state, dev record)."""
    ok = valid & jnp.isfinite(loss)  # a candidate whose dev loss is NaN/inf is never selected
    perf, score_loss, best_perf, best_loss = metrics["perf"], loss, state.best_dev_perf, state.best_dev_loss
    window = getattr(state, "dev_window", None)
    if window is not None:
        shifted = jnp.concatenate([jnp.stack([perf, loss]).astype(jnp.float32)[None], window.recent_Wx2[:-1]])
        recent = jnp.where(ok, shifted, window.recent_Wx2)
        perf, score_loss = jnp.nanmean(recent[:, 0]), jnp.nanmean(recent[:, 1])
        best_perf, best_loss = window.best_2[0], window.best_2[1]
    at_start = jnp.asarray(False)
    if start_margin >= 0:  # z = 0 is scored at generation 0, every candidate after a generation
        at_start = state.best_dev_generation == 0
    better = perf > best_perf + jnp.where(at_start, start_margin, 0.0)
    if by == "loss":
        better = score_loss < best_loss
    elif tiebreak_loss:  # equal dev metric, lower dev loss (32 dev rows tie often)
        better |= (perf == best_perf) & (score_loss < best_loss) & ~at_start
    better = ok & better
    state = state.replace(
        best_dev_perf=jnp.where(better, metrics["perf"], state.best_dev_perf),
        best_dev_loss=jnp.where(better, loss, state.best_dev_loss),
        best_dev_z=jax.tree.map(lambda new, old: jnp.where(better, new, old), candidate, state.best_dev_z),
        best_dev_generation=jnp.where(better, state.generation, state.best_dev_generation))
    record = {"dev_loss": loss, "dev_perf": metrics["perf"], "dev_acc": metrics["acc"],
              "best_dev_perf": state.best_dev_perf, "improved": better}
    if window is not None:
        best_2 = jnp.where(better, jnp.stack([perf, score_loss]), window.best_2)
        state = state.replace(dev_window=DevWindow(recent_Wx2=recent, best_2=best_2))
        record["smoothed_perf"] = perf
    return state, record


def run_intervals(search, train, dev, state, es_params, *, history: list | None = None,
                  on_interval: Callable | None = None):
    """The host loop of every method: `search.interval` until `search.total_generations`, ONE
    `jax.device_get` per interval; returns (state, history).

    `history` holds one dict per generation (`search.curve_row`, the curve) and is extended in place; the
    interval's dev record goes on its last row; `on_interval(state, history, record)` is called after every
    interval with host values (logging, checkpoints)."""
    history = [] if history is None else history
    while len(history) < search.total_generations:
        state, out = search.interval(*fold(search, train, dev, len(history)), es_params, state)
        record = absorb_interval(search, history, jax.device_get(out))  # the one host sync of this interval
        if on_interval is not None:
            on_interval(state, history, record)
    return state, history


def fold(search, train, dev, generation: int) -> tuple:
    """(searched, scored) problems of the interval that starts at `generation`: (train, dev), swapped from the
    search's `swap_at` on (Search's cross-validation; a search without that attribute never swaps). Host
    side: the interval's arguments, in every loop that calls it (run_intervals, the sweep's seed groups)."""
    swap_at = getattr(search, "swap_at", 0)
    return (dev, train) if swap_at and generation >= swap_at else (train, dev)


def absorb_interval(search, history: list, out: dict) -> dict:
    """Append an interval's host output to `history` (one `search.curve_row` per new generation, the dev
    record on the last); returns that record."""
    done = len(history)
    history.extend(search.curve_row(t, out["generations"], t - done - 1)
                   for t in range(done + 1, int(out["generation"]) + 1))
    done, d = int(out["generation"]), out["dev"]
    record = {"generation": done, "calls": history[-1]["calls"], "dev_perf": float(d["dev_perf"]),
              "dev_acc": float(d["dev_acc"]), "dev_loss": float(d["dev_loss"]),
              "best_dev_perf": float(d["best_dev_perf"]), "improved": bool(d["improved"]),
              "best_train_loss": float(out["best_train_loss"]), "nonfinite": int(out["nonfinite"])}
    if "smoothed_perf" in d:  # --dev-smooth: the mean dev metric of the window that judged this candidate
        record["smoothed_perf"] = float(d["smoothed_perf"])
    history[-1]["dev"] = record
    return record
