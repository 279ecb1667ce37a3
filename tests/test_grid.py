"""grid.py: --grid parsing (typed values, one-line errors), cell names, and a tiny sweep end to end
through the CLI (cells, report, resume by skipping, another grid refused)."""

import json
import shutil

import jax
import numpy as np
import pytest

from bbt_jax import cli, grid
from bbt_jax import config as config_lib
from bbt_jax.errors import UserError
from tests.conftest import ROBERTA_TOKENIZER


def test_values_take_the_field_type():
    g = grid.parse(["task=sst2,rte", "seed=13,21", "sigma=0.5,1", "dev-init=true,False", "n_prompt_tokens=4"])
    assert g == {"task": ["sst2", "rte"], "seed": [13, 21], "sigma": [0.5, 1.0], "dev_init": [True, False],
                 "n_prompt_tokens": [4]}
    assert isinstance(g["sigma"][1], float) and isinstance(g["seed"][0], int)


def test_cells_are_the_product_in_order():
    cells = grid.cells({"task": ["sst2", "rte"], "seed": [13, 21]})
    assert cells == [{"task": "sst2", "seed": 13}, {"task": "sst2", "seed": 21},
                     {"task": "rte", "seed": 13}, {"task": "rte", "seed": 21}]


@pytest.mark.parametrize("items, match", [
    (["nope=1,2"], r"--grid nope=1,2: unknown setting 'nope'"),
    (["seed=13,x"], r"--grid seed=13,x: seed takes an integer, got 'x'"),
    (["dev_init=yes"], r"--grid dev_init=yes: dev_init takes true or false, got 'yes'"),
    (["sigma=fast"], r"--grid sigma=fast: sigma takes a number"),
    (["seed"], r"--grid seed: expected key=value"),
    (["seed="], r"--grid seed=: expected key=value"),
    (["seed=1", "seed=2"], r"--grid seed=2: seed is already in the grid"),
    (["out=a,b"], r"--grid out=a,b: 'out' cannot vary"),
    ([], r"--grid: no grid given"),
])
def test_bad_grid_items(items, match):
    with pytest.raises(UserError, match=match):
        grid.parse(items)


def test_grid_file(tmp_path):
    f = tmp_path / "grid.json"
    f.write_text(json.dumps({"task": ["sst2", "agnews"], "seed": [13, 21], "dev-init": [True], "sigma": 1}))
    assert grid.parse(["method=bbt,bbtv2"], f) == {"task": ["sst2", "agnews"], "seed": [13, 21], "dev_init": [True],
                                                   "sigma": [1.0], "method": ["bbt", "bbtv2"]}
    with pytest.raises(UserError, match="already in --grid-file"):
        grid.parse(["seed=1"], f)
    f.write_text(json.dumps({"seed": ["13", 1.5]}))
    with pytest.raises(UserError, match=r"--grid-file .*grid.json \(seed\): seed takes an integer, got 1.5"):
        grid.parse([], f)
    f.write_text("{")
    with pytest.raises(UserError, match="malformed JSON"):
        grid.parse([], f)
    with pytest.raises(UserError, match="unreadable"):
        grid.parse([], tmp_path / "missing.json")


def test_cell_names_are_valid_and_distinct():
    assert grid.cell_name({"task": "sst2", "seed": 13, "dev_init": True, "sigma": 0.5}) == \
        "task=sst2,seed=13,dev_init=true,sigma=0.5"
    a = grid.cell_name({"init_prompt": "runs/a/prompt.json"})
    b = grid.cell_name({"init_prompt": "runs_a/prompt.json"})
    assert "/" not in a and a != b and a == grid.cell_name({"init_prompt": "runs/a/prompt.json"})
    assert len(grid.cell_name({"es_params": "x" * 500})) < 255


