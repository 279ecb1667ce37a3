"""The strategy registry: every selectable evosax strategy runs a short search on the tiny
model; hyperparameters go through the one params mechanism; sigma lands where the strategy
keeps its step size."""

import jax
import numpy as np
import pytest

from bbt_jax import config as C
from bbt_jax.errors import UserError
from bbt_jax.harness import build
from bbt_jax.strategy import STRATEGIES, canonical, make_strategy, parse_overrides
from tests.conftest import ROBERTA_TOKENIZER


@pytest.fixture(scope="module")
def h(data_dir):
    cfg = C.override(C.tiny(), data_dir=str(data_dir), num_buckets=1, popsize=4, budget=8, eval_every=8)
    return build(cfg, default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)


@pytest.fixture(scope="module")
def evaluate(h):
    """The tiny model's population fitness, compiled once and shared by every strategy."""
    fn = jax.jit(lambda problem, z_PxK: problem(z_PxK)[0])
    return lambda z_PxK: fn(h.problem("train"), z_PxK)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_runs_a_short_search_on_the_tiny_model(h, evaluate, name):
    """ask -> the tiny model's fitness -> tell for 3 generations, through the registry's strategy."""
    s = make_strategy(name.lower(), popsize=4, num_dims=h.cfg.prompt.intrinsic_dim, sigma=0.5)
    params, key = s.params(), jax.random.PRNGKey(0)
    with jax.numpy_rank_promotion("allow"):  # evosax relies on implicit rank promotion
        state = s.es.init(key, np.zeros(s.es.num_dims, np.float32), params)
        for g in range(3):
            k_ask, k_tell = jax.random.split(jax.random.fold_in(key, g))
            z_PxK, state = s.es.ask(k_ask, state, params)
            loss_P = evaluate(z_PxK)
            state, _ = s.es.tell(k_tell, z_PxK, loss_P, state, params)
    assert z_PxK.shape == (4, 8) and bool(np.all(np.isfinite(np.asarray(loss_P))))
    assert np.isfinite(float(state.best_fitness)) and s.name == name


@pytest.mark.parametrize("name", ["cma_es", "snes", "open_es"])
def test_search_runs_with_other_strategies(h, name):
    """The whole fused interval (ask, fitness, tell, dev selection) with strategies of each kind."""
    cfg = C.override(h.cfg, strategy=name, sigma=0.5)
    search = build(cfg, default_tokenizer=ROBERTA_TOKENIZER, model=h.model, log=lambda s: None).search()
    state, hist = search.run(h.problem("train"), h.problem("dev"), search.init(jax.random.PRNGKey(0)))
    assert len(hist) == 2 and int(state.generation) == 2
    assert all(np.isfinite(r["best_loss"]) for r in hist)
    assert np.isfinite(float(state.best_dev_perf))  # a candidate was scored on dev and kept


def test_names_case_and_dashes_are_ignored():
    assert canonical("cma-es") == canonical("CMA_ES") == "CMA_ES"
    assert canonical("snes") == "SNES"
    with pytest.raises(UserError, match="--strategy pso: choose from"):
        canonical("pso")


def test_sigma_goes_where_the_strategy_keeps_it():
    cma = make_strategy("cma_es", popsize=4, num_dims=3, sigma=0.3)
    assert float(cma.params().std_init) == pytest.approx(0.3) and cma.sigma_applies
    assert float(cma.params(0.7).std_init) == pytest.approx(0.7)  # per-call (sweeps), no rebuild
    open_es = make_strategy("open_es", popsize=4, num_dims=3, sigma=0.3)
    assert open_es.sigma_applies and "std_init" not in type(open_es.params()).__dataclass_fields__
    state = open_es.es.init(jax.random.PRNGKey(0), np.zeros(3, np.float32), open_es.params())
    assert float(np.asarray(state.std).max()) == pytest.approx(0.3)  # the std_schedule at step 0
    assert not make_strategy("gradientlessdescent", popsize=4, num_dims=3).sigma_applies


def test_es_params_are_one_mechanism():
    s = make_strategy("cma_es", popsize=4, num_dims=3, es_params="c_mean=0.5, std_min=1e-6")
    p = s.params()
    assert float(p.c_mean) == 0.5 and float(p.std_min) == pytest.approx(1e-6)
    assert parse_overrides("") == {}
    with pytest.raises(UserError, match="has no param nope"):
        make_strategy("cma_es", popsize=4, num_dims=3, es_params="nope=1")
    with pytest.raises(UserError, match="expected name=value"):
        parse_overrides("c_mean")
