"""verbalizer.py: several words per class. The C x W score is the mean of the words' own logits; the
words are chosen on the training rows only, as a slow row-by-row reference computes them; runs,
results and cards carry the C x W verbalizer."""

import json

import jax
import numpy as np
import pytest

from bbt_jax import cli
from bbt_jax import config as C
from bbt_jax import verbalizer as V
from bbt_jax.errors import UserError
from bbt_jax.harness import build
from bbt_jax.models.family import make_frozen
from bbt_jax.tasks import pad_batch
from tests.conftest import ROBERTA_TOKENIZER


def _harness(data_dir, **over):
    return build(C.override(C.tiny(), data_dir=str(data_dir), **over), default_tokenizer=ROBERTA_TOKENIZER,
                 log=lambda s: None)


@pytest.fixture(scope="module")
def h3(data_dir):
    return _harness(data_dir, words_per_class=3, verbalizer_space=True)


def test_class_score_is_the_mean_of_its_words_logits(h3):
    ids_CxW = np.asarray(h3.verbalizer_C)
    assert ids_CxW.shape == (2, 3)
    b = h3.buckets("train")[0]
    prompt = h3.projection(0.3 * jax.random.normal(jax.random.PRNGKey(0), (h3.cfg.prompt.intrinsic_dim,)))
    ours = np.asarray(h3.backbone.score(h3.frozen, h3.backbone.prepare(h3.frozen, (b,)), prompt))
    per_word = []
    for w in range(3):  # the reference: one single-word verbalizer per word position
        f = make_frozen(h3.frozen["params"], ids_CxW[:, w])
        per_word.append(np.asarray(h3.backbone.score(f, h3.backbone.prepare(f, (b,)), prompt)))
    np.testing.assert_allclose(ours, np.mean(per_word, axis=0), rtol=1e-5, atol=1e-5)


def test_words_are_chosen_on_the_training_rows_as_a_slow_reference(h3, data_dir):
    h1 = _harness(data_dir, verbalizer_space=True)
    own = np.asarray(h1.verbalizer_C)
    tok = h1.model.vocab.tokenizer
    vocab_size = int(h1.backbone.word_embeddings(h1.model.params).shape[0])
    frozen = make_frozen(h1.frozen["params"], np.arange(vocab_size))
    prompt = h1.projection(h1.start)
    logp, labels = [], []
    longest = max(len(r.ids) for r in h1.encoded["train"])
    for row in h1.encoded["train"]:  # one row at a time (padded to one length: one compilation)
        b = pad_batch([row], longest, h1.model.vocab.pad_id)
        logits = np.asarray(h1.backbone.score(frozen, h1.backbone.prepare(frozen, (b,)), prompt))[0]
        logp.append(logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max())
        labels.append(row.label)
    logp, labels = np.asarray(logp), np.asarray(labels)
    score = np.stack([logp[labels == c].mean(0) - logp.mean(0) for c in range(2)])

    def ok(v):
        text = tok.decode([int(v)])
        return text.startswith(" ") and len(text) >= 3 and text[1:].isalpha() and text[1:].isascii()

    expected, taken = [], set(own.tolist())
    for c in range(2):
        words = [int(own[c])]
        likely = [int(v) for v in np.argsort(-logp[labels == c].mean(0), kind="stable") if ok(v)][:V.POOL]
        for v in np.argsort(-score[c], kind="stable"):
            if int(v) in likely and int(v) not in taken and len(words) < 3:
                words.append(int(v))
                taken.add(int(v))
        expected.append(words)
    got = np.asarray(h3.verbalizer_C)
    assert got[:, 0].tolist() == own.tolist()  # the task's own word first
    assert got.tolist() == expected
    assert len(set(got.reshape(-1).tolist())) == 6


def test_a_rare_word_with_the_highest_contrast_is_outside_the_pool():
    """Word 4 is ~100x likelier on class 0 than on class 1 but improbable on both (log p -20 vs -29): the
    bare contrast ranks it first for class 0; the pool (each class's 3 likeliest words) leaves it out."""
    logp_CxV = np.asarray([[-1.0, -2.0, -4.0, -6.0, -20.0],
                           [-1.5, -3.0, -1.0, -2.0, -29.0]])
    score = logp_CxV - logp_CxV.mean(0)
    mask = np.ones(5, bool)
    pool = V.pools(logp_CxV, mask, size=3)
    assert pool.tolist() == [[True, True, True, False, False], [True, False, True, True, False]]
    assert np.argmax(score[0]) == 4  # the bare contrast would take it
    assert V.pick(score, np.asarray([0, 2]), mask, 2).tolist() == [[0, 4], [2, 3]]
    assert V.pick(score, np.asarray([0, 2]), pool, 2).tolist() == [[0, 1], [2, 3]]
    assert V.pools(logp_CxV, np.asarray([True, False, True, True, True]), size=1).tolist() == [
        [True, False, False, False, False], [False, False, True, False, False]]


def test_pick_skips_taken_words_and_errors_when_short():
    score = np.asarray([[0.0, 5.0, 4.0, 1.0], [0.0, 6.0, 3.0, 2.0]])
    mask = np.asarray([True, True, True, False])
    assert V.pick(score, np.asarray([0, 3]), mask, 2).tolist() == [[0, 1], [3, 2]]
    with pytest.raises(UserError, match="--words-per-class 3"):
        V.pick(score, np.asarray([0, 3]), mask, 3)


def test_run_results_and_card_carry_the_words(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data-dir", str(data_dir), "--words-per-class", "2", "--verbalizer-space",
            "--budget", "8", "--eval-every", "8", "--test-rows", "16", "--num-buckets", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    card = json.loads((out / "prompt.json").read_text())
    assert np.asarray(res["verbalizer"]["ids"]).shape == (2, 2) and res["verbalizer"]["words"][0][0] == " bad"
    assert card["verbalizer"] == res["verbalizer"]
    assert cli.main(["eval", "--prompt", str(out)]) == 0  # the rebuilt run scores the same
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test"] == res["test"]
    assert cli.main(argv[:-2] + ["--words-per-class", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--words-per-class 0: must be >= 1" in capsys.readouterr().err