def test_cell_label_names_settings_the_report_does_not_show():
    results = {"effective": {"method": "bbt", "strategy": "CMA_ES"}}
    assert grid.cell_label(results, {"task": "sst2", "seed": 13, "method": "bbt"}) is None
    assert grid.cell_label(results, {"seed": 13, "sigma": 0.5}) == "bbt sigma=0.5"


def _err(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "sw")
    assert "--grid seed=13,x" in _err(["sweep", "--preset", "tiny", "--grid", "seed=13,x", "--out", out], capsys)
    assert "--method nope" in _err(["sweep", "--preset", "tiny", "--grid", "method=bbt,nope", "--out", out], capsys)
    assert "also given as --seed" in _err(["sweep", "--preset", "tiny", "--grid", "seed=1", "--seed", "2",
                                          "--out", out], capsys)
    assert not (tmp_path / "sw" / "sweep.json").exists()  # nothing started


def test_tiny_sweep_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "sweep"  # one length bucket: less to compile
    argv = ["sweep", "--preset", "tiny", "--data-dir", str(data_dir), "--grid", "seed=13,21", "--budget", "8",
            "--eval-every", "4", "--test-rows", "16", "--num-buckets", "1", "--eval-buckets", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    cells = [out / "seed=13", out / "seed=21"]
    results = [json.loads((c / "results.json").read_text()) for c in cells]
    assert [r["effective"]["split_seed"] for r in results] == [13, 21]
    assert all("environment" in r and "zero_shot_test" in r and "label" not in r for r in results)
    assert "[1/2] seed=13: test acc" in printed and "[2/2] seed=21: test acc" in printed and "ETA" in printed
    for name in ("results.csv", "results.md", "test_by_task.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 4  # header, bbt and zero-shot for each seed
    assert "| bbt |" in printed and "| zero-shot |" in printed
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"seed": [13, 21]}

    mtimes = [(c / "results.json").stat().st_mtime_ns for c in cells]
    assert cli.main(argv) == 0  # the same sweep again: every cell is done
    printed = capsys.readouterr().out
    assert "[1/2] seed=13: done" in printed and "[2/2] seed=21: done" in printed
    assert [(c / "results.json").stat().st_mtime_ns for c in cells] == mtimes

    other = [a if a != "seed=13,21" else "seed=13,42" for a in argv]
    err = _err(other, capsys)
    assert f"--out {out}: holds another sweep" in err and '{"seed": [13, 42]}' in err
    err = _err([a if a != "8" else "12" for a in argv], capsys)
    assert "overrides" in err and '"budget": 12' in err
    assert not (out / "seed=42").exists()
    assert cli.main([a if a != "seed=13,21" else "seed=21,13" for a in argv]) == 0  # the same cells reordered
    printed = capsys.readouterr().out
    assert "[1/2] seed=21: done" in printed and "[2/2] seed=13: done" in printed
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"seed": [21, 13]}
    assert cli.main([a if a != "seed=13,21" else "seed=21,42,13" for a in argv]) == 0  # grown by one seed
    printed = capsys.readouterr().out
    assert "[1/3] seed=21: done" in printed and "[3/3] seed=13: done" in printed
    assert "[2/3] seed=42: test acc" in printed and (out / "seed=42" / "results.json").is_file()
    assert [(c / "results.json").stat().st_mtime_ns for c in cells] == mtimes
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"seed": [21, 42, 13]}
    err = _err(argv, capsys)  # seed 42 left out: a sweep does not shrink
    assert "holds another sweep" in err and "may gain values" in err


def test_seed_groups_gather_cells_that_differ_only_in_seeds():
    base = config_lib.tiny()
    cfgs = [config_lib.override(base, seed=s, method=m, out=f"o{i}")
            for i, (m, s) in enumerate([("bbt", 13), ("bbtv2", 13), ("bbt", 21), ("bbtv2", 21), ("bbt", 42)])]
    cfgs.append(config_lib.override(base, seed=13, split_seed=5, out="x"))
    assert grid.seed_groups(cfgs) == [[0, 2, 4, 5], [1, 3]]


