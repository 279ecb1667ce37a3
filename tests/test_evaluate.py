"""The fused population evaluation equals a slow per-member loop (tiny RoBERTa, real
sst2 rows and tokenizer), with buckets and with population chunking."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax import config as C
from bbt_jax.evaluate import make_population_eval, member_fitness, population_fitness
from bbt_jax.train import build
from tests.conftest import ROBERTA_TOKENIZER


@pytest.fixture(scope="module")
def exp(data_dir):
    cfg = C.override(C.tiny(), data_dir=str(data_dir), num_buckets=3, popsize=6)
    return build(cfg, default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)


@pytest.mark.parametrize("placement", ["add", "cat"])
def test_population_equals_member_loop(data_dir, placement):
    cfg = C.override(C.tiny(), data_dir=str(data_dir), num_buckets=2, placement=placement)
    e = build(cfg, default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)
    z_PxK = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (5, cfg.prompt.intrinsic_dim))
    fn = make_population_eval(e.backbone.score, "ce", e.task.metric)
    loss_P, m_P = fn(e.frozen, e.proj, z_PxK, e.train)
    for i in range(5):  # the slow reference: one candidate at a time, bucket by bucket, un-jitted
        loss, m = member_fitness(e.backbone.score, "ce", e.task.metric, e.frozen, e.proj, z_PxK[i], e.train)
        assert abs(float(loss_P[i]) - float(loss)) < 1e-5
        assert float(m_P["acc"][i]) == float(m["acc"])
    assert np.ptp(np.asarray(loss_P)) > 0  # candidates differ, so the comparison means something


def test_buckets_do_not_change_the_loss(data_dir):
    z_PxK = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (3, 8))
    out = []
    for nb in (1, 4):
        e = build(C.override(C.tiny(), data_dir=str(data_dir), num_buckets=nb), default_tokenizer=ROBERTA_TOKENIZER,
                  log=lambda s: None)
        out.append(np.asarray(population_fitness(e.backbone.score, "hinge", "acc", e.frozen, e.proj, z_PxK, e.train)[0]))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_chunked_population_equals_vmapped(exp):
    z_PxK = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (7, 8))
    full = population_fitness(exp.backbone.score, "ce", "acc", exp.frozen, exp.proj, z_PxK, exp.train)[0]
    chunked = population_fitness(exp.backbone.score, "ce", "acc", exp.frozen, exp.proj, z_PxK, exp.train, chunk=3)[0]
    np.testing.assert_allclose(np.asarray(full), np.asarray(chunked), rtol=1e-5, atol=1e-6)


def test_cma_lowers_training_loss_on_tiny_roberta(data_dir):
    cfg = C.override(C.tiny(), data_dir=str(data_dir), popsize=8, budget=8 * 25, eval_every=40, sigma=1.0)
    e = build(cfg, default_tokenizer=ROBERTA_TOKENIZER, log=lambda s: None)
    # make the tiny random model's verbalizer logits sensitive to the prompt
    state, hist = e.search.run(e.frozen, e.proj, e.train, e.dev, e.search.init(e.key))
    first = np.mean([h["best_loss"] for h in hist[:3]])
    last = np.mean([h["best_loss"] for h in hist[-3:]])
    assert last < first, (first, last)
    assert float(state.best_train_loss) <= min(h["best_loss"] for h in hist) + 1e-7
    assert e.search.interval._cache_size() == 1
