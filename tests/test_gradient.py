"""Gradient baselines: x0 scores as BBT's z = 0, training lowers the loss, the scanned interval
equals a plain optax loop (input and deep prompts), one compilation, the recorded schedule,
non-finite steps skipped and counted, bitwise resume through orbax. Tiny RoBERTa on real sst2
rows where the model matters; a toy linear scorer elsewhere (fast)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from bbt_jax import config as C
from bbt_jax.config import OPTIMIZERS, GradientConfig, SearchConfig
from bbt_jax.fitness import Fitness, make_eval_data
from bbt_jax.gradient import GradientSearch, make_optimizer, make_schedule
from bbt_jax.harness import build
from bbt_jax.problem import PromptProblem
from bbt_jax.prompt import Identity
from bbt_jax.search import NONFINITE_LOSS
from tests.conftest import ROBERTA_TOKENIZER

CL, D, B = 3, 5, 24  # toy: classes, features, rows


def toy_score(frozen, inputs, prompt_CxD):
    """logits = x @ prompt.T: a linear classifier is the 'prompt'."""
    return jnp.concatenate([x_BxD @ prompt_CxD.T * frozen["scale"] for x_BxD in inputs], axis=0)


def nan_grad_score(frozen, inputs, prompt_CxD):
    """A finite loss with a NaN gradient (sqrt at 0 times 0)."""
    return toy_score(frozen, inputs, prompt_CxD) + 0.0 * jnp.sqrt(jnp.sum(prompt_CxD * 0.0))


def toy(scale=1.0, score=toy_score) -> PromptProblem:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, D)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(CL, D)).T, -1).astype(np.int32)
    data = make_eval_data((jnp.asarray(x[:10]), jnp.asarray(x[10:])), y, np.ones(B, np.float32))
    return PromptProblem(Fitness({"scale": jnp.asarray(scale, jnp.float32)}, data, score, "ce", "acc"), Identity())


def toy_x0():
    return 0.1 * jnp.ones((CL, D), jnp.float32)


def search_cfg(budget, eval_every, **kw) -> SearchConfig:
    return SearchConfig(popsize=2, budget=budget, eval_every=eval_every, **kw)


def toy_search(budget=10, eval_every=4, **grad) -> GradientSearch:
    g = GradientConfig(**{"optimizer": "adamw", "lr": 0.05, "weight_decay": 0.01, "clip_norm": 0.1, **grad})
    return GradientSearch(toy_x0(), config=search_cfg(budget, eval_every), gradient=g)


def reference_loop(problem: PromptProblem, x0, g: GradientConfig, total: int, steps: int):
    """The slow reference: jax.grad of the member loss and optax update/apply_updates, step by step."""
    opt = make_optimizer(g, total)
    grad_fn = jax.jit(jax.grad(lambda p: problem.fitness.member(problem.projection(p))[0]))
    params, opt_state = x0, opt.init(x0)
    for _ in range(steps):
        updates, opt_state = opt.update(grad_fn(params), opt_state, params)
        params = optax.apply_updates(params, updates)
    return params


def assert_tree_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


# -- tiny RoBERTa --------------------------------------------------------------
@pytest.fixture(scope="module")
def h(data_dir):
    return build(C.override(C.tiny(), data_dir=str(data_dir), num_buckets=2), default_tokenizer=ROBERTA_TOKENIZER,
                 log=lambda s: None)


def test_x0_scores_as_bbt_at_z0(h):
    """dev_init of x0 = p0 (Identity) and the first step's training loss equal BBT's fitness at z = 0."""
    s = GradientSearch(h.layout.p0, config=search_cfg(2, 1), gradient=GradientConfig())
    train, dev = h.problem("train", projection=Identity()), h.problem("dev", projection=Identity())
    z0 = jnp.zeros(h.cfg.prompt.intrinsic_dim, jnp.float32)
    bbt = jax.jit(lambda problem, z: problem.fitness.member(problem.projection(z)))
    bbt_dev_loss, bbt_dev = bbt(h.problem("dev"), z0)
    bbt_train_loss, bbt_train = bbt(h.problem("train"), z0)
    state, m = s.dev_init(dev, s.init(jax.random.PRNGKey(0)))
    assert float(m["dev_perf"]) == float(bbt_dev["perf"])
    np.testing.assert_allclose(float(m["dev_loss"]), float(bbt_dev_loss), rtol=1e-6)
    assert int(state.best_dev_generation) == 0 and float(state.best_dev_perf) == float(bbt_dev["perf"])
    state, hist = s.run(train, dev, state)
    assert hist[0]["best_perf"] == float(bbt_train["perf"])
    np.testing.assert_allclose(hist[0]["best_loss"], float(bbt_train_loss), rtol=1e-6)
    assert hist[0]["passes"] == 1 and hist[-1]["calls"] == 2 and "dev" in hist[0] and "dev" in hist[1]


def test_steps_lower_training_loss_on_tiny_roberta(h):
    """The tiny random RoBERTa barely listens to its prompt (gradient norm ~4e-6 at p0 = 0), so Adam
    takes large steps: 100 of them lower the training loss by > 10 % and raise the training accuracy."""
    g = GradientConfig(optimizer="adam", lr=3.0, lr_schedule="constant", clip_norm=0.0)
    s = GradientSearch(h.layout.p0, config=search_cfg(100, 50), gradient=g)
    train, dev = h.problem("train", projection=Identity()), h.problem("dev", projection=Identity())
    state, hist = s.run(train, dev, s.init(jax.random.PRNGKey(0)))
    first, last = hist[0]["best_loss"], np.mean([r["best_loss"] for r in hist[-5:]])
    assert last < 0.9 * first, (first, last)
    assert hist[-1]["best_perf"] > hist[0]["best_perf"]
    assert float(state.best_train_loss) <= min(r["best_loss"] for r in hist) + 1e-7
    assert int(state.nonfinite) == 0 and len(hist) == 100 and s.num_intervals == 2


@pytest.mark.parametrize("deep", [False, True], ids=["prompt", "deep"])
def test_interval_equals_optax_loop(h, deep):
    """6 steps in two intervals (the second partial) equal a Python loop of optax update/apply_updates."""
    p0 = jnp.asarray(h.layout.p0, jnp.float32)
    Y = h.model.config.num_hidden_layers
    x0 = {"input": p0, "layers": jnp.zeros((Y, *p0.shape), jnp.float32)} if deep else p0
    g = GradientConfig(optimizer="adamw", lr=0.05, lr_schedule="cosine", warmup_steps=2, weight_decay=0.01,
                       clip_norm=0.5)
    s = GradientSearch(x0, config=search_cfg(6, 4), gradient=g)
    train, dev = h.problem("train", projection=Identity()), h.problem("dev", projection=Identity())
    state, hist = s.run(train, dev, s.init(jax.random.PRNGKey(0)))
    ref = reference_loop(train, x0, g, 6, 6)
    # Adam normalises gradients of ~1e-7 per entry (this model barely listens to its prompt), so float
    # noise of the gradient shows at ~1e-5 in params that moved by ~0.1: the comparison is still 1e-4 tight
    assert_tree_close(state.params, ref, rtol=1e-4, atol=2e-5)
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(x0))]
    assert min(moved) > 0.05, moved
    assert s.interval._cache_size() == 1 and len(hist) == 6


# -- toy scorer ----------------------------------------------------------------
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_matches_optax_loop(optimizer):
    s = toy_search(budget=7, eval_every=3, optimizer=optimizer, warmup_steps=1, lr_schedule="linear")
    p = toy()
    state, _ = s.run(p, p, s.init(jax.random.PRNGKey(0)))
    assert_tree_close(state.params, reference_loop(p, toy_x0(), s.gradient, 7, 7), rtol=1e-5, atol=1e-6)


def test_no_recompilation_and_one_host_pull_per_interval(monkeypatch):
    p = toy()
    s = toy_search(budget=10, eval_every=4)  # three intervals, the last one shorter
    state0 = s.init(jax.random.PRNGKey(0))
    s.interval(p, p, None, state0)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        s.interval(p, p, None, state0)
    calls, real = [], jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: calls.append(1) or real(x))
    state, hist = s.run(p, p, state0)
    assert s.num_intervals == 3 and len(calls) == 3 and len(hist) == 10 and int(state.generation) == 10
    assert s.interval._cache_size() == 1
    assert [r["generation"] for r in hist if "dev" in r] == [4, 8, 10]


def test_schedule_recorded_warmup_then_linear_decay():
    s = toy_search(budget=10, eval_every=4, optimizer="sgd", lr=0.1, warmup_steps=3, lr_schedule="linear")
    p = toy()
    _, hist = s.run(p, p, s.init(jax.random.PRNGKey(0)))
    expected = [0.0, 0.1 / 3, 0.2 / 3, 0.1, 0.1 * 6 / 7, 0.1 * 5 / 7, 0.1 * 4 / 7, 0.1 * 3 / 7, 0.1 * 2 / 7, 0.1 / 7]
    np.testing.assert_allclose([r["step_size"] for r in hist], expected, rtol=1e-6, atol=1e-8)
    # cosine after 2 warmup steps over 8 remaining: lr/2 (1 + cos(pi t/8)); constant: lr after warmup
    cos = make_schedule(GradientConfig(lr=0.1, lr_schedule="cosine", warmup_steps=2), 10)
    np.testing.assert_allclose([float(cos(t)) for t in (0, 1, 2, 6, 9)],
                               [0.0, 0.05, 0.1, 0.05, 0.05 * (1 + np.cos(np.pi * 7 / 8))], rtol=1e-6, atol=1e-8)
    const = make_schedule(GradientConfig(lr=0.1, lr_schedule="constant"), 10)
    assert [float(const(t)) for t in (0, 9)] == pytest.approx([0.1, 0.1])


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_steps_do_not_update_and_are_counted(where):
    """An interval on a poisoned problem (NaN loss: frozen scale NaN; or finite loss, NaN gradient) leaves
    params and optimizer state as they were and counts every step; the next clean interval then equals
    a clean first interval bit for bit (the schedule did not advance either)."""
    bad = toy(scale=np.nan) if where == "loss" else toy(score=nan_grad_score)
    p = toy()
    s = toy_search(budget=8, eval_every=4, lr_schedule="linear", warmup_steps=2)
    state0 = s.init(jax.random.PRNGKey(0))
    state, out = s.interval(bad, p, None, state0)
    assert int(state.nonfinite) == 4 and int(state.generation) == 4
    np.testing.assert_array_equal(np.asarray(state.params), np.asarray(state0.params))
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(state0.opt_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.all(np.asarray(out["generations"]["loss"]) == np.float32(NONFINITE_LOSS))
    assert float(state.best_train_loss) == np.inf
    poisoned_then_clean, _ = s.interval(p, p, None, state)
    clean, _ = s.interval(p, p, None, state0)
    np.testing.assert_array_equal(np.asarray(poisoned_then_clean.params), np.asarray(clean.params))
    assert int(poisoned_then_clean.nonfinite) == 4 and np.isfinite(float(poisoned_then_clean.best_train_loss))


def test_nonfinite_dev_never_selected():
    p = toy()
    s = toy_search(budget=4, eval_every=4)
    state, _ = s.run(p, toy(scale=np.nan), s.init(jax.random.PRNGKey(0)))
    assert int(state.best_dev_generation) == -1 and float(state.best_dev_perf) == -np.inf
    np.testing.assert_array_equal(np.asarray(state.best_dev_z), np.asarray(toy_x0()))


def test_bitwise_resume_through_orbax(tmp_path):
    p = toy()
    s = toy_search(budget=16, eval_every=4, lr_schedule="cosine", warmup_steps=3)
    key = jax.random.PRNGKey(3)
    straight, hist_straight = s.run(p, p, s.init(key))

    class Killed(Exception):
        pass

    def kill_after_two(state, history, record):
        if len(history) == 8:
            saved.append((state, list(history)))
            raise Killed

    saved = []
    with pytest.raises(Killed):  # the run dies after 2 intervals, once its state is on the host
        s.run(p, p, s.init(key), on_interval=kill_after_two)
    half, hist = saved[0]
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "ckpt", half)
    ckptr.wait_until_finished()
    restored = ckptr.restore(tmp_path / "ckpt", jax.eval_shape(s.init, key))
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)  # uncommitted, as checkpoint.py
    assert type(restored) is type(half) and int(restored.generation) == 8
    resumed, hist = s.run(p, p, restored, history=list(hist))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert hist == hist_straight
    assert s.interval._cache_size() == 1


def test_start_margin_gradient_keeps_what_the_reference_and_the_closed_form_keep():
    """--start-margin in a gradient run (the same select_on_dev): the kept step is the slow reference's over
    the run's own dev records and the closed form of experiments/start_margin.py; here x0 scores 7 of 24 dev
    rows and the steps reach 19, so only a margin above 12 rows keeps x0."""
    from tests.test_search import runs_with_margins

    g = GradientConfig(optimizer="adamw", lr=0.01, weight_decay=0.01, clip_norm=0.1)
    free, out = runs_with_margins(
        lambda **extra: GradientSearch(toy_x0(), config=search_cfg(12, 1, dev_init=True, dev_tiebreak_loss=True,
                                                                   **extra), gradient=g),
        toy(), (0.0, 11.5 / 24, 12.5 / 24), dev_rows=B)
    for margin, kept, reference, closed in out:
        assert kept == reference == closed, margin
    assert [kept for _, kept, _, _ in out] == [free, free, 0]
