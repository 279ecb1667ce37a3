"""The strategy registry, taken from evosax 0.3's own `algorithms` mapping.

Every distribution-based evosax algorithm that runs with only a population size and a
solution template is selectable by name (`--strategy cma_es`, `--strategy SNES`, case and
'-'/'_' ignored). Hyperparameters go through ONE mechanism: the evosax params pytree of the
strategy, overridden field by field with `--es-params "name=value,name=value"` (numeric,
so a new value never recompiles). The initial step size `--sigma` is applied wherever the
strategy keeps it: its `std_init` param, or else the `std_schedule` of its constructor
(optax.constant_schedule(sigma)); strategies with neither (GradientlessDescent) ignore it,
and `sigma_applies` says so.

evosax minimises; `tell` takes (key, population, fitness, state, params).
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import distribution_based_algorithms

from bbt_jax.cma import LazyCMA_ES, PyCMA_ES, with_tie_safe_ranks
from bbt_jax.deep import Layerwise
from bbt_jax.errors import UserError
from bbt_jax.refine import Refine, check_refinable

# Algorithms whose constructor needs more than (population_size, solution).
_NEEDS_MORE = {name for name, cls in distribution_based_algorithms.items()
               if any(p.default is inspect.Parameter.empty and p.name not in ("self", "population_size", "solution")
                      for p in inspect.signature(cls.__init__).parameters.values()
                      if p.kind is not inspect.Parameter.VAR_KEYWORD)}
STRATEGIES: dict[str, type] = {name: cls for name, cls in distribution_based_algorithms.items()
                               if name not in _NEEDS_MORE}
# Ours (cma.py): CMA-ES with pycma's lazy eigendecomposition; and pycma's CMA-ES (its constants, TPA step-size
# adaptation at d >= 300 as pycma 4.5's default, lazy eigendecomposition), the paper preset's strategy.
STRATEGIES["Lazy_CMA_ES"] = LazyCMA_ES
STRATEGIES["PyCMA_ES"] = PyCMA_ES
RANK_TIES = ("ordinal", "evosax")


def canonical(name: str) -> str:
    """The registry's name for a user-typed one (case and '-'/'_' ignored); UserError if unknown."""
    key = name.replace("-", "_").lower()
    for known in STRATEGIES:
        if known.lower() == key:
            return known
    choices = ", ".join(sorted(k.lower() for k in STRATEGIES))
    raise UserError(f"--strategy {name}: choose from {choices} (evosax's distribution-based algorithms, case ignored)")


def parse_overrides(text: str) -> dict[str, float]:
    """'name=value,name=value' -> {name: float}; a malformed item is a UserError."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--es-params {text!r}: expected name=value items separated by commas, got {item!r}") from None
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Strategy:
    """One evosax algorithm instance and how its step size and params are set."""

    name: str
    es: object  # the evosax algorithm
    sigma: float
    overrides: tuple[tuple[str, float], ...] = ()

    @property
    def sigma_applies(self) -> bool:
        return "std_init" in _param_fields(self.es) or "std_schedule" in _init_args(self.es)

    def params(self, sigma: float | None = None):
        """The evosax params (on device, numeric): defaults, `std_init` = sigma where it exists, overrides."""
        params = self.es.default_params
        fields = _param_fields(self.es)
        updates = dict(self.overrides)
        if "std_init" in fields:
            updates.setdefault("std_init", self.sigma if sigma is None else sigma)
        params = params.replace(**{k: jnp.asarray(v, jnp.asarray(getattr(params, k)).dtype)
                                   for k, v in updates.items()})
        return jax.tree.map(jnp.asarray, params)  # on device once, not re-sent every interval


def _param_fields(es) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(es.default_params))


def _init_args(es) -> tuple[str, ...]:
    es = getattr(es, "inner", es)  # deep.Layerwise: the per-layer strategy
    return tuple(inspect.signature(type(es).__init__).parameters)


def make_strategy(name: str, *, popsize: int, num_dims: int, sigma: float = 1.0, es_params: str = "",
                  rank_ties: str = "ordinal", layers: int = 0, layer_schedule: str = "sequential") -> Strategy:
    """Build a registered strategy for a flat float32 solution of `num_dims`; with `layers` > 0, one per
    layer over a layers x num_dims solution (BBTv2, deep.Layerwise with `layer_schedule`).

    `rank_ties`: "ordinal" ranks tied fitness by index, as pycma does, so recombination
    weights always sum to 1 (cma.py; identical to evosax without ties); "evosax" keeps
    evosax's average-then-truncate ranks (with 17 of 20 tied, weights sum to ~0.5)."""
    key = canonical(name)
    cls = STRATEGIES[key]
    kwargs = {}
    if "std_schedule" in inspect.signature(cls.__init__).parameters:
        kwargs["std_schedule"] = optax.constant_schedule(sigma)
    if rank_ties not in RANK_TIES:
        raise UserError(f"--rank-ties {rank_ties}: choose from {', '.join(RANK_TIES)}")
    build = with_tie_safe_ranks if rank_ties == "ordinal" else (lambda cls, **kw: cls(**kw))
    es = build(cls, population_size=popsize, solution=jnp.zeros(num_dims, jnp.float32), **kwargs)
    overrides = parse_overrides(es_params)
    unknown = sorted(set(overrides) - set(_param_fields(es)))
    if unknown:
        raise UserError(f"--es-params: {key} has no param {', '.join(unknown)} "
                        f"(its params: {', '.join(_param_fields(es))})")
    if layers:
        es = Layerwise(es, layers, layer_schedule)
    return Strategy(key, es, float(sigma), tuple(overrides.items()))


def with_refinement(strategy: Strategy, *, switch: int, sigma: float) -> Strategy:
    """The same strategy run as a two-stage search (refine.Refine): a small-step restart at the best candidate
    so far from generation `switch` on, with step size `sigma`."""
    check_refinable(strategy.es, strategy.params())
    return dataclasses.replace(strategy, es=Refine(strategy.es, switch, sigma))


def with_restart(strategy: Strategy, *, switch: int) -> Strategy:
    """The same strategy restarted afresh at z = 0 from generation `switch` on (refine.Refine, origin "start"):
    the second fold of train+dev cross-validation (search.Search's `swap_at`)."""
    return dataclasses.replace(strategy, es=Refine(strategy.es, switch, strategy.sigma, origin="start"))
