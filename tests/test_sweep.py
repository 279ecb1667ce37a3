"""Vmapped sweeps equal their solo runs; sharded populations equal one device."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax.prompt import make_projection
from bbt_jax.sweep import Sweep, stack
from tests.test_search import C, D, K, as_problem, make_search, toy_problem


def stacked_projections(seeds):
    projs = [make_projection(jax.random.PRNGKey(s), intrinsic_dim=K, p0_NxD=np.zeros((C, D)), embed_std=1.0)
             for s in seeds]
    return stack(projs), projs


def test_sweep_members_equal_solo_runs():
    frozen, _, data = toy_problem()
    search = make_search(budget=8 * 6, eval_every=24)
    seeds, sigmas = [0, 1, 2], [1.0, 0.5, 2.0]
    projs_S, projs = stacked_projections(seeds)
    keys_S = jnp.stack([jax.random.PRNGKey(100 + s) for s in seeds])
    sweep = Sweep(search)
    p_S = as_problem(frozen, projs_S, data)
    states_S, curves_SxG = sweep.run(p_S, p_S, *sweep.init(keys_S, sigmas))
    assert curves_SxG.shape == (3, 6)
    for s in range(3):
        p = search.es_params(sigmas[s])
        solo = as_problem(frozen, projs[s], data)
        state, hist = search.run(solo, solo, search.init(keys_S[s], p), es_params=p)
        np.testing.assert_allclose(curves_SxG[s], [h["best_loss"] for h in hist], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(states_S.best_dev_z[s]), np.asarray(state.best_dev_z),
                                   rtol=1e-4, atol=1e-5)
        assert abs(float(states_S.best_dev_perf[s]) - float(state.best_dev_perf)) < 1e-6
    assert sweep.interval._cache_size() == 1


SHARDED = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from tests.test_search import as_problem, make_search, search_for, toy_problem
    from tests.test_sweep import stacked_projections
    from bbt_jax.sweep import Sweep
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("pop",))
    frozen, proj, data = toy_problem()
    one = make_search(budget=8 * 6)
    many = search_for(one.config, mesh=mesh)
    p = as_problem(frozen, proj, data)
    s1, h1 = one.run(p, p, one.init(jax.random.PRNGKey(3)))
    s4, h4 = many.run(p, p, many.init(jax.random.PRNGKey(3)))
    np.testing.assert_allclose([h["best_loss"] for h in h1], [h["best_loss"] for h in h4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s1.best_dev_z), np.asarray(s4.best_dev_z), rtol=1e-4, atol=1e-5)
    projs_S, _ = stacked_projections([0, 1, 2, 3])
    keys_S = jnp.stack([jax.random.PRNGKey(s) for s in range(4)])
    plain, sharded = Sweep(one), Sweep(one, mesh=mesh)
    p_S = as_problem(frozen, projs_S, data)
    a, ca = plain.run(p_S, p_S, *plain.init(keys_S, [1.0] * 4))
    b, cb = sharded.run(p_S, p_S, *sharded.init(keys_S, [1.0] * 4))
    assert len(b.best_dev_z.sharding.device_set) == 4
    np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-6)
    print("SHARDED-OK")
''')


def test_sharded_population_and_sweep_equal_one_device(tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1]),
           "JAX_PLATFORMS": "cpu"}
    import os
    env = {**os.environ, **env}
    r = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300,
                       cwd=env["PYTHONPATH"])
    assert "SHARDED-OK" in r.stdout, r.stderr[-3000:]



def test_a_seed_group_may_start_each_cell_from_its_own_prompt(tmp_path, data_dir, roberta_tokenizer):
    """ES cells that differ in their initial prompt p0 (--init-prompt, e.g. each seed's retrieved prompt)
    still run as one vmapped group (p0 lives in each cell's projection): each cell equals its run alone."""
    from bbt_jax import config as config_lib
    from bbt_jax import library
    from bbt_jax.models.registry import load
    from bbt_jax.sweep import train_group
    from bbt_jax.train import train
    from tests.conftest import ROBERTA_TOKENIZER

    model = load("tiny", str(ROBERTA_TOKENIZER))
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), budget=8, eval_every=4, test_rows=16,
                               num_buckets=1, eval_buckets=1)
    rng = np.random.default_rng(0)
    p0 = {seed: str(library.write_prompt(tmp_path / f"p0-{seed}.safetensors",
                                         rng.normal(0, 0.5, (4, model.config.hidden_size))))
          for seed in (13, 21)}
    cfgs = {name: [config_lib.override(base, seed=seed, init_prompt=p0[seed], out=str(tmp_path / name / str(seed)))
                   for seed in (13, 21)] for name in ("group", "solo")}
    # a gradient search holds its start x0 = p0: cells of different p0 are left to run one by one
    pt = [config_lib.override(c, method="prompt-tuning") for c in cfgs["group"]]
    assert train_group(pt, model=model, log=lambda s: None) is None
    grouped = train_group(cfgs["group"], model=model, zero_shot=True, log=lambda s: None)
    assert grouped is not None and all(r["vmapped"]["runs"] == 2 for r in grouped)
    for g, c in zip(grouped, cfgs["solo"], strict=True):
        solo = train(c, model=model, zero_shot=True, log=lambda s: None, out=c.run.out)
        np.testing.assert_allclose([r["best_loss"] for r in g["curve"]], [r["best_loss"] for r in solo["curve"]],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(g["best_z"], solo["best_z"], atol=1e-4)
        assert g["zero_shot_test"] == solo["zero_shot_test"] and g["test"] == solo["test"]
    assert grouped[0]["zero_shot_test"] != grouped[1]["zero_shot_test"] or \
        grouped[0]["curve"][0]["best_loss"] != grouped[1]["curve"][0]["best_loss"]


def test_a_seed_group_frees_each_cell_s_own_prepared_rows_before_its_test_pass(tmp_path, data_dir, monkeypatch):
    """The group searches on a stacked COPY of its cells' prepared train/dev rows (for a decoder, input caches
    of GBs: a 3-seed dbpedia group went past 24 GB while it held both); each cell's own copy must be gone by
    the time the test rows are prepared."""
    import gc
    import weakref

    from bbt_jax import config as config_lib
    from bbt_jax import sweep
    from bbt_jax.harness import Harness
    from bbt_jax.models.registry import load
    from tests.conftest import ROBERTA_TOKENIZER

    model = load("tiny", str(ROBERTA_TOKENIZER))
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), budget=8, eval_every=4, test_rows=16,
                               num_buckets=1, eval_buckets=1)
    cfgs = [config_lib.override(base, seed=seed, out=str(tmp_path / str(seed))) for seed in (13, 21)]
    refs, alive_at_test = [], []
    prepared_rows, score = Harness.prepared_rows, sweep._score_group_on_test

    def recording_prepared_rows(self, *args, **kw):
        data = prepared_rows(self, *args, **kw)
        refs.extend(weakref.ref(x) for x in jax.tree.leaves(data))
        return data

    def checking_score(runs, zero_shot):
        gc.collect()
        alive_at_test.append(sum(r() is not None for r in refs))
        return score(runs, zero_shot)

    monkeypatch.setattr(Harness, "prepared_rows", recording_prepared_rows)
    monkeypatch.setattr(sweep, "_score_group_on_test", checking_score)
    results = sweep.train_group(cfgs, model=model, zero_shot=True, log=lambda s: None)
    assert results is not None and all(r["vmapped"]["runs"] == 2 for r in results)
    assert refs and alive_at_test == [0]


