"""Prompt tuning as an evosax Problem: candidates z_PxK -> fitness_P, on a real model.

`PromptProblem` pairs the fitness contract (fitness.py) with the fixed random projection
z -> A z + p0 (prompt.py). It is a pytree, so it is passed INTO jitted code (the frozen
weights are an argument, never a compiled-in constant), and it has evosax 0.3's Problem
interface (evosax problems/problem.py): `init(key)`, `eval(key, solutions, state) ->
(fitness, state, info)`, `sample(key)`, so any evosax algorithm, or your own, runs on it:

    problem = bbt_jax.build(cfg).problem("train")
    es = evosax.algorithms.SNES(population_size=20, solution=problem.sample(key))
    ...
    z_PxK, es_state = es.ask(k1, es_state, params)
    loss_P, pstate, info = problem.eval(k2, z_PxK, pstate)
    es_state, _ = es.tell(k3, z_PxK, loss_P, es_state, params)

Shape letters: see bbt_jax/types.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from evosax.problems.problem import Problem, State
from flax import struct

from bbt_jax.fitness import Fitness
from bbt_jax.prompt import Projection


@struct.dataclass
class PromptProblem(Problem):
    """Minimise the loss of the prompt A z + p0 on one split (see the module docstring)."""

    fitness: Fitness
    projection: Projection

    @property
    def num_dims(self) -> int:
        return self.projection.intrinsic_dim

    def __call__(self, z_PxK: jax.Array):
        """(loss_P, metrics_P) of a population of candidates."""
        return self.fitness(z_PxK, self.projection)

    def init(self, key: jax.Array) -> State:
        return State(counter=jnp.asarray(0, jnp.int32))

    def eval(self, key: jax.Array, solutions: jax.Array, state: State):
        """evosax's Problem.eval: (fitness_P, state, info); the key is unused (deterministic)."""
        loss_P, metrics_P = self(solutions)
        return loss_P, state.replace(counter=state.counter + 1), metrics_P

    def sample(self, key: jax.Array) -> jax.Array:
        """A random candidate (standard normal), e.g. the solution template of an evosax algorithm."""
        return jax.random.normal(key, (self.num_dims,), jnp.float32)
