"""bbt-jax: Black-Box Tuning (Sun et al., ICML 2022) of soft prompts, in JAX.

Public API; everything else is private. The path of one candidate (README, Architecture):
task rows (data.py) -> tokens (tasks.py) -> fitness of a population (fitness.py, problem.py)
-> strategy (strategy.py) -> selection on dev (search.py) -> results (train.py).
Methods: BBT (prompt.py's projection), BBTv2 (deep.py: a projection and a strategy per layer),
prompt tuning and deep prompt tuning (gradient.py, optax), all on the same fitness contract.

The names load on first use (PEP 562): `import bbt_jax` starts no JAX backend (evosax computes at
import), so that the entry point can join other processes first (distributed.py).
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bbt_jax.config import (
        Config,
        GradientConfig,
        ModelConfig,
        PromptConfig,
        RunConfig,
        SearchConfig,
        demo,
        paper,
        paper_bbtv2,
        tiny,
    )
    from bbt_jax.deep import DeepProjection, Layerwise, make_deep_projection
    from bbt_jax.errors import UserError
    from bbt_jax.fitness import EvalData, Fitness, make_fitness, split_metrics
    from bbt_jax.gradient import GradientSearch, GradientState, make_optimizer
    from bbt_jax.harness import Harness, build
    from bbt_jax.objective import loss_and_metrics
    from bbt_jax.problem import PromptProblem
    from bbt_jax.prompt import Identity, Projection, make_projection, prompt_from_z, prompts_from_z
    from bbt_jax.search import Search, SearchState
    from bbt_jax.strategy import STRATEGIES, Strategy, make_strategy
    from bbt_jax.tasks import TASKS, Task, get_task
    from bbt_jax.types import TokenBatch

_MODULES = {  # module -> the public names it holds
    "config": "Config GradientConfig ModelConfig PromptConfig RunConfig SearchConfig demo paper paper_bbtv2 tiny",
    "deep": "DeepProjection Layerwise make_deep_projection",
    "errors": "UserError",
    "fitness": "EvalData Fitness make_fitness split_metrics",
    "gradient": "GradientSearch GradientState make_optimizer",
    "harness": "Harness build",
    "objective": "loss_and_metrics",
    "problem": "PromptProblem",
    "prompt": "Identity Projection make_projection prompt_from_z prompts_from_z",
    "search": "Search SearchState",
    "strategy": "STRATEGIES Strategy make_strategy",
    "tasks": "TASKS Task get_task",
    "types": "TokenBatch",
}
_EXPORTS = {name: f"bbt_jax.{module}" for module, names in _MODULES.items() for name in names.split()}

__all__ = [
    "Config", "GradientConfig", "ModelConfig", "PromptConfig", "RunConfig", "SearchConfig", "demo", "paper",
    "paper_bbtv2", "tiny", "DeepProjection", "Layerwise", "make_deep_projection", "GradientSearch", "GradientState",
    "make_optimizer", "Identity",
    "UserError", "EvalData", "Fitness", "make_fitness", "split_metrics", "Harness", "build",
    "loss_and_metrics", "PromptProblem", "Projection", "make_projection", "prompt_from_z", "prompts_from_z",
    "Search", "SearchState", "STRATEGIES", "Strategy", "make_strategy", "TASKS", "Task", "get_task", "TokenBatch",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bbt_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
