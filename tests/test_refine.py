"""Two-stage search (bbt_jax/refine.py): a small-step restart at the best candidate so far."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.algorithms import CMA_ES

from bbt_jax import config as C
from bbt_jax.errors import UserError
from bbt_jax.refine import Refine
from bbt_jax.strategy import make_strategy, with_refinement
from tests.conftest import ROBERTA_TOKENIZER


def _sphere(x_PxK):
    return jnp.sum((x_PxK - 1.0) ** 2, axis=-1)


def test_refine_equals_the_strategy_then_a_restart_by_hand():
    """Generations before the switch are the inner strategy's own; at the switch the state is the inner
    strategy re-initialised at its best-so-far solution with the refinement step size (record kept)."""
    with jax.numpy_rank_promotion("allow"):  # evosax relies on it (search.py does the same)
        _compare_by_hand()


def _compare_by_hand():
    es = CMA_ES(population_size=6, solution=jnp.zeros(5))
    params = es.default_params
    two = Refine(es, switch=3, sigma=0.05)
    key = jax.random.PRNGKey(0)
    s_ref, s_two = es.init(key, jnp.zeros(5), params), two.init(key, jnp.zeros(5), params)
    for g in range(5):
        k_ask, k_tell = jax.random.split(jax.random.fold_in(key, g))
        x, s_ref = es.ask(k_ask, s_ref, params)
        x2, s_two = two.ask(k_ask, s_two, params)
        np.testing.assert_allclose(x2, x, rtol=1e-6, atol=1e-6)
        s_ref, _ = es.tell(k_tell, x, _sphere(x), s_ref, params)
        s_two, _ = two.tell(k_tell, x2, _sphere(x2), s_two, params)
        if g == 2:  # the switch: restart by hand
            best, best_f = s_ref.best_solution, s_ref.best_fitness
            s_ref = es.init(jax.random.fold_in(k_tell, 1), best, params).replace(
                std=jnp.asarray(0.05, jnp.float32), best_solution=best, best_fitness=best_f)
            np.testing.assert_allclose(s_two.mean, best)
            assert float(s_two.std) == pytest.approx(0.05)
        for a, b in zip(jax.tree.leaves(s_two.inner), jax.tree.leaves(s_ref), strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6)
    assert int(s_two.generation_counter) == 5


def test_refine_settings_are_checked():
    strategy = make_strategy("cma_es", popsize=4, num_dims=3)
    assert isinstance(with_refinement(strategy, switch=2, sigma=0.1).es, Refine)
    assert isinstance(with_refinement(make_strategy("sep_cma_es", popsize=4, num_dims=3), switch=2, sigma=0.1).es,
                      Refine)
    with pytest.raises(UserError, match="--refine-at: strategy SimpleES .*std is a vector"):
        with_refinement(make_strategy("simplees", popsize=4, num_dims=3), switch=2, sigma=0.1)
    with pytest.raises(UserError, match="needs >= 1"):
        with_refinement(strategy, switch=0, sigma=0.1)
    with pytest.raises(UserError, match="--refine-at 1.5"):
        C.override(C.tiny(), refine_at=1.5)
    with pytest.raises(UserError, match="for --method bbt, not bbtv2"):
        C.override(C.tiny(), refine_at=0.5, method="bbtv2")
    with pytest.raises(UserError, match="--refine-sigma"):
        C.override(C.tiny(), refine_sigma=0.0)


def test_a_two_stage_run_restarts_with_the_small_step_at_the_same_budget(tmp_path, data_dir):
    """`train --refine-at 0.5`: the same calls as the one-stage run, identical up to the switch, then the
    step size restarts at --refine-sigma; the checkpoint records both settings."""
    from bbt_jax.train import train

    def run(**over):
        cfg = C.override(C.tiny(), data_dir=str(data_dir), budget=32, popsize=4, eval_every=8, test_rows=16,
                         sigma=1.0, out=str(tmp_path / str(len(over))), **over)
        return train(cfg, log=lambda s: None, default_tokenizer=ROBERTA_TOKENIZER)

    one, two = run(), run(refine_at=0.5, refine_sigma=0.01)
    assert one["calls"] == two["calls"] == 32
    steps_one = [r["step_size"] for r in one["curve"]]
    steps_two = [r["step_size"] for r in two["curve"]]
    assert len(steps_two) == 8
    np.testing.assert_allclose(steps_two[:3], steps_one[:3], rtol=1e-6)  # generations 0-2: the strategy itself
    assert steps_two[3] == pytest.approx(0.01) and steps_one[3] > 0.1  # generation 3 is the switch (4 = 0.5 x 8)
    np.testing.assert_allclose([r["best_loss"] for r in two["curve"][:4]], [r["best_loss"] for r in one["curve"][:4]])
    assert two["effective"]["refine_at"] == 0.5
