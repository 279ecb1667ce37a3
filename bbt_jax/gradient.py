"""Gradient baselines on the fitness contract: prompt tuning and deep prompt tuning with optax.

`GradientSearch` trains a candidate pytree by gradient descent on
`train.fitness.member(train.projection(params))`: with `prompt.Identity()` and params the
N x D prompt this is prompt tuning (Lester et al. 2021), with params
{"input": N x D, "layers": Y x N x D} deep prompt tuning (P-tuning v2, Liu et al. 2022),
and with a BBT projection and params z (K) "gradient BBT"; nothing is special-cased.

It has the interface of search.Search as a train loop uses it: one "generation" is one
optimizer step, i.e. one forward+backward pass over the whole training split (`budget`
counts steps), and the dev cadence `eval_every` counts steps as BBT counts calls. The steps
between two dev evaluations run in `jax.lax.scan` inside ONE compiled call that then
scores the current params on dev and keeps the best-on-dev params by the rule every
method shares (`search.select_on_dev`); the host syncs once per interval. Steps past the budget are
skipped with `lax.cond`, so the last, shorter interval does not recompile.

A step whose loss or gradient is non-finite leaves params and optimizer state unchanged
(as optax.apply_if_finite: the schedule does not advance either) and is counted.

Shape letters (bbt_jax/types.py): N prompt tokens, D hidden, Y layers, K intrinsic dim,
G steps of one interval.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from bbt_jax.config import GradientConfig, SearchConfig
from bbt_jax.problem import PromptProblem
from bbt_jax.search import NONFINITE_LOSS, DevWindow, dev_window, run_intervals, select_on_dev
from bbt_jax.types import Prompt


def make_schedule(g: GradientConfig, total_steps: int) -> optax.Schedule:
    """Learning rate of the update with index t (0-based): linear warmup from 0 to `lr` over
    `warmup_steps`, then constant, linear decay to 0 or cosine decay to 0 over the remaining steps."""
    decay_steps = max(total_steps - g.warmup_steps, 1)
    if g.lr_schedule == "constant":
        main = optax.constant_schedule(g.lr)
    elif g.lr_schedule == "linear":
        main = optax.linear_schedule(g.lr, 0.0, decay_steps)
    else:  # cosine
        main = optax.cosine_decay_schedule(g.lr, decay_steps, alpha=0.0)
    if g.warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, g.lr, g.warmup_steps)
    return optax.join_schedules([warmup, main], [g.warmup_steps])


def make_optimizer(g: GradientConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm (when `clip_norm` > 0), then the optimizer on `make_schedule`'s learning rate."""
    schedule = make_schedule(g, total_steps)
    if g.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=g.weight_decay)
    elif g.optimizer == "adam":
        opt = optax.adam(schedule)
    elif g.optimizer == "adafactor":
        opt = optax.adafactor(learning_rate=schedule)
    else:  # sgd
        opt = optax.sgd(schedule)
    return optax.chain(optax.clip_by_global_norm(g.clip_norm), opt) if g.clip_norm > 0 else opt


def _as_f32(tree):
    """float32 (strongly typed) copies of a candidate pytree's leaves."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _strong(tree):
    """Drop weak types, so an interval's output state has its input's types (no second compilation)."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@struct.dataclass
class GradientState:
    params: Prompt  # float32 candidate being trained: N x D, {"input": N x D, "layers": Y x N x D}, or z (K)
    opt_state: object  # optax state of `GradientSearch.optimizer`
    key: jax.Array  # PRNG key (the full-batch gradient is deterministic; kept for the search's layout)
    generation: jax.Array  # int32, steps done (skipped non-finite steps included)
    best_dev_perf: jax.Array  # float32, -inf before the first dev evaluation
    best_dev_loss: jax.Array  # float32, dev loss of the best-on-dev params
    best_dev_z: Prompt  # pytree like params: the best-on-dev params
    best_dev_generation: jax.Array  # int32, step at which they were scored (-1: none)
    best_train_loss: jax.Array  # float32, lowest finite training loss seen
    nonfinite: jax.Array  # int32, steps whose loss or gradient was non-finite (not applied)
    dev_window: DevWindow | None = None  # --dev-smooth > 1: the recent dev evaluations (search.select_on_dev)


