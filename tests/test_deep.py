"""BBTv2 (deep.py): the layer-wise strategy against slow per-layer loops written as deepbbt.py's,
its budget accounting, the projection scale from clipped hidden-state statistics, and a
search on the tiny model that runs without recompiling per layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax import config as config_lib
from bbt_jax.deep import (
    DeepProjection,
    Layerwise,
    clipped_std,
    layer_stds,
    make_deep_projection,
    sequential_generations,
)
from bbt_jax.errors import UserError
from bbt_jax.harness import build
from bbt_jax.prompt import embedding_std, projection_std
from bbt_jax.strategy import make_strategy

Y, K, P = 3, 6, 8


@pytest.fixture(autouse=True)
def _evosax_promotion():
    with jax.numpy_rank_promotion("allow"):  # evosax broadcasts implicitly (search.py does the same)
        yield


def _loss(z_YxK):
    """A separable toy fitness whose layers pull toward different targets."""
    target_YxK = jnp.arange(Y * K, dtype=jnp.float32).reshape(Y, K) / (Y * K)
    return jnp.sum((z_YxK - target_YxK) ** 2)


def _inner(name="cma_es"):
    return make_strategy(name, popsize=P, num_dims=K, sigma=0.5).es


@pytest.mark.parametrize("name", ["cma_es", "snes"])
def test_sequential_equals_deepbbt_loop(name):
    inner = _inner(name)
    params = inner.default_params
    lw = Layerwise(inner, Y, "sequential")
    key = jax.random.PRNGKey(0)
    state = lw.init(key, jnp.zeros((Y, K)), params)
    # the reference: deepbbt.py's loop over a list of strategies, best_prefix updated with each xbest
    states = [inner.init(k, jnp.zeros(K), params) for k in jax.random.split(key, Y)]
    best_prefix = np.zeros((Y, K), np.float32)
    best_loss = np.full(Y, np.inf)
    keys = jax.random.split(jax.random.PRNGKey(1), 2 * Y * 2)
    for g in range(2 * Y):  # two rounds
        k_ask, k_tell = keys[2 * g], keys[2 * g + 1]
        z_PxYxK, state = lw.ask(k_ask, state, params)
        loss_P = jax.vmap(_loss)(z_PxYxK)
        state, _ = lw.tell(k_tell, z_PxYxK, loss_P, state, params)

        i = g % Y
        x_PxK, states[i] = inner.ask(k_ask, states[i], params)
        full = np.repeat(best_prefix[None], P, 0)
        full[:, i] = np.asarray(x_PxK)
        ref_P = np.asarray(jax.vmap(_loss)(jnp.asarray(full)))
        states[i], _ = inner.tell(k_tell, x_PxK, jnp.asarray(ref_P), states[i], params)
        j = int(np.argmin(ref_P))
        if ref_P[j] < best_loss[i]:
            best_loss[i], best_prefix[i] = ref_P[j], np.asarray(x_PxK[j])
        np.testing.assert_allclose(np.asarray(z_PxYxK), full, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(loss_P), ref_P, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lw.best_YxK(state)), best_prefix, rtol=1e-6, atol=1e-6)
    for i in range(Y):
        np.testing.assert_allclose(np.asarray(state.states.mean[i]), np.asarray(states[i].mean), rtol=1e-5,
                                   atol=1e-6)


def test_parallel_member_j_uses_every_layers_jth_candidate():
    inner = _inner()
    params = inner.default_params
    lw = Layerwise(inner, Y, "parallel")
    key = jax.random.PRNGKey(0)
    state = lw.init(key, jnp.zeros((Y, K)), params)
    states = [inner.init(k, jnp.zeros(K), params) for k in jax.random.split(key, Y)]
    for g in range(3):
        k_ask, k_tell = jax.random.split(jax.random.PRNGKey(10 + g))
        z_PxYxK, state = lw.ask(k_ask, state, params)
        loss_P = jax.vmap(_loss)(z_PxYxK)
        state, _ = lw.tell(k_tell, z_PxYxK, loss_P, state, params)
        asked = []
        for i, k in enumerate(jax.random.split(k_ask, Y)):
            x_PxK, states[i] = inner.ask(k, states[i], params)
            asked.append(np.asarray(x_PxK))
        full_PxYxK = np.stack(asked, axis=1)  # member j: layer i's j-th candidate
        # vmapped over the layers (eigh in a batch): float noise only
        np.testing.assert_allclose(np.asarray(z_PxYxK), full_PxYxK, rtol=1e-4, atol=2e-5)
        ref_P = jax.vmap(_loss)(jnp.asarray(full_PxYxK))
        for i, k in enumerate(jax.random.split(k_tell, Y)):
            states[i], _ = inner.tell(k, jnp.asarray(full_PxYxK[:, i]), ref_P, states[i], params)
    for i in range(Y):
        np.testing.assert_allclose(np.asarray(state.states.mean[i]), np.asarray(states[i].mean), rtol=1e-4,
                                   atol=2e-5)


def test_budget_accounting_as_deepbbt():
    assert sequential_generations(8000, 20, 24) == 16 * 24  # roberta-large: 16 rounds, 7680 calls
    assert sequential_generations(1200, 20, 30) == 2 * 30
    with pytest.raises(UserError, match="--budget 400.*600 calls"):
        sequential_generations(400, 20, 30)


def _deepbbt_clip(h):
    """deepbbt.py's loop, verbatim in spirit: 5 rounds of clip to mean +- 3 std."""
    h = np.asarray(h, np.float32).reshape(-1)
    mu, sd = np.mean(h), np.std(h)
    rnd = 0
    while rnd < 5:
        rnd += 1
        h = np.clip(h, mu - 3 * sd, mu + 3 * sd)
        mu, sd = np.mean(h), np.std(h)
    return sd


