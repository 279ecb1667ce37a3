"""The harness: one seed or three (split, projection, strategy), the paper-aligned split, over-long
rows, p0 from a file, the effective settings, and the paper preset's values."""

import jax
import numpy as np
import pytest
import torch

from bbt_jax import config as C
from bbt_jax.errors import UserError
from bbt_jax.harness import build
from tests.conftest import ROBERTA_TOKENIZER


def harness(data_dir, model=None, **over):
    return build(C.override(C.tiny(), data_dir=str(data_dir), **over), default_tokenizer=ROBERTA_TOKENIZER,
                 model=model, log=lambda s: None)


@pytest.fixture(scope="module")
def h(data_dir):
    return harness(data_dir)


def test_one_seed_by_default_three_when_asked(h, data_dir):
    base_keys = h.keys
    k = jax.random.split(jax.random.PRNGKey(h.cfg.run.seed))
    assert np.array_equal(base_keys[0], k[0]) and np.array_equal(base_keys[1], k[1])  # as one seed always did
    other = harness(data_dir, model=h.model, projection_seed=7)
    assert not np.array_equal(other.projection.A_KxND, h.projection.A_KxND)  # another A ...
    assert np.array_equal(other.keys[1], h.keys[1]) and other.encoded["train"] == h.encoded["train"]  # ... only
    es = harness(data_dir, model=h.model, es_seed=7)
    assert np.array_equal(es.projection.A_KxND, h.projection.A_KxND) and not np.array_equal(es.keys[1], h.keys[1])
    split = harness(data_dir, model=h.model, split_seed=42)
    assert split.encoded["train"] != h.encoded["train"] and np.array_equal(split.keys[1], h.keys[1])
    assert split.encoded["train"] == harness(data_dir, model=h.model, seed=42).encoded["train"]


def test_bbt_seed42_split_is_selectable(h, data_dir):
    b = harness(data_dir, model=h.model, split="bbt-seed42")
    assert b.rows("train") == 32 and b.encoded["train"] != harness(data_dir, model=h.model, seed=42).encoded["train"]


def test_overflow_drop_and_truncate_are_counted(h, data_dir):
    t = harness(data_dir, model=h.model, task="yelpp", max_length=64, test_rows=40)
    d = harness(data_dir, model=h.model, task="yelpp", max_length=64, test_rows=40, overflow="drop")
    assert t.overflow["test"]["truncated"] > 0 and t.overflow["test"]["dropped"] == 0 and t.rows("test") == 40
    assert d.overflow["test"]["dropped"] > 0 and d.rows("test") == 40 - d.overflow["test"]["dropped"]
    assert all(len(r.ids) <= 64 for r in d.encoded["test"])
    tr, dr = t.overflow["train"]["truncated"], d.overflow["train"]["dropped"]
    assert f"train {tr} of {t.rows('train')} cut" in t.overflow_note() and t.overflow_note().startswith(
        "note: --max-length 64")
    assert f"train 0 of {d.rows('train')} cut, {dr} dropped" in d.overflow_note() and dr > 0
    assert harness(data_dir, model=h.model, max_length=512, test_rows=40).overflow_note() is None  # sst2 fits


@pytest.mark.parametrize("fmt", ["safetensors", "pt-embedding", "pt-tensor"])
def test_init_prompt_from_a_file(h, data_dir, tmp_path, fmt):
    p0 = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        path = tmp_path / "p0.safetensors"
        save_file({"prompt": p0}, str(path))
    elif fmt == "pt-embedding":  # bbt.py's nli_base_prompt.pt is a pickled nn.Embedding
        path = tmp_path / "p0.pt"
        emb = torch.nn.Embedding(4, 32)
        emb.weight.data = torch.as_tensor(p0)
        torch.save(emb, str(path))
    else:
        path = tmp_path / "p0.pt"
        torch.save(torch.as_tensor(p0), str(path))
    e = harness(data_dir, model=h.model, init_prompt=str(path), placement="cat")
    np.testing.assert_array_equal(np.asarray(e.projection.p0_NxD), p0)
    np.testing.assert_array_equal(np.asarray(e.projection(np.zeros(8, np.float32))), p0)  # z = 0 is p0
    with pytest.raises(UserError, match="--init-prompt .*: a 4 x 32 prompt, but this model and placement take 6"):
        harness(data_dir, model=h.model, init_prompt=str(path), n_prompt_tokens=6)
    with pytest.raises(UserError, match="file not found"):
        harness(data_dir, model=h.model, init_prompt=str(tmp_path / "nope.pt"))


def test_effective_settings(h):
    e = h.effective()
    assert e["n_prompt_tokens"] == 4 and e["proj_sigma"] == 1.0 and e["strategy"] == "CMA_ES"
    assert e["decoder_splice"] is None and e["bound_handling"] is None  # ignored here: null
    assert e["random_weights"] is True and e["split_seed"] == e["projection_seed"] == e["es_seed"] == 13
    # --pop-chunk -1 (the default) as it took effect: a masked LM on one CPU device goes 4 members at a time
    assert h.cfg.search.pop_chunk == -1 and e["pop_chunk"] == h.fitness("train").chunk == 4
    assert h.fitness("dev").chunk == 0


def test_default_pop_chunk_per_backend_and_model():
    from bbt_jax.harness import default_pop_chunk

    assert default_pop_chunk("masked", "cpu", 1) == 4
    assert default_pop_chunk("causal", "cpu", 1) == 0  # decoders share the input cache: one vmap
    assert default_pop_chunk("masked", "gpu", 1) == default_pop_chunk("masked", "tpu", 1) == 0
    assert default_pop_chunk("masked", "cpu", 2) == 0  # a sharded population
    with pytest.raises(UserError, match="--pop-chunk -2"):
        C.override(C.tiny(), pop_chunk=-2)


def test_paper_preset_is_the_original():
    p = C.paper()
    assert (p.model.model, p.prompt.placement, p.prompt.n_prompt_tokens, p.prompt.intrinsic_dim) == \
        ("roberta-large", "add", 50, 500)
    assert (p.search.popsize, p.search.budget, p.search.eval_every, p.search.loss) == (20, 8000, 100, "ce")
    assert p.search.strategy == "pycma_es" and p.search.dev_candidate == "at-eval"
    assert p.prompt.overflow == "drop" and p.model.zero_lm_head_bias is False and p.prompt.max_length == 512
    assert p.search.rank_ties == "ordinal" and p.search.bound_handling == "transform"


def test_kept_draw_is_the_lowest_loss_first_on_a_tie_and_no_demonstrations_only_when_strictly_lower():
    """choose_demos' rule (also demo_draws_dev.py's), by hand on losses whose answer is known."""
    from bbt_jax.harness import kept_draw

    assert kept_draw([0.5, 0.3, 0.4]) == 1
    assert kept_draw([0.5, 0.3, 0.3]) == 1  # a tie keeps the first draw
    assert kept_draw(np.array([0.5, 0.3, 0.4]), 0.29) == -1  # the template alone is lower: no demonstrations
    assert kept_draw([0.5, 0.3, 0.4], 0.3) == 1  # a tie keeps the draw
    assert kept_draw([0.5, 0.3, 0.4], 0.45) == 1
