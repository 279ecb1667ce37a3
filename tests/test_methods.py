"""Every method end to end through the command line on the tiny model: results.json schema, the prompt
artifact (L x N x D for deep prompts), `bbt-jax eval` reproducing the test metric, and the initial
prompts shared by all methods (--prompt-init, --init-prompt from an artifact)."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from bbt_jax import cli
from bbt_jax import config as config_lib
from bbt_jax.harness import VOCAB_INIT_IDS, build
from bbt_jax.prompt import embedding_std

FLAGS = {
    "bbtv2": ["--method", "bbtv2", "--budget", "24", "--eval-every", "8"],  # 24 // (4 x 2) = 3 rounds
    "prompt-tuning": ["--method", "prompt-tuning", "--budget", "12", "--eval-every", "4", "--lr", "1.0"],
    "deep-prompt-tuning": ["--method", "deep-prompt-tuning", "--budget", "12", "--eval-every", "4", "--lr", "1.0"],
}


@pytest.fixture(scope="module", params=list(FLAGS))
def run(request, tmp_path_factory, data_dir):
    method = request.param
    out = tmp_path_factory.mktemp(method)
    argv = ["train", "--preset", "tiny", "--data-dir", str(data_dir), "--out", str(out), "--test-rows", "32",
            "--zero-shot", *FLAGS[method]]
    assert cli.main(argv) == 0
    return method, out, json.loads((out / "results.json").read_text())


def test_results_and_artifact(run):
    method, out, res = run
    assert res["effective"]["method"] == method
    deep = method != "prompt-tuning"
    tensors = load_file(str(out / "prompt.safetensors"))
    assert tensors["prompt"].shape == (4, 32)
    if deep:
        assert tensors["layers"].shape == (2, 4, 32)  # tiny: 2 layers, N = 4, D = 32
        assert res["effective"]["layers"] == 2
    else:
        assert "layers" not in tensors
    if method == "bbtv2":
        assert tensors["z"].shape == (2, 8) and np.asarray(res["best_z"]).shape == (2, 8)
        assert res["calls"] == 24 and res["passes"] == {"forward": 24, "backward": 0}
        assert res["effective"]["layer_schedule"] == "sequential"
    else:  # gradient: steps are calls, each a forward and a backward pass; the prompt is the candidate
        assert "z" not in tensors and res["best_z"] is None
        assert res["calls"] == 12 and res["passes"] == {"forward": 12, "backward": 12}
        assert res["effective"]["strategy"] is None and res["effective"]["optimizer"] == "adamw"
        assert [r["calls"] for r in res["curve"]] == list(range(1, 13))
        assert all("grad_norm" in r for r in res["curve"])
    assert set(res["zero_shot_test"]) == {"acc", "rows"}


def test_eval_reproduces_the_test_metric(run, capsys):
    _, out, res = run
    capsys.readouterr()
    assert cli.main(["eval", "--prompt", str(out)]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["test"] == res["test"]


def test_gradient_start_is_the_zero_shot_prompt(run):
    """Step 0 of the gradient methods is p0 (zeros at every layer): the zero-shot prompt that BBT's z = 0 gives."""
    method, out, res = run
    if method == "bbtv2":
        pytest.skip("an ES method")
    bbt = json.loads((out / "results.json").read_text())["zero_shot_test"]
    h = build(config_lib.override(config_lib.from_dict(res["config"]), method="bbt"),
              default_tokenizer=_tokenizer())
    from bbt_jax.train import score_candidates

    assert score_candidates(h, np.zeros((1, h.cfg.prompt.intrinsic_dim), np.float32))[0] == bbt


def _tokenizer():
    from tests.conftest import ROBERTA_TOKENIZER

    return ROBERTA_TOKENIZER


@pytest.mark.parametrize("kind", ["vocab", "random"])
def test_prompt_init(kind, data_dir, roberta_tokenizer):
    cfg = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), prompt_init=kind, method="prompt-tuning")
    h = build(cfg, default_tokenizer=_tokenizer())
    word = np.asarray(h.backbone.word_embeddings(h.model.params))
    p0 = np.asarray(h.x0)
    assert p0.shape == (4, 32) and np.array_equal(p0, h.layout.p0)
    if kind == "vocab":  # each row is the embedding of a distinct frequent token
        rows = [int(np.flatnonzero((word[:VOCAB_INIT_IDS] == r).all(1))[0]) for r in p0]
        assert len(set(rows)) == 4
    else:
        assert abs(p0.std() - embedding_std(word)) < 0.3 * embedding_std(word)
    again = build(cfg, default_tokenizer=_tokenizer(), model=h.model)
    np.testing.assert_array_equal(again.layout.p0, p0)  # drawn from the seed


def test_init_prompt_from_an_artifact(run, data_dir, roberta_tokenizer):
    method, out, _ = run
    if method != "prompt-tuning":
        pytest.skip("one artifact is enough")
    cfg = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), init_prompt=str(out))
    h = build(cfg, default_tokenizer=_tokenizer())
    np.testing.assert_array_equal(h.layout.p0, load_file(str(out / "prompt.safetensors"))["prompt"])