def test_vmapped_seeds_equal_their_solo_runs_and_resume_together(tmp_path, data_dir, capsys):
    """`sweep` runs seed cells as one vmapped search (each on its own few-shot split, padded to one
    shape); each cell's curve, selection and test equal `--no-vmap-seeds` (one by one) up to float
    rounding. Killed after its first checkpoint, the group resumes together, exactly."""
    def argv(out, *extra):
        return ["sweep", "--preset", "tiny", "--data-dir", str(data_dir), "--grid", "seed=13,21", "--budget", "24",
                "--eval-every", "8", "--test-rows", "16", "--num-buckets", "2", "--eval-buckets", "1",
                "--checkpoint-every", "1", "--dev-init", "--out", str(out), *extra]

    assert cli.main(argv(tmp_path / "solo", "--no-vmap-seeds")) == 0
    assert cli.main(argv(tmp_path / "vmap")) == 0
    printed = capsys.readouterr().out
    assert "seeds vmapped]" in printed and "[2/2] seed=21: test acc" in printed
    for seed in (13, 21):
        a = json.loads((tmp_path / "solo" / f"seed={seed}" / "results.json").read_text())
        b = json.loads((tmp_path / "vmap" / f"seed={seed}" / "results.json").read_text())
        assert "vmapped" not in a and b["vmapped"]["runs"] == 2 and b["effective"]["split_seed"] == seed
        for key in ("best_loss", "mean_loss"):
            np.testing.assert_allclose([r[key] for r in b["curve"]], [r[key] for r in a["curve"]], rtol=1e-4,
                                       atol=1e-5, err_msg=key)
        np.testing.assert_allclose(b["best_z"], a["best_z"], atol=1e-4)
        assert b["dev"] == a["dev"] and b["test"] == a["test"] and b["zero_shot_test"] == a["zero_shot_test"]
        assert b["dev_z0"]["perf"] == a["dev_z0"]["perf"] and b["calls"] == a["calls"] == 24
    a13, a21 = (json.loads((tmp_path / "vmap" / f"seed={s}" / "results.json").read_text()) for s in (13, 21))
    assert a13["curve"][0]["best_loss"] != a21["curve"][0]["best_loss"]  # two splits, two seeds: cells differ

    # "killed" after the first interval: results and later checkpoints gone, the group resumes from generation 2
    for seed in (13, 21):
        cell = tmp_path / "vmap" / f"seed={seed}"
        (cell / "results.json").unlink()
        for step in (cell / "checkpoints").iterdir():
            if step.name.isdigit() and int(step.name) > 2:
                shutil.rmtree(step)
    assert cli.main(argv(tmp_path / "vmap")) == 0
    assert capsys.readouterr().out.count("resuming from") == 2
    for seed, before in ((13, a13), (21, a21)):
        after = json.loads((tmp_path / "vmap" / f"seed={seed}" / "results.json").read_text())
        assert after["resumed_from_generation"] == 2
        for key in ("best_z", "curve", "dev", "test"):
            assert after[key] == before[key], key


