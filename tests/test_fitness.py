"""The fitness contract: the fused population evaluation equals a slow per-member loop (tiny
RoBERTa, real sst2 rows and tokenizer), with buckets and with population chunking; the
evosax Problem view drives an evosax algorithm; a search on it lowers the training loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax import config as C
from bbt_jax.harness import build
from tests.conftest import ROBERTA_TOKENIZER


def harness(data_dir, **over):
    return build(C.override(C.tiny(), data_dir=str(data_dir), **over), default_tokenizer=ROBERTA_TOKENIZER,
                 log=lambda s: None)


@pytest.fixture(scope="module")
def h(data_dir):
    return harness(data_dir, num_buckets=3, popsize=6)


@pytest.mark.parametrize("placement", ["add", "cat"])
def test_population_equals_member_loop(data_dir, placement):
    e = harness(data_dir, num_buckets=2, placement=placement)
    z_PxK = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (5, e.cfg.prompt.intrinsic_dim))
    problem = e.problem("train")
    loss_P, m_P = jax.jit(lambda p, z: p(z))(problem, z_PxK)
    for i in range(5):  # the slow reference: one candidate at a time, bucket by bucket, un-jitted
        loss, m = problem.fitness.member(problem.projection(z_PxK[i]))
        assert abs(float(loss_P[i]) - float(loss)) < 1e-5
        assert float(m_P["acc"][i]) == float(m["acc"])
    assert np.ptp(np.asarray(loss_P)) > 0  # candidates differ, so the comparison means something


def test_buckets_do_not_change_the_loss(data_dir):
    z_PxK = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (3, 8))
    out = []
    for nb in (1, 4):
        e = harness(data_dir, num_buckets=nb, loss="hinge")
        out.append(np.asarray(e.fitness("train")(z_PxK, e.projection)[0]))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_chunked_population_equals_vmapped(h):
    z_PxK = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (7, 8))
    fit = h.fitness("train")
    full = fit(z_PxK, h.projection)[0]
    chunked = fit.replace(chunk=3)(z_PxK, h.projection)[0]
    np.testing.assert_allclose(np.asarray(full), np.asarray(chunked), rtol=1e-5, atol=1e-6)


def test_prompts_as_candidates_and_gradients(h):
    """Without a decode, candidates ARE prompts (what a gradient method feeds the contract); the member loss
    is differentiable in the prompt: its gradient matches a finite difference along a random direction."""
    fit = h.fitness("train")
    prompts_PxNxD = jax.vmap(h.projection)(jax.random.normal(jax.random.PRNGKey(3), (2, 8)))
    loss_P = np.asarray(fit(prompts_PxNxD)[0])
    p_NxD = prompts_PxNxD[0]
    loss_fn = jax.jit(lambda p: fit.member(p)[0])
    g_NxD = jax.grad(lambda p: fit.member(p)[0])(p_NxD)
    v_NxD = jax.random.normal(jax.random.PRNGKey(4), p_NxD.shape)
    eps = 1e-2
    fd = (float(loss_fn(p_NxD + eps * v_NxD)) - float(loss_fn(p_NxD - eps * v_NxD))) / (2 * eps)
    assert abs(float(jnp.vdot(g_NxD, v_NxD)) - fd) <= 0.05 * abs(fd) + 1e-4, (float(jnp.vdot(g_NxD, v_NxD)), fd)
    assert abs(float(loss_fn(p_NxD)) - loss_P[0]) < 1e-5


def test_evosax_algorithm_runs_on_the_problem(h):
    """The README example: any evosax algorithm drives PromptProblem through init/eval/sample."""
    from evosax.algorithms import SNES

    problem = h.problem("train")
    key = jax.random.PRNGKey(0)
    es = SNES(population_size=6, solution=problem.sample(key))
    params = es.default_params
    es_state, p_state = es.init(key, jnp.zeros(problem.num_dims), params), problem.init(key)

    @jax.jit
    def step(problem, es_state, p_state, key):
        k1, k2, k3 = jax.random.split(key, 3)
        z_PxK, es_state = es.ask(k1, es_state, params)
        loss_P, p_state, info = problem.eval(k2, z_PxK, p_state)
        es_state, _ = es.tell(k3, z_PxK, loss_P, es_state, params)
        return es_state, p_state, loss_P

    with jax.numpy_rank_promotion("allow"):
        for i in range(3):
            es_state, p_state, loss_P = step(problem, es_state, p_state, jax.random.fold_in(key, i))
    assert int(p_state.counter) == 3 and loss_P.shape == (6,) and bool(jnp.all(jnp.isfinite(loss_P)))
    assert np.isfinite(float(es_state.best_fitness))


def test_cma_lowers_training_loss_on_tiny_roberta(data_dir):
    e = harness(data_dir, popsize=8, budget=8 * 25, eval_every=40, sigma=1.0)
    search = e.search()
    state, hist = search.run(e.problem("train"), e.problem("dev"), search.init(e.keys[1]))
    first = np.mean([h["best_loss"] for h in hist[:3]])
    last = np.mean([h["best_loss"] for h in hist[-3:]])
    assert last < first, (first, last)
    assert float(state.best_train_loss) <= min(h["best_loss"] for h in hist) + 1e-7
    assert search.interval._cache_size() == 1


def test_prepared_test_batches_are_shared_by_runs_on_one_model(data_dir):
    """Harnesses built on one loaded model (other seeds, methods) reuse its prepared test batches, and the
    metrics equal an uncached pass; other rows (another task) get their own entries."""
    from bbt_jax.fitness import _eval_fitness, make_fitness, split_metrics

    a = harness(data_dir, test_rows=40, eval_batch=16)
    b = build(C.override(C.tiny(), data_dir=str(data_dir), test_rows=40, eval_batch=16, seed=21, alpha=5.0),
              model=a.model, default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)
    z_PxK = 3.0 * jax.random.normal(jax.random.PRNGKey(3), (3, b.cfg.prompt.intrinsic_dim))
    prompts_P = jax.vmap(b.projection)(z_PxK)
    a.test_metrics(jax.vmap(a.projection)(z_PxK))
    entries = len(a.model.prepared)
    assert entries == len(a.test_batches) == 3
    cached = b.test_metrics(prompts_P)
    assert len(b.model.prepared) == entries  # nothing prepared again
    assert cached == split_metrics(b.backbone, b.frozen, b.test_batches, prompts_P, b.task.metric)
    batch = b.test_batches[1]
    np.testing.assert_array_equal(  # logits through the cached preparation == a fresh one
        np.asarray(_eval_fitness(b.backbone, b.frozen, batch, "acc", b.model.prepared)[0].logits(prompts_P[0])),
        np.asarray(make_fitness(b.backbone, b.frozen, (batch,)).logits(prompts_P[0])))
    c = build(C.override(C.tiny(), data_dir=str(data_dir), test_rows=40, eval_batch=16, task="agnews"),
              model=a.model, default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)
    c.test_metrics(jax.vmap(c.projection)(z_PxK))
    assert len(c.model.prepared) == entries + len(c.test_batches)


def test_the_prepared_cache_is_bounded_in_bytes(data_dir, monkeypatch):
    """Past PREPARED_CACHE_BYTES the least recently used batches go (another task's first), the batch just
    prepared stays, and metrics still equal an uncached pass."""
    from bbt_jax import fitness

    a = harness(data_dir, test_rows=40, eval_batch=16)
    z_PxK = 3.0 * jax.random.normal(jax.random.PRNGKey(3), (2, a.cfg.prompt.intrinsic_dim))
    prompts_P = jax.vmap(a.projection)(z_PxK)
    a.test_metrics(prompts_P)
    sizes = [fitness.nbytes(d) for d in a.model.prepared.values()]
    assert len(sizes) == 3 and all(n > 0 for n in sizes)
    first = list(a.model.prepared)
    monkeypatch.setattr(fitness, "PREPARED_CACHE_BYTES", sizes[0] + sizes[1])  # room for two of these
    c = build(C.override(C.tiny(), data_dir=str(data_dir), test_rows=40, eval_batch=16, task="agnews"),
              model=a.model, default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)
    got = c.test_metrics(jax.vmap(c.projection)(z_PxK))
    assert got == fitness.split_metrics(c.backbone, c.frozen, c.test_batches, jax.vmap(c.projection)(z_PxK),
                                        c.task.metric)
    kept = list(a.model.prepared)
    assert not set(first) & set(kept)  # sst2's batches went first
    assert sum(fitness.nbytes(d) for d in a.model.prepared.values()) <= sizes[0] + sizes[1] or len(kept) == 1
    monkeypatch.setattr(fitness, "PREPARED_CACHE_BYTES", 0)  # even at 0 the batch in use stays
    assert a.test_metrics(prompts_P) == fitness.split_metrics(a.backbone, a.frozen, a.test_batches, prompts_P,
                                                              a.task.metric)
    assert len(a.model.prepared) == 1


def test_scored_prompts_are_not_scored_again(data_dir):
    """A prompt already scored on the same rows (the start prompt of every cell of a sweep) is taken from
    the model's `scored` memo: metrics equal an uncached pass, nothing new is computed for it, and equal
    prompts within one call are computed once."""
    from bbt_jax import fitness

    a = harness(data_dir, test_rows=40, eval_batch=16)
    z_PxK = 3.0 * jax.random.normal(jax.random.PRNGKey(4), (3, a.cfg.prompt.intrinsic_dim))
    prompts_P = jax.vmap(a.projection)(z_PxK)
    memo = a.model.scored.setdefault((a.cfg.model.dtype, a.cfg.model.zero_lm_head_bias), {})

    def fresh(p):
        return fitness.split_metrics(a.backbone, a.frozen, a.test_batches, p, a.task.metric)

    first = jax.tree.map(lambda x: x[np.array([0, 1, 1])], prompts_P)  # prompt 1 twice
    assert a.test_metrics(first) == fresh(first)
    assert len(memo) == 2 * len(a.test_batches)  # prompts 0 and 1, once each
    calls = []
    real = fitness.population_logits
    fitness.population_logits = lambda fit, p: calls.append(jax.tree.leaves(p)[0].shape[0]) or real(fit, p)
    try:
        second = jax.tree.map(lambda x: x[np.array([2, 1])], prompts_P)
        got = a.test_metrics(second)
        assert calls == [1] * len(a.test_batches)  # only prompt 2 computed
        again = a.test_metrics(second)
        assert len(calls) == len(a.test_batches)  # both memoized now: nothing computed
    finally:
        fitness.population_logits = real
    assert got == again == fresh(second)
    assert len(memo) == 3 * len(a.test_batches)