def test_prepared_bytes_are_the_bytes_of_the_rows_once_prepared(data_dir, roberta_tokenizer):
    """sweep.prepared_bytes (shapes only, nothing computed) against the train and dev rows actually prepared
    at a group's padded bucket lengths: a decoder's input caches."""
    from bbt_jax import config as config_lib
    from bbt_jax import tasks as tasks_lib
    from bbt_jax.fitness import nbytes
    from bbt_jax.harness import build
    from bbt_jax.sweep import prepared_bytes
    from tests.test_demos import _tiny_llama

    cfg = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), placement="cue", test_rows=16,
                              num_buckets=2)
    h = build(cfg, model=_tiny_llama(roberta_tokenizer), log=lambda s: None)
    lengths = {s: tuple(n + 8 for n in tasks_lib.bucket_lengths(h.buckets(s))) for s in ("train", "dev")}
    prepared = [h.prepared_rows(s, lengths[s]) for s in ("train", "dev")]
    assert prepared_bytes(h, lengths) == sum(map(nbytes, prepared)) > 0


def test_stack_consuming_equals_stack_and_frees_its_inputs():
    import gc
    import weakref

    from bbt_jax.sweep import stack_consuming

    trees = [{"a": jnp.full((2, 3), float(i)), "b": (jnp.arange(4) + i, jnp.ones(1) * i)} for i in range(3)]
    expected = jax.device_get(stack(trees))
    refs = [weakref.ref(x) for t in trees for x in jax.tree.leaves(t)]
    got = stack_consuming(trees)
    gc.collect()
    assert trees == [] and all(r() is None for r in refs)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), expected)