def test_variants_are_named_bundles_of_settings(tmp_path, data_dir, capsys):
    f = tmp_path / "grid.json"
    f.write_text(json.dumps({"variants": {"short": {"budget": 8}, "long": {"budget": 16, "sigma": 0.5}},
                             "seed": [13]}))
    assert grid.parse([], f) == {"variant": ["short", "long"], "seed": [13]}
    assert grid.read_variants(f) == {"short": {"budget": 8}, "long": {"budget": 16, "sigma": 0.5}}
    out = tmp_path / "sw"
    argv = ["sweep", "--preset", "tiny", "--data-dir", str(data_dir), "--grid-file", str(f), "--eval-every", "8",
            "--test-rows", "16", "--num-buckets", "1", "--eval-buckets", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    res = {v: json.loads((out / f"variant={v},seed=13" / "results.json").read_text()) for v in ("short", "long")}
    assert res["short"]["calls"] == 8 and res["long"]["calls"] == 16
    assert res["long"]["config"]["search"]["sigma"] == 0.5 and res["short"]["config"]["search"]["sigma"] == 1.0
    assert res["short"]["label"] == "short" and "| short |" in printed and "| long |" in printed
    assert json.loads((out / "sweep.json").read_text())["variants"]["long"] == {"budget": 16, "sigma": 0.5}
    spec = json.loads((out / "sweep.json").read_text())
    grown = {**spec, "grid": {"variant": ["short", "long", "cue"], "seed": [13]},
             "variants": {**spec["variants"], "cue": {"cue": "\nAnswer:"}}}
    grid.check_spec(out, grown)  # a new variant: the sweep grows
    assert json.loads((out / "sweep.json").read_text())["variants"]["cue"] == {"cue": "\nAnswer:"}
    changed = {**grown, "variants": {**grown["variants"], "long": {"budget": 12, "sigma": 0.5}}}
    with pytest.raises(UserError, match="holds another sweep"):
        grid.check_spec(out, changed)  # an existing variant's settings may not change
    f.write_text(json.dumps({"variants": {"nl": {"cue": "\nAnswer:", "label_words": " No, Yes"}}}))
    assert grid.read_variants(f) == {"nl": {"cue": "\nAnswer:", "label_words": " No, Yes"}}  # strings verbatim
    assert grid.parse_items(["cue= A: ,B:"]) == {"cue": ["A:", "B:"]}  # on the command line, spaces around commas go
    for bad, match in [({"variants": {"a": {"seed": 1}}, "seed": [13]}, "both in variant"),
                       ({"variants": {"a": {"nope": 1}}}, "unknown setting"),
                       ({"variants": {"a": {}}, "variant": ["b"]}, "not defined"),
                       ({"variants": {"a b": {}}}, "variant name")]:
        f.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=match):
            grid.parse([], f)


def test_a_variant_may_set_some_tasks_apart(tmp_path):
    """A variant's "tasks" entry applies to that task's cells only, over the variant's own settings; the cell's
    grid values still come last. Bad entries: one-line errors naming the file and the variant."""
    f = tmp_path / "grid.json"
    f.write_text(json.dumps({"task": ["sst2", "agnews", "rte"], "seed": [13, 21],
                             "variants": {"best": {"budget": 40, "sigma": 0.5,
                                                   "tasks": {"agnews": {"budget": 80, "cue": "\nAnswer:"},
                                                             "rte": {"method": "bbtv2"}}},
                                          "plain": {"budget": 20}}}))
    g, variants = grid.parse([], f), grid.read_variants(f)
    assert variants["best"]["tasks"] == {"agnews": {"budget": 80, "cue": "\nAnswer:"}, "rte": {"method": "bbtv2"}}
    base = config_lib.demo()
    got = {(c["variant"], c["task"], c["seed"]): grid.cell_config(base, c, variants, tmp_path / "sw")
           for c in grid.cells(g)}
    assert len(got) == 12
    for seed in (13, 21):
        sst2, agnews, rte = (got["best", t, seed] for t in ("sst2", "agnews", "rte"))
        assert (sst2.search.budget, sst2.search.sigma, sst2.prompt.cue, sst2.search.method) == (40, 0.5, "", "bbt")
        assert (agnews.search.budget, agnews.search.sigma, agnews.prompt.cue) == (80, 0.5, "\nAnswer:")
        assert (rte.search.budget, rte.search.method, rte.run.seed) == (40, "bbtv2", seed)
        assert all(got["plain", t, seed].search.budget == 20 and got["plain", t, seed].prompt.cue == ""
                   for t in ("sst2", "agnews", "rte"))
    assert got["best", "agnews", 21].run.out == str(tmp_path / "sw" / "variant=best,task=agnews,seed=21")
    for tasks, match in [({"nope": {}}, "unknown task 'nope'"), ([], "must be an object"),
                         ({"sst2": {"task": "rte"}}, "cannot set the task"),
                         ({"sst2": {"seed": 1}}, "seed is both in variant v, task sst2 and in the grid"),
                         ({"sst2": {"sigma": "x"}}, r"variant v, task sst2, sigma\): sigma takes a number"),
                         ({"sst2": {"nope": 1}}, "unknown setting 'nope'")]:
        f.write_text(json.dumps({"seed": [13], "variants": {"v": {"tasks": tasks}}}))
        with pytest.raises(UserError, match=match):
            grid.read_variants(f)