def test_clipped_std():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, 20000).astype(np.float32)
    x[:20] = 500.0  # a few massive activations
    assert np.std(x) > 10
    assert clipped_std(x) == pytest.approx(_deepbbt_clip(x), rel=1e-6)
    assert clipped_std(x) == pytest.approx(2.0, rel=0.03)


def test_layer_stds_skip_padding():
    word = np.random.default_rng(1).normal(0, 0.1, (50, 4))
    inputs = np.zeros((3, 2, 5, 4), np.float32)
    inputs[1, :, :3] = np.random.default_rng(2).normal(0, 1.0, (2, 3, 4))
    inputs[2, :, :3] = np.random.default_rng(3).normal(0, 3.0, (2, 3, 4))
    inputs[:, :, 3:] = 1e4  # padding positions must not count
    mask = np.zeros((2, 5), np.int32)
    mask[:, :3] = 1
    stds = layer_stds(word, [(inputs, mask)])
    assert stds[0] == pytest.approx(embedding_std(word))
    assert stds[1] == pytest.approx(_deepbbt_clip(inputs[1][mask > 0]), rel=1e-6)
    assert stds[2] == pytest.approx(_deepbbt_clip(inputs[2][mask > 0]), rel=1e-6)


def test_deep_projection_scale_and_layers():
    stds = [0.05, 1.0, 4.0]
    proj = make_deep_projection(jax.random.PRNGKey(0), intrinsic_dim=200, p0_NxD=np.ones((5, 40)), stds_Y=stds,
                                alpha=0.2, sigma=0.2)
    assert isinstance(proj, DeepProjection) and proj.A_YxKxND.shape == (3, 200, 200)
    for i, s in enumerate(stds):
        assert float(jnp.std(proj.A_YxKxND[i])) == pytest.approx(projection_std(s, 200, 0.2, 0.2), rel=0.02)
    z = jax.random.normal(jax.random.PRNGKey(1), (3, 200))
    out = proj(z)
    np.testing.assert_array_equal(np.asarray(out["input"]), np.ones((5, 40)))
    for i in range(3):
        np.testing.assert_allclose(np.asarray(out["layers"][i]), np.asarray(z[i] @ proj.A_YxKxND[i]).reshape(5, 40),
                                   rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_deep(data_dir, roberta_tokenizer):
    from tests.conftest import ROBERTA_TOKENIZER

    cfg = config_lib.override(config_lib.tiny(), method="bbtv2", data_dir=str(data_dir), budget=32, eval_every=8)
    return build(cfg, default_tokenizer=ROBERTA_TOKENIZER)


def test_layer_stds_measured_on_training_rows(tiny_deep):
    h = tiny_deep
    stds = h.layer_stds
    assert stds.shape == (h.backbone.num_layers,) and np.all(stds > 0)
    word = np.asarray(h.backbone.word_embeddings(h.model.params))
    assert stds[0] == pytest.approx(embedding_std(word))
    # layer 1's input is layer 0's output: post-LN, so its clipped std is near the LayerNorm scale (1 here)
    assert 0.5 < stds[1] < 1.5


@pytest.mark.parametrize("schedule", ["sequential"])  # parallel: test_sweep_of_bbtv2_cells_equals_solo_runs
def test_search_runs_without_recompiling_per_layer(tiny_deep, schedule):
    h = build(config_lib.override(tiny_deep.cfg, layer_schedule=schedule), model=tiny_deep.model)
    search = h.search()
    assert search.total_generations == 8  # parallel: 32 // 4; sequential: 32 // (4 x 2) = 4 rounds x 2 layers
    state = search.init(h.keys[1])
    train, dev = h.problem("train"), h.problem("dev")
    state, out = search.interval(train, dev, search.es_params(), state)
    size = search.interval._cache_size()
    for _ in range(search.num_intervals - 1):
        state, out = search.interval(train, dev, search.es_params(), state)
    assert search.interval._cache_size() == size
    assert state.best_dev_z.shape == (h.backbone.num_layers, h.cfg.prompt.intrinsic_dim)
    told = np.asarray(state.es_state.states.generation_counter)
    if schedule == "sequential":
        np.testing.assert_array_equal(told, [4, 4])  # each layer told once per round
    else:
        np.testing.assert_array_equal(told, [8, 8])


def test_sweep_of_bbtv2_cells_equals_solo_runs(tiny_deep):
    """Cells differing in seed (projection A_i and strategy noise) vmapped in one call (sweep.py)."""
    from bbt_jax.sweep import Sweep, stack

    h0 = build(config_lib.override(tiny_deep.cfg, layer_schedule="parallel", budget=8), model=tiny_deep.model)
    cells = [h0, build(config_lib.override(h0.cfg, seed=21), model=tiny_deep.model)]
    search = h0.search()
    projs_S = stack([h.projection for h in cells])
    keys_S = jnp.stack([h.keys[1] for h in cells])
    sweep = Sweep(search)
    from bbt_jax.problem import PromptProblem

    train_S = PromptProblem(h0.fitness("train"), projs_S)
    dev_S = PromptProblem(h0.fitness("dev"), projs_S)
    states_S, curves_SxG = sweep.run(train_S, dev_S, *sweep.init(keys_S, [h0.cfg.search.sigma] * 2))
    for s, h in enumerate(cells):
        state, hist = search.run(PromptProblem(h0.fitness("train"), h.projection),
                                 PromptProblem(h0.fitness("dev"), h.projection), search.init(h.keys[1]))
        np.testing.assert_allclose(curves_SxG[s], [r["best_loss"] for r in hist], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(states_S.best_dev_z[s]), np.asarray(state.best_dev_z), rtol=1e-4,
                                   atol=1e-5)