def test_a_task_s_methods_on_the_same_seeds_prepare_its_train_and_dev_rows_once(tmp_path, data_dir,
                                                                                    roberta_tokenizer, monkeypatch):
    """A seed group keeps its stacked train/dev rows on the loaded model (LoadedModel.stacked): the next group
    on the same cells' rows (another method of the task: a decoder's input caches do not depend on it)
    prepares nothing and gives what it gives on a fresh model; a group on other rows replaces them."""
    import dataclasses

    from bbt_jax import config as config_lib
    from bbt_jax.harness import Harness
    from bbt_jax.models import llama
    from bbt_jax.models.family import LoadedModel
    from bbt_jax.sweep import train_group

    cfg = llama.LlamaConfig(vocab_size=50265, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    params = jax.tree.map(lambda x: 10 * x, llama.init_params(cfg, jax.random.PRNGKey(1)))
    model = LoadedModel(llama.FAMILY, cfg, params, llama.make_vocab(roberta_tokenizer, cfg), "test:tiny-llama")
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), placement="cue", budget=8, eval_every=4,
                               test_rows=16, num_buckets=1, eval_buckets=1)

    def cells(name, seeds=(13, 21), **settings):
        return [config_lib.override(base, seed=s, out=str(tmp_path / name / str(s)), **settings) for s in seeds]

    prepared = []
    prepared_rows = Harness.prepared_rows
    monkeypatch.setattr(Harness, "prepared_rows",
                        lambda self, split, lengths=None: prepared.append(split) or prepared_rows(self, split, lengths))
    quiet = {"zero_shot": True, "log": lambda s: None}
    assert train_group(cells("bbt"), model=model, **quiet) is not None
    assert sorted(prepared) == ["dev", "dev", "train", "train"]  # 2 cells x 2 splits
    pt = train_group(cells("pt", method="prompt-tuning", budget=4, eval_every=2), model=model, **quiet)
    assert len(prepared) == 4  # the same rows: nothing prepared again
    fresh = dataclasses.replace(model, prepared={}, scored={}, stacked={})
    alone = train_group(cells("pt-alone", method="prompt-tuning", budget=4, eval_every=2), model=fresh, **quiet)
    assert len(prepared) == 8
    for a, b in zip(pt, alone, strict=True):
        assert a["curve"] == b["curve"] and any("dev" in r for r in a["curve"])  # train and dev, bitwise
        assert a["test"] == b["test"] and a["zero_shot_test"] == b["zero_shot_test"]
    kept = set(model.stacked)
    assert train_group(cells("other", seeds=(13, 42)), model=model, **quiet) is not None
    assert len(prepared) == 12 and not kept & set(model.stacked) and len(model.stacked) == 2


def test_seeds_with_their_own_verbalizer_words_run_one_by_one(tmp_path, data_dir):
    """--words-per-class chooses words on each seed's training rows; a seed group scores every cell with ONE
    frozen verbalizer, so cells whose words differ are left to run one by one (before session 17 they ran
    grouped with the first seed's words), and the sweep's cells equal their runs alone."""
    from bbt_jax import config as config_lib
    from bbt_jax import grid as grid_lib
    from bbt_jax.harness import build
    from bbt_jax.models.registry import load
    from bbt_jax.sweep import train_group
    from bbt_jax.train import train
    from tests.conftest import ROBERTA_TOKENIZER

    model = load("tiny", str(ROBERTA_TOKENIZER))
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir), budget=8, eval_every=4, test_rows=16,
                               num_buckets=1, eval_buckets=1, words_per_class=2, dev_init=True,
                               tokenizer=str(ROBERTA_TOKENIZER))
    cfgs = [config_lib.override(base, seed=seed, out=str(tmp_path / "group" / str(seed))) for seed in (13, 21)]
    words = [build(c, model=model, log=lambda s: None).verbalizer_C for c in cfgs]
    assert not np.array_equal(*words)  # the seeds' words differ (else this test could not fail)
    assert train_group(cfgs, model=model, log=lambda s: None) is None
    (tmp_path / "sweep").mkdir()
    folders = grid_lib.run(base, {"seed": [13, 21]}, tmp_path / "sweep", spec={}, environment={},
                           log=lambda s: None)
    for seed, folder, w in zip((13, 21), folders, words, strict=True):
        swept = json.loads((folder / "results.json").read_text())
        solo = train(config_lib.override(base, seed=seed, out=str(tmp_path / "solo" / str(seed))), model=model,
                     zero_shot=True, log=lambda s: None, out=tmp_path / "solo" / str(seed))
        assert swept["verbalizer"]["ids"] == np.asarray(w).tolist() == solo["verbalizer"]["ids"]
        assert swept["dev_z0"] == solo["dev_z0"] and swept["dev"]["best_perf"] == solo["dev"]["best_perf"]
        assert swept["test"] == solo["test"]
