"""The prompt library (bbt_jax/library.py) and `bbt-jax library`: instance keys equal an unbatched forward
pooled by hand (both families, every placement), the instance vote on a hand-built library, idempotent add
and index round trip, the vote-weighted interpolation as train's p0, layout-incompatible entries skipped or
refused, one-line CLI errors."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax import artifact, cli, library
from bbt_jax import config as config_lib
from bbt_jax.errors import UserError
from bbt_jax.harness import build
from bbt_jax.models import llama, roberta
from bbt_jax.models.family import LoadedModel
from bbt_jax.types import TokenBatch

TOKENIZER = cli.shared_path("models/roberta-tokenizer/tokenizer.json")


def _build(data_dir, model=None, **flags):
    cfg = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), **{**library.EMBED_SETTINGS, **flags})
    return build(cfg, default_tokenizer=TOKENIZER, model=model, log=lambda s: None)


@pytest.fixture(scope="module")
def tiny_model(data_dir):
    return _build(data_dir).model


@pytest.fixture(scope="module")
def tiny_llama(roberta_tokenizer):
    """A tiny random Llama on the RoBERTa tokenizer (ids < V), as a loaded model."""
    cfg = llama.LlamaConfig(vocab_size=50265, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    params = jax.tree.map(lambda x: 10 * x, llama.init_params(cfg, jax.random.PRNGKey(1)))  # activations O(1)
    return LoadedModel(llama.FAMILY, cfg, params, llama.make_vocab(roberta_tokenizer, cfg), "test:tiny-llama")


# ----------------------------------------------------------------------------- (a) keys
def _reference_key(h, row) -> np.ndarray:
    """One row, unpadded, through the family's own forward; the mean over its non-slot tokens by hand."""
    L, n = len(row.ids), h.layout.n_prompt
    one = TokenBatch(jnp.asarray([row.ids], jnp.int32), jnp.ones((1, L), jnp.int32),
                     jnp.asarray([row.prompt_start], jnp.int32), jnp.asarray([row.answer_pos], jnp.int32),
                     jnp.zeros(1, jnp.int32), jnp.ones(1, jnp.float32))
    if h.model.family.name == "roberta":
        forward = functools.partial(roberta.hidden_states, h.model.config, placement=h.layout.placement, collect=True)
    else:
        forward = functools.partial(llama.hidden_states, h.model.config, mode=h.layout.splice, collect=True)
    inputs_YxBxLxD = jax.jit(forward)(h.frozen["params"], one, jnp.asarray(h.layout.p0))[1]
    last_LxD = np.asarray(inputs_YxBxLxD[-1][0], np.float64)
    kept = [i for i in range(L) if not row.prompt_start <= i < row.prompt_start + n]
    assert len(kept) == L - n
    return last_LxD[kept].mean(0)


@pytest.mark.parametrize("family,placement", [("roberta", "add"), ("roberta", "cat"), ("llama", "prefix"),
                                              ("llama", "suffix"), ("llama", "cue")])
def test_keys_equal_an_unbatched_forward_pooled_by_hand(family, placement, data_dir, tiny_model, tiny_llama):
    model = tiny_model if family == "roberta" else tiny_llama
    h = _build(data_dir, model=model, placement=placement, task="rte" if family == "llama" else "sst2",
               max_length=96)
    rows = h.encoded["train"]
    keys_MxD = library.embed_rows(h, batch_rows=5)  # 32 rows: 7 batches, the last one padded
    assert keys_MxD.shape == (len(rows), h.layout.p0.shape[1]) and np.isfinite(keys_MxD).all()
    assert len({len(r.ids) for r in rows}) > 3  # rows of many lengths: pads are excluded, not averaged in
    for i in (0, len(rows) - 1):  # the first and last batch
        ref = _reference_key(h, rows[i])
        np.testing.assert_allclose(keys_MxD[i], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


# ----------------------------------------------------------------------------- (b) the vote
# Keys (unit-norm, 3-D) of three entries and four queries, cosines read off by eye:
KEYS_MxD = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0.6, 0.8], [0, 0, 1]], np.float32)
KEY_ENTRY_M = np.array([0, 0, 1, 1, 2], np.int32)
QUERIES_QxD = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0.6, 0.8]], np.float32)
# top-2 per query: q0 -> keys 0 (1.0), 1 (0.8); q1 -> key 2 (1.0), then keys 1 and 3 tie at 0.6: key 1;
# q2 -> key 4 (1.0), key 3 (0.8); q3 -> key 3 (1.0), key 4 (0.8).
# votes: entry 0: 3 (1 + 0.8 + 0.6 = 2.4), entry 1: 3 (1 + 0.8 + 1 = 2.8), entry 2: 2 (1 + 0.8 = 1.8)
# -> tie on votes between 0 and 1, broken by summed similarity: 1, 0, 2.