class GradientSearch:
    """Builds the jitted interval function once; holds only static settings.

    `x0`: the initial candidate pytree (e.g. the layout's p0, or {"input": p0, "layers": zeros});
    `config`: budget (steps), eval_every (steps between dev evaluations), dev_tiebreak_loss;
    `gradient`: the optimizer and its schedule.
    """

    def __init__(self, x0: Prompt, *, config: SearchConfig, gradient: GradientConfig):
        self.config = config
        self.gradient = gradient
        self.x0 = _as_f32(x0)
        self.total_generations = config.budget  # one generation = one optimizer step
        self.generations_per_eval = config.eval_every
        self.num_intervals = -(-self.total_generations // self.generations_per_eval)
        self.schedule = make_schedule(gradient, self.total_generations)
        self.optimizer = make_optimizer(gradient, self.total_generations)
        self.interval = jax.jit(self._interval)
        self.dev_init = jax.jit(self._dev_init)

    # -- state -------------------------------------------------------------
    def es_params(self, sigma: float | None = None):
        """No strategy params: the slot of search.Search's signatures, always None."""
        return None

    def init(self, key: jax.Array, es_params=None) -> GradientState:
        params = self.x0
        return GradientState(
            params=params, opt_state=_strong(self.optimizer.init(params)), key=key,
            generation=jnp.asarray(0, jnp.int32),
            best_dev_perf=jnp.asarray(-jnp.inf, jnp.float32), best_dev_loss=jnp.asarray(jnp.inf, jnp.float32),
            best_dev_z=params, best_dev_generation=jnp.asarray(-1, jnp.int32),
            best_train_loss=jnp.asarray(jnp.inf, jnp.float32), nonfinite=jnp.asarray(0, jnp.int32),
            dev_window=dev_window(self.config.dev_smooth))

    # -- one step ----------------------------------------------------------
    def _step(self, train: PromptProblem, state: GradientState):
        """One forward+backward over the training split and one optimizer update (skipped if non-finite)."""

        def loss_fn(params):
            return train.fitness.member(train.projection(params))

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        ok = jnp.isfinite(loss) & _all_finite(grads)
        # the schedule's count is the number of applied updates (skipped steps do not advance it)
        lr = jnp.asarray(self.schedule(state.generation - state.nonfinite), jnp.float32)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        safe = jnp.where(ok, loss, NONFINITE_LOSS).astype(jnp.float32)
        state = state.replace(
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            generation=state.generation + 1,
            best_train_loss=jnp.where(ok, jnp.minimum(state.best_train_loss, loss), state.best_train_loss),
            nonfinite=state.nonfinite + (~ok).astype(jnp.int32))
        metrics = {"loss": safe, "perf": jnp.asarray(metrics["perf"], jnp.float32),
                   "nonfinite": (~ok).astype(jnp.int32), "lr": lr,
                   "grad_norm": jnp.asarray(optax.global_norm(grads), jnp.float32)}
        return state, metrics

    def _skip(self, state: GradientState):
        zero = jnp.asarray(0.0, jnp.float32)
        return state, {"loss": zero, "perf": zero, "nonfinite": jnp.asarray(0, jnp.int32), "lr": zero,
                       "grad_norm": zero}

    # -- dev selection (search.select_on_dev, the rule of every method) ----
    def _dev_update(self, dev: PromptProblem, state: GradientState, params):
        loss, metrics = dev.fitness.member(dev.projection(params))
        return select_on_dev(state, params, loss, metrics, tiebreak_loss=self.config.dev_tiebreak_loss,
                             by=self.config.select_by, start_margin=self.config.start_margin)

    def _dev_init(self, dev: PromptProblem, state: GradientState):
        """Score the current params (x0 before any step) on dev first."""
        return self._dev_update(dev, state, state.params)

    def _interval(self, train: PromptProblem, dev: PromptProblem, es_params, state: GradientState):
        """`generations_per_eval` steps in lax.scan, then one dev evaluation of the params reached."""

        def body(state, _):
            return jax.lax.cond(state.generation < self.total_generations,
                                lambda s: self._step(train, s), self._skip, state)

        state, step_metrics_G = jax.lax.scan(body, state, None, length=self.generations_per_eval)
        state, dev_metrics = self._dev_update(dev, state, state.params)
        return state, {"generations": step_metrics_G, "dev": dev_metrics, "generation": state.generation,
                       "best_train_loss": state.best_train_loss, "nonfinite": state.nonfinite}

    # -- host loop ---------------------------------------------------------
    def curve_row(self, t: int, steps, j: int) -> dict:
        """Step t's curve row: the keys of Search's curve (best_loss, mean_loss, worst_loss and flat_ref_loss
        all hold that step's training loss, taken at the params before its update; NONFINITE_LOSS where
        non-finite; step_size is the learning rate) plus grad_norm (before clipping) and passes
        (forward+backward passes so far)."""
        loss = float(steps["loss"][j])
        return {"generation": t, "calls": t, "best_loss": loss, "mean_loss": loss,
                "best_perf": float(steps["perf"][j]), "nonfinite": int(steps["nonfinite"][j]),
                "worst_loss": loss, "flat_ref_loss": loss, "step_size": float(steps["lr"][j]),
                "grad_norm": float(steps["grad_norm"][j]), "passes": t}

    def run(self, train: PromptProblem, dev: PromptProblem, state: GradientState, *, es_params=None,
            history: list | None = None, on_interval: Callable | None = None):
        """Run the remaining intervals (search.run_intervals); returns (state, history)."""
        return run_intervals(self, train, dev, state, es_params, history=history, on_interval=on_interval)
