"""Reading a prompt as tokens (bbt_jax/reading.py) and `bbt-jax inspect`: nearest tokens of exact and
noisy vocabulary embeddings, k ordering, deep layers per layer, the --json schema, the hard-prompt
score, one-line errors."""

import dataclasses
import json

import numpy as np
import pytest

from bbt_jax import artifact, cli, reading
from bbt_jax.fitness import split_metrics

IDS = np.array([3, 17, 42, 8])


@pytest.fixture(scope="module")
def word():
    return np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)


def test_exact_embeddings_read_as_their_tokens(word):
    r = reading.nearest(word, word[IDS], 3)
    assert r["cos_ids"][:, 0].tolist() == IDS.tolist() and r["l2_ids"][:, 0].tolist() == IDS.tolist()
    np.testing.assert_allclose(r["cos"][:, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(r["l2"][:, 0], 0.0, atol=1e-6)
    noisy = word[IDS] + 1e-3 * np.random.default_rng(1).normal(size=(len(IDS), 8)).astype(np.float32)
    assert reading.hard_prompt_ids(word, noisy).tolist() == IDS.tolist()
    assert reading.hard_prompt_ids(word, noisy, by="l2").tolist() == IDS.tolist()


def test_k_ordering_matches_brute_force(word):
    x = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    r = reading.nearest(word, x, 7)
    cos = (x @ word.T) / np.linalg.norm(x, axis=1)[:, None] / np.linalg.norm(word, axis=1)[None, :]
    l2 = np.linalg.norm(x[:, None, :] - word[None], axis=-1)
    np.testing.assert_array_equal(r["cos_ids"], np.argsort(-cos, axis=1)[:, :7])
    np.testing.assert_array_equal(r["l2_ids"], np.argsort(l2, axis=1)[:, :7])
    assert (np.diff(r["cos"], axis=1) <= 0).all() and (np.diff(r["l2"], axis=1) >= 0).all()
    np.testing.assert_allclose(r["l2"], np.sort(l2, axis=1)[:, :7], rtol=1e-5)


def test_deep_layers_are_read_per_layer(word):
    layers = np.stack([word[IDS], word[IDS[::-1]], word[IDS + 1]])
    out = reading.read_prompt(word, word[IDS] + 0.5, k=2, p0_NxD=word[IDS], layers_YxNxD=layers)
    assert [p["distance_from_p0"] for p in out["positions"]] == pytest.approx([0.5 * np.sqrt(8)] * 4)
    for y, ids in enumerate([IDS, IDS[::-1], IDS + 1]):
        assert out["layers"][y]["layer"] == y
        assert [p["cosine"][0]["id"] for p in out["layers"][y]["positions"]] == ids.tolist()
        assert [p["l2"][0]["id"] for p in out["layers"][y]["positions"]] == ids.tolist()
    norms = np.linalg.norm(word, axis=1)
    assert out["word_norms"]["median"] == pytest.approx(float(np.median(norms)))


@pytest.fixture(scope="module")
def harness(tmp_path_factory, data_dir):
    """A tiny RoBERTa harness and a random prompt saved from it (no search: seconds)."""
    from bbt_jax import config as config_lib
    from bbt_jax.harness import build

    cfg = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), test_rows=16, method="prompt-tuning")
    h = build(cfg, default_tokenizer=cli.shared_path("models/roberta-tokenizer/tokenizer.json"), log=lambda s: None)
    out = tmp_path_factory.mktemp("read")
    prompt = 0.3 * np.random.default_rng(3).normal(size=(4, 32)).astype(np.float32)
    artifact.save_prompt(out, h, prompt, {})
    return artifact.load_prompt(out), h


@pytest.fixture(scope="module")
def run(harness):
    return harness[0].path.parent


def test_inspect_json_schema(run, tmp_path, capsys):
    js = tmp_path / "r.json"
    assert cli.main(["inspect", "--prompt", str(run), "--k", "3", "--json", str(js), "--score"]) == 0
    printed = capsys.readouterr().out
    assert "nearest by cosine" in printed and "test, hard reading" in printed
    r = json.loads(js.read_text())
    assert {"prompt", "model", "family", "placement", "n_prompt", "hidden", "k", "vocab", "word_norms",
            "input_space", "positions", "layers", "score"} <= set(r)
    assert r["placement"] == "add" and r["n_prompt"] == 4 and r["hidden"] == 32 and r["k"] == 3
    assert r["layers"] is None and r["input_space"] == "embedding-output"  # RoBERTa adds after LayerNorm
    assert set(r["word_norms"]) == {"median", "p5", "p95"}
    assert len(r["positions"]) == 4
    for p in r["positions"]:
        assert {"index", "norm", "distance_from_p0", "raw", "input"} <= set(p)
        for reading_ in (p["raw"], p["input"]):
            assert [set(e) for e in reading_["cosine"]] == [{"id", "token", "similarity"}] * 3
            assert [set(e) for e in reading_["l2"]] == [{"id", "token", "distance"}] * 3
    assert set(r["score"]) == {"soft", "hard", "hard_ids", "hard_tokens"}
    assert r["score"]["soft"]["rows"] == 16


def test_hard_reading_of_token_embeddings_scores_as_the_soft_prompt(harness):
    saved, h = harness
    word = np.asarray(h.backbone.word_embeddings(h.model.params))
    ids = np.array([1000, 2000, 3000, 4000])
    soft = word[ids] + 1e-4  # a prompt that IS (nearly) those tokens' embeddings
    assert reading.hard_prompt_ids(word, soft).tolist() == ids.tolist()
    want = split_metrics(h.backbone, h.frozen, h.test_batches, word[ids][None], h.task.metric)[0]
    assert reading.score_as_hard_prompt(h, ids) == want
    layers = np.random.default_rng(0).normal(size=(2, 4, 32)).astype(np.float32)
    deep = dataclasses.replace(saved, prompt_NxD=word[ids], layers_YxNxD=layers)
    out = reading.inspect(h, deep, k=2, score=True)
    assert out["score"]["hard"] == out["score"]["soft"] and out["score"]["hard_ids"] == ids.tolist()
    assert [len(layer["positions"]) for layer in out["layers"]] == [4, 4]


def test_bad_prompt_path_is_one_line(tmp_path, capsys):
    assert cli.main(["inspect", "--prompt", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --prompt") and "not found" in err[0]
    assert cli.main(["inspect", "--prompt", str(tmp_path), "--k", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
