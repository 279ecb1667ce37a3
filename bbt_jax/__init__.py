"""bbt-jax: Black-Box Tuning (Sun et al., ICML 2022) of soft prompts, in JAX.

Public API; everything else is private.
"""

from bbt_jax.config import Config, ModelConfig, PromptConfig, RunConfig, SearchConfig, demo, paper, tiny
from bbt_jax.errors import UserError
from bbt_jax.evaluate import EvalData, make_population_eval, population_fitness
from bbt_jax.objective import loss_and_metrics
from bbt_jax.prompt import Projection, make_projection, prompt_from_z, prompts_from_z
from bbt_jax.search import Search, SearchState
from bbt_jax.tasks import TASKS, Task, get_task
from bbt_jax.types import TokenBatch

__all__ = [
    "Config", "ModelConfig", "PromptConfig", "RunConfig", "SearchConfig", "demo", "paper", "tiny",
    "UserError", "EvalData", "make_population_eval", "population_fitness", "loss_and_metrics",
    "Projection", "make_projection", "prompt_from_z", "prompts_from_z", "Search", "SearchState",
    "TASKS", "Task", "get_task", "TokenBatch",
]