def test_instance_vote_hand_computed():
    ids, votes, sims = library.instance_vote(QUERIES_QxD, KEYS_MxD, KEY_ENTRY_M, top_m=2)
    assert ids.tolist() == [1, 0, 2] and votes.tolist() == [3, 3, 2]
    np.testing.assert_allclose(sims, [2.8, 2.4, 1.8], atol=1e-6)
    ids, votes, _ = library.instance_vote(QUERIES_QxD[:3], KEYS_MxD, KEY_ENTRY_M, top_m=2)  # without q3
    assert ids.tolist() == [0, 1, 2] and votes.tolist() == [3, 2, 1]
    ids, votes, sims = library.instance_vote(2.0 * QUERIES_QxD, KEYS_MxD, KEY_ENTRY_M, top_m=1)  # scale-free
    # top-1: q0 -> key 0 (entry 0), q1 -> key 2 (1), q2 -> key 4 (2), q3 -> key 3 (1); entries 0 and 2 tie on
    # votes and similarity: the lower id first
    assert ids.tolist() == [1, 0, 2] and votes.tolist() == [2, 1, 1]
    np.testing.assert_allclose(sims, [2.0, 1.0, 1.0], atol=1e-6)


def test_entries_sharing_their_keys_get_equal_votes_and_rank_by_their_dev_score():
    """Methods tuned on one split embed the same rows alike: a hit on their shared key votes for each of
    them, and their own dev score orders them (before: every vote went to the entry added first)."""
    keys_MxD = np.concatenate([KEYS_MxD, KEYS_MxD[2:4]])  # entry 3 = entry 1's rows (another method)
    key_entry_M = np.concatenate([KEY_ENTRY_M, [3, 3]])
    ids, votes, sims = library.instance_vote(QUERIES_QxD, keys_MxD, key_entry_M, top_m=2, dev_E={1: 0.6, 3: 0.8})
    assert ids.tolist() == [3, 1, 0, 2] and votes.tolist() == [3, 3, 3, 2]  # as the hand-computed vote above
    np.testing.assert_allclose(sims, [2.8, 2.8, 2.4, 1.8], atol=1e-6)
    ids, _, _ = library.instance_vote(QUERIES_QxD, keys_MxD, key_entry_M, top_m=2)  # no dev scores: the lower id
    assert ids.tolist() == [1, 3, 0, 2]


LAYOUT = {"placement": "add", "splice": "add", "n_prompt": 2, "hidden": 3, "layers": None}


def _hand_library(tmp_path):
    lib = library.new_library(tmp_path / "lib", "test-model", "roberta")
    for i, task in enumerate(["sst2", "rte", "agnews"]):
        m = KEY_ENTRY_M == i
        library.add_entry(lib, {"run": f"/runs/{task}", "task": task, "seed": 13, "method": "bbt", "test": None,
                                **LAYOUT}, KEYS_MxD[m], np.full((2, 3), i + 1.0, np.float32))
    odd = {**LAYOUT, "placement": "cat", "splice": "replace"}  # same shape, another placement: never mixed
    library.add_entry(lib, {"run": "/runs/cat", "task": "sst2", "seed": 13, "method": "bbt", "test": None, **odd},
                      QUERIES_QxD, np.zeros((2, 3), np.float32))  # its keys would win every vote
    return lib


def test_query_ranks_by_vote_skips_other_layouts_and_excludes_the_task(tmp_path):
    lib = _hand_library(tmp_path)
    r = library.query(lib, QUERIES_QxD, LAYOUT, task="sst2", k=2, top_m=2)
    assert [(x["id"], x["votes"]) for x in r["ranking"]] == [(1, 3), (0, 3)]
    top = r["ranking"][0]
    assert top["similarity"] == pytest.approx(2.8) and top["mean_similarity"] == pytest.approx(2.8 / 3)
    assert r["skipped"] == [{"id": 3, "task": "sst2", "reason": "layout cat/replace 2x3"}] and r["keys"] == 5
    assert "note: skipped 1 entries: 3 (sst2, layout cat/replace 2x3)" in library.format_query(r)
    r = library.query(lib, QUERIES_QxD, LAYOUT, task="rte", k=3, top_m=2, exclude_task=True)
    # keys 0, 1 (entry 0) and 4 (entry 2) left: q0 -> 0, 1; q1 -> 1 (0.6), then 0 and 4 tie at 0: key 0;
    # q2 -> 4, 0 (tie at 0 with 1: the lower index); q3 -> 4 (0.8), 1 (0.36): entry 0: 6 votes, entry 2: 2
    assert [(x["id"], x["votes"]) for x in r["ranking"]] == [(0, 6), (2, 2)]
    assert {"id": 1, "task": "rte", "reason": "--exclude-task"} in r["skipped"]
    prompt_NxD, layers, weights = library.interpolate(lib, r["ranking"])
    assert weights == [0.75, 0.25] and layers is None
    np.testing.assert_allclose(prompt_NxD, np.full((2, 3), 0.75 * 1 + 0.25 * 3))  # entry i's prompt: i + 1
    with pytest.raises(UserError, match=r"no entry fits the query's layout add/add 5x3"):
        library.query(lib, QUERIES_QxD, {**LAYOUT, "n_prompt": 5}, task="sst2")