def test_a_seed_group_scores_its_test_prompts_in_one_batched_pass(tmp_path, data_dir, monkeypatch):
    """The cells of a vmapped group are scored on test together: one pass over the test batches with every
    cell's selected prompt and the (shared) start prompt; each cell's own scoring then computes nothing."""
    from bbt_jax import fitness

    calls = []
    real = fitness.population_logits
    monkeypatch.setattr(fitness, "population_logits",
                        lambda fit, p: calls.append(jax.tree.leaves(p)[0].shape[0]) or real(fit, p))
    argv = ["sweep", "--preset", "tiny", "--data-dir", str(data_dir), "--grid", "seed=13,21,42", "--budget", "8",
            "--eval-every", "4", "--test-rows", "40", "--eval-batch", "16", "--out", str(tmp_path / "sw")]
    assert cli.main(argv) == 0
    results = [json.loads((tmp_path / "sw" / f"seed={s}" / "results.json").read_text()) for s in (13, 21, 42)]
    batches = -(-40 // 16)
    assert calls == [4] * batches, calls  # 3 selected prompts + 1 start prompt, in one pass; nothing after
    assert len({json.dumps(r["zero_shot_test"]) for r in results}) == 1


def test_vmapped_gradient_seeds_equal_their_solo_runs(tmp_path, data_dir, capsys):
    """Gradient methods group their seeds too (one compiled interval for both splits): each cell's
    curve, learned prompts (input and every layer), selection and test equal its run alone up to float
    rounding. Deep prompt tuning: its candidate is a pytree; prompt tuning's N x D runs the same code."""
    method = "deep-prompt-tuning"
    from bbt_jax.artifact import load_prompt

    def argv(out, *extra):
        return ["sweep", "--preset", "tiny", "--data-dir", str(data_dir), "--grid", "seed=13,21", "--method", method,
                "--budget", "6", "--eval-every", "3", "--lr", "1.0", "--test-rows", "16", "--num-buckets", "1",
                "--eval-buckets", "1", "--out", str(out), *extra]

    assert cli.main(argv(tmp_path / "solo", "--no-vmap-seeds")) == 0
    assert cli.main(argv(tmp_path / "vmap")) == 0
    assert "seeds vmapped]" in capsys.readouterr().out
    for seed in (13, 21):
        a, b = (json.loads((tmp_path / m / f"seed={seed}" / "results.json").read_text()) for m in ("solo", "vmap"))
        assert "vmapped" not in a and b["vmapped"]["runs"] == 2 and b["calls"] == a["calls"] == 6
        np.testing.assert_allclose([r["best_loss"] for r in b["curve"]], [r["best_loss"] for r in a["curve"]],
                                   rtol=1e-4, atol=1e-6)
        pa, pb = (load_prompt(tmp_path / m / f"seed={seed}") for m in ("solo", "vmap"))
        assert np.abs(pa.prompt_NxD - pa.p0_NxD).max() > 1e-3  # the prompt moved
        # Adam normalises the tiny model's ~1e-7 gradients, so their float noise shows at ~1e-5 in params
        # that moved by ~1 (as in tests/test_gradient.py)
        np.testing.assert_allclose(pb.prompt_NxD, pa.prompt_NxD, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(pb.layers_YxNxD, pa.layers_YxNxD, rtol=1e-4, atol=1e-4)
        assert b["dev"] == a["dev"] and b["test"] == a["test"] and b["zero_shot_test"] == a["zero_shot_test"]
    c13, c21 = (json.loads((tmp_path / "vmap" / f"seed={s}" / "results.json").read_text())["curve"] for s in (13, 21))
    assert c13[0]["best_loss"] != c21[0]["best_loss"]  # two splits: the cells differ


@pytest.mark.parametrize("method, bound", [("bbt", "pairs"), ("prompt-tuning", "pairs"), ("bbt", "bytes")])
def test_a_memory_bounded_seed_group_equals_its_solo_runs(tmp_path, data_dir, capsys, monkeypatch, method, bound):
    """Under a member x row budget (sweep.GROUP_MEMBER_ROWS), an ES group scores its population in
    chunks and a gradient group runs in smaller groups of seeds; under a bytes budget for the stacked rows
    (sweep.GROUP_ROWS_BYTES) that no cell fits, the cells run one per call; each cell still equals its run
    alone."""
    from bbt_jax import sweep

    def argv(out, *extra):
        return ["sweep", "--preset", "tiny", "--data-dir", str(data_dir), "--grid", "seed=13,21,42", "--method",
                method, "--budget", "8", "--eval-every", "4", "--test-rows", "16", "--num-buckets", "1",
                "--eval-buckets", "1", "--out", str(out), *extra]

    assert cli.main(argv(tmp_path / "solo", "--no-vmap-seeds")) == 0
    rows = json.loads((tmp_path / "solo" / "seed=13" / "results.json").read_text())["rows"]["train"]["used"]
    gradient = method == "prompt-tuning"
    # ES: 3 cells x 2 members fit (tiny RoBERTa's own chunk is 4 on CPU); gradient: 2 cells of 8-weighted rows
    budget = 2 * rows * sweep.GRADIENT_ROW_WEIGHT if gradient else 3 * 2 * rows
    monkeypatch.setattr(sweep, "GROUP_MEMBER_ROWS", {jax.default_backend(): budget} if bound == "pairs" else {})
    monkeypatch.setattr(sweep, "GROUP_ROWS_BYTES", {jax.default_backend(): 1} if bound == "bytes" else {})
    assert cli.main(argv(tmp_path / "vmap")) == 0
    printed = capsys.readouterr().out
    split_to = 2 if gradient else 1 if bound == "bytes" else 0
    assert (f"3 seeds in groups of {split_to}" in printed) == bool(split_to)
    runs_of = {2: (2, 2, 1), 1: (1, 1, 1), 0: (3, 3, 3)}[split_to]
    chunk = 0 if gradient else 4 if bound == "bytes" else 2  # bytes: the model's own chunk, no pairs bound
    for seed, runs in zip((13, 21, 42), runs_of, strict=True):
        a, b = (json.loads((tmp_path / m / f"seed={seed}" / "results.json").read_text()) for m in ("solo", "vmap"))
        assert b["vmapped"]["runs"] == runs and b["vmapped"]["pop_chunk"] == chunk
        np.testing.assert_allclose([r["best_loss"] for r in b["curve"]], [r["best_loss"] for r in a["curve"]],
                                   rtol=1e-4, atol=1e-6)
        assert b["dev"] == a["dev"] and b["test"] == a["test"]


@pytest.mark.parametrize("args, plan", [
    ((5, 20, 64), (5, 0)),  # agnews-like: no bound needed under 8192
    ((5, 20, 224), (5, 7)),  # dbpedia-like: one member per cell fits, chunks of 8192 // (5 x 224)
    ((5, 20, 4000), (2, 1)),  # only two cells' rows fit: groups of 2, one member at a time
    ((5, 1, 224, True), (4, 0)),  # gradient: 8192 // (224 x 8) cells per group
    ((5, 1, 64, True), (5, 0)),
])
def test_group_plan(args, plan):
    from bbt_jax.sweep import group_plan

    cells, members, rows, *gradient = args
    assert group_plan(cells, members, rows, gradient=bool(gradient), budget=8192) == plan
    assert group_plan(cells, members, rows, gradient=bool(gradient), budget=None) == (cells, 0)
    # a bytes budget that every cell fits changes nothing
    assert group_plan(cells, members, rows, gradient=bool(gradient), budget=8192, cell_bytes=10,
                      bytes_budget=10 * cells) == plan


@pytest.mark.parametrize("args, plan", [
    ((5, 20, 224, 2, 4), (2, 18)),  # 2 cells' rows fit in bytes; 2 x 20 x 224 > 8192: chunks of 8192 // 448
    ((5, 20, 224, 5, 4), (1, 0)),  # not even one cell fits: one per call (at least one); 20 x 224 <= 8192
    ((5, 20, 64, 2, 7), (3, 0)),  # 3 cells x 20 x 64 = 3840 pairs fit too
    ((5, 20, 64, 0, 1), (5, 0)),  # bytes unknown (0): no bytes bound
])
def test_group_plan_under_a_bytes_budget(args, plan):
    from bbt_jax.sweep import group_plan

    cells, members, rows, cell_bytes, bytes_budget = args
    assert group_plan(cells, members, rows, budget=8192, cell_bytes=cell_bytes, bytes_budget=bytes_budget) == plan


def test_a_sweep_drops_a_task_s_prepared_test_batches_when_it_moves_on(tmp_path, data_dir, monkeypatch):
    """The loaded model's prepared batches (test input caches) are kept across the cells of one task and
    cleared when the sweep reaches the next task (grid.run's model_for)."""
    import bbt_jax.train

    seen = []

    def fake_train(cfg, *, model, **kw):
        seen.append((cfg.run.task, sorted(model.prepared)))
        model.prepared[(cfg.run.task, cfg.run.seed)] = "batch"  # what a test pass would leave there
        return {"task": cfg.run.task, "test": {"acc": 0.5, "rows": 1}, "dev": {"best_perf": 0.5}, "calls": 0}

    monkeypatch.setattr(bbt_jax.train, "train", fake_train)
    base = config_lib.override(config_lib.tiny(), data_dir=str(data_dir))
    g = {"task": ["sst2", "agnews"], "seed": [13, 21]}
    (tmp_path / "sw").mkdir()
    grid.run(base, g, tmp_path / "sw", spec={"grid": g}, environment={}, log=lambda s: None, vmap_seeds=False,
             default_tokenizer=ROBERTA_TOKENIZER)
    assert seen == [("sst2", []), ("sst2", [("sst2", 13)]), ("agnews", []), ("agnews", [("agnews", 13)])]


def test_vmapped_cross_validated_seeds_equal_their_solo_runs(tmp_path, data_dir, capsys):
    """--cv-folds 2 in a seed group: the second fold's interval (train and dev swapped) runs vmapped too, and
    each cell's curve, selection and test equal its run alone."""
    def argv(out, *extra):
        return ["sweep", "--preset", "tiny", "--data-dir", str(data_dir), "--grid", "seed=13,21", "--cv-folds", "2",
                "--budget", "16", "--eval-every", "4", "--test-rows", "16", "--out", str(out), *extra]

    assert cli.main(argv(tmp_path / "solo", "--no-vmap-seeds")) == 0
    assert cli.main(argv(tmp_path / "vmap")) == 0
    assert "seeds vmapped]" in capsys.readouterr().out
    for seed in (13, 21):
        a, b = (json.loads((tmp_path / m / f"seed={seed}" / "results.json").read_text()) for m in ("solo", "vmap"))
        assert b["vmapped"]["runs"] == 2 and b["effective"]["cv_folds"] == 2
        np.testing.assert_allclose([r["best_loss"] for r in b["curve"]], [r["best_loss"] for r in a["curve"]],
                                   rtol=1e-4, atol=1e-6)
        assert b["dev"] == a["dev"] and b["test"] == a["test"]