# ----------------------------------------------------------------------------- runs and the CLI
def _save_run(out, h, seed, results=None):
    """A random prompt saved from harness `h` as a train run folder (no search)."""
    rng = np.random.default_rng(seed)
    n, d = h.layout.p0.shape
    z = rng.normal(size=(n, d)).astype(np.float32)
    if h.deep:
        z = {"input": z, "layers": rng.normal(size=(h.backbone.num_layers, n, d)).astype(np.float32)}
    out.mkdir(parents=True)
    artifact.save_prompt(out, h, z, {})
    if results is not None:
        (out / "results.json").write_text(json.dumps(results))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, tiny_model):
    root = tmp_path_factory.mktemp("runs")
    specs = {"sst2-13": dict(task="sst2", seed=13), "sst2-21": dict(task="sst2", seed=21),
             "rte-13": dict(task="rte", seed=13), "cat": dict(task="sst2", seed=13, placement="cat"),
             "deep": dict(task="sst2", seed=13, method="deep-prompt-tuning")}
    out = {}
    for i, (name, flags) in enumerate(specs.items()):
        h = _build(data_dir, model=tiny_model, **{"method": "prompt-tuning", **flags})
        out[name] = _save_run(root / name, h, i, {"test": {"acc": 0.5 + i / 100, "rows": 1}, "dev": {"best_perf": 0.6}})
    return out


@pytest.fixture(scope="module")
def lib_dir(runs, tmp_path_factory):
    path = tmp_path_factory.mktemp("library") / "lib"
    assert cli.main(["library", "add", "--library", str(path), *map(str, runs.values())]) == 0
    return path


def _json_out(capsys, argv):
    capsys.readouterr()
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_add_is_idempotent_and_the_index_round_trips(runs, lib_dir, tmp_path, capsys):
    path = tmp_path / "lib"
    shutil.copytree(lib_dir, path)
    before = library.open_library(path)
    index = _json_out(capsys, ["library", "list", "--library", str(path), "--json"])
    assert index == json.loads((path / "index.json").read_text()) == before.index
    assert [(e["id"], e["task"], e["seed"]) for e in index["entries"]] == [
        (0, "sst2", 13), (1, "sst2", 21), (2, "rte", 13), (3, "sst2", 13), (4, "sst2", 13)]
    e0 = index["entries"][0]
    assert e0["run"] == str(runs["sst2-13"].resolve()) and e0["test"] == {"acc": 0.5, "rows": 1} and e0["dev"] == 0.6
    assert (e0["keys"], e0["n_prompt"], e0["hidden"], e0["layers"]) == (32, 4, 32, None)
    assert index["entries"][4]["layers"] == 2 and index["model"] == "preset:tiny (random weights)"
    for name, e in zip(runs, index["entries"]):
        saved = artifact.load_prompt(runs[name])
        prompt_NxD, layers = before.prompt(e["id"])
        np.testing.assert_array_equal(prompt_NxD, saved.prompt_NxD)
        assert (layers is None) == (saved.layers_YxNxD is None)
    assert cli.main(["library", "add", "--library", str(path), str(runs["rte-13"]), str(runs["sst2-13"])]) == 0
    after = library.open_library(path)
    assert [e["id"] for e in after.entries] == [0, 1, 2, 3, 4] and after.index["next_id"] == 5
    assert after.index["generation"] == before.index["generation"] + 1
    assert sorted(p.name for p in path.iterdir()) == [after.index["arrays"]["file"], "index.json"]
    for i in range(5):  # same keys and prompts per entry (the re-added ones moved to the end of keys_MxD)
        k_before = before.keys[0][before.keys[1] == i]
        np.testing.assert_allclose(after.keys[0][after.keys[1] == i], k_before, rtol=1e-6)
        np.testing.assert_array_equal(after.prompt(i)[0], before.prompt(i)[0])
    assert "rte" in capsys.readouterr().out
    assert cli.main(["library", "list", "--library", str(path)]) == 0
    table = capsys.readouterr().out
    assert "5 entries, 160 keys" in table and "add/add 4x32 2 layers" in table and "cat/replace 4x32" in table


def test_query_interpolates_by_vote_share_and_train_starts_from_it(runs, lib_dir, data_dir, tiny_model, tmp_path,
                                                                   capsys):
    out = tmp_path / "p0.safetensors"
    r = _json_out(capsys, ["library", "query", "--library", str(lib_dir), "--task", "sst2", "--seed", "13",
                           "--data-dir", str(data_dir), "--k", "3", "--top-m", "4", "--interpolate",
                           "--write", str(out), "--json"])
    ranking = r["ranking"]
    assert r["queries"] == 32 and r["keys"] == 96 and r["entries"] == 3 and 1 <= len(ranking) <= 3
    assert sum(x["votes"] for x in ranking) <= 32 * 4 and ranking[0]["id"] == 0  # its own rows vote for sst2-13
    names = {0: "sst2-13", 1: "sst2-21", 2: "rte-13"}
    votes = np.array([x["votes"] for x in ranking], np.float64)
    expected = sum(v / votes.sum() * artifact.load_prompt(runs[names[x["id"]]]).prompt_NxD
                   for v, x in zip(votes, ranking))
    assert [x["weight"] for x in ranking] == pytest.approx(list(votes / votes.sum()))
    assert r["written"] == str(out)
    h = _build(data_dir, model=tiny_model, method="bbt", init_prompt=str(out), test_rows=8)  # = train --init-prompt
    np.testing.assert_allclose(h.layout.p0, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(h.projection(h.start)), expected, rtol=1e-5, atol=1e-6)  # z = 0


def test_other_layouts_are_skipped_with_a_note_or_refused(lib_dir, data_dir, capsys):
    base = ["library", "query", "--library", str(lib_dir), "--task", "rte", "--seed", "13", "--data-dir", str(data_dir)]
    capsys.readouterr()
    assert cli.main(base + ["--k", "1"]) == 0
    printed = capsys.readouterr().out
    assert ("note: skipped 2 entries: 3 (sst2, layout cat/replace 4x32), 4 (sst2, layout add/add 4x32 2 layers)"
            in printed)
    r = _json_out(capsys, base + ["--placement", "cat", "--json"])
    assert [x["id"] for x in r["ranking"]] == [3] and len(r["skipped"]) == 4
    r = _json_out(capsys, base + ["--method", "deep-prompt-tuning", "--json"])
    assert [x["id"] for x in r["ranking"]] == [4]
    r = _json_out(capsys, base + ["--exclude-task", "--json"])
    assert 2 not in [x["id"] for x in r["ranking"]]
    rc = cli.main(base + ["--n-prompt-tokens", "3", "--interpolate"])
    _assert_one_error(capsys, rc, "no entry fits the query's layout add/add 3x32 (0 (sst2): layout add/add 4x32")


# ----------------------------------------------------------------------------- (f) errors
def _assert_one_error(capsys, rc, expected):
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


def test_cli_errors_are_one_line_and_keep_the_library(runs, lib_dir, data_dir, tmp_path, capsys):
    path = tmp_path / "lib"
    shutil.copytree(lib_dir, path)
    files = {p.name: p.read_bytes() for p in path.iterdir()}
    q = ["library", "query", "--library", str(path), "--data-dir", str(data_dir)]
    other = tmp_path / "other"
    shutil.copytree(runs["rte-13"], other)
    card = json.loads((other / "prompt.json").read_text())
    (other / "prompt.json").write_text(json.dumps({**card, "model": "preset:other"}))
    (tmp_path / "empty").mkdir()
    cases = [
        (["library", "list", "--library", str(tmp_path / "nope")], "no prompt library here (index.json not found"),
        (["library", "query", "--library", str(tmp_path / "nope")], "no prompt library here"),
        (["library", "add", "--library", str(path), str(tmp_path / "empty")], "no prompt.json here"),
        (["library", "add", "--library", str(path), str(runs["cat"]), str(tmp_path / "gone")], "gone: no such folder"),
        (["library", "add", "--library", str(path), str(other)], "a prompt of preset:other, but the library holds"),
        (["library", "add", "--library", str(runs["cat"] / "prompt.json"), str(other)], "is a file, expected a folder"),
        (q + ["--task", "nope"], "--task nope: unknown task"),
        (q + ["--write", str(tmp_path / "p.pt")], "must end in .safetensors"),
        (q + ["--k", "0"], "--k 0: must be >= 1"),
    ]
    for argv, expected in cases:
        _assert_one_error(capsys, cli.main(argv), expected)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files  # nothing written, nothing lost
