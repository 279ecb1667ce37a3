"""report.py on hand-written results.json files: rows, labels, means ± stds, the avg column, plots,
and the one-line errors of `bbt-jax report`."""

import csv
import json

import pytest

from bbt_jax import cli, report
from bbt_jax.errors import UserError

SEEDS = (13, 21, 42)
# test accuracy (%) per (task, method) over SEEDS
TESTS = {("sst2", "bbt"): (80, 82, 84), ("sst2", "prompt-tuning"): (70, 70, 73),
         ("rte", "bbt"): (50, 54, 55), ("rte", "prompt-tuning"): (60, 60, 60)}
ZERO_SHOT = {"sst2": 75, "rte": 52}


def results(task, method, seed, test, *, zero_shot=None, strategy="CMA_ES", dev_candidate="window-best",
            layer_schedule=None, **extra):
    calls = 8 if method in ("bbt", "bbtv2") else 4
    curve = [{"generation": g, "calls": g * calls // 2, "best_loss": 1.0 / g, "mean_loss": 1.2 / g} for g in (1, 2)]
    curve[1]["dev"] = {"calls": calls, "dev_perf": test / 100 - 0.01, "dev_acc": test / 100 - 0.01, "dev_loss": 0.5}
    r = {"config": {"run": {"seed": seed, "split_seed": -1, "task": task}, "search": {"method": method}},
         "effective": {"method": method, "layer_schedule": layer_schedule, "strategy": strategy,
                       "dev_candidate": dev_candidate, "split_seed": seed, "task": task},
         "task": task, "model": "tiny", "test": {"acc": test / 100, "rows": 16},
         "dev": {"best_perf": test / 100 - 0.01, "best_generation": 2, "metric": "acc"},
         "calls": calls, "generations": 2, "passes": {"forward": calls, "backward": 0}, "curve": curve,
         "time": {"wall_s": 10.0 + seed, "search_s": 5.0, "test_s": 1.0}}
    if zero_shot is not None:
        r["zero_shot_test"] = {"acc": zero_shot / 100, "rows": 16}
    r.update(extra)
    return r


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for (task, method), values in TESTS.items():
        for seed, test in zip(SEEDS, values, strict=True):
            write(root / f"{task}-{method}-{seed}" / "results.json",
                  results(task, method, seed, test, zero_shot=ZERO_SHOT[task]))  # zero-shot twice per (task, seed)
    return root


def test_report_rows_tables_and_plots(runs, capsys):
    assert cli.main(["report", str(runs)]) == 0
    printed = capsys.readouterr().out
    with open(runs / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"task", "method", "seed", "test", "dev", "calls", "wall_s"} <= set(rows[0])
    assert len(rows) == 12 + 6  # 2 tasks x 2 methods x 3 seeds + one zero-shot row per (task, seed)
    # sorted: tasks in the fixed order (sst2 before rte), zero-shot first, then methods, then seeds
    assert [(r["task"], r["method"], r["seed"]) for r in rows[:4]] == [
        ("sst2", "zero-shot", "13"), ("sst2", "zero-shot", "21"), ("sst2", "zero-shot", "42"), ("sst2", "bbt", "13")]
    bbt_sst2 = [r for r in rows if r["task"] == "sst2" and r["method"] == "bbt"]
    assert [float(r["test"]) for r in bbt_sst2] == pytest.approx([80, 82, 84])
    assert [float(r["dev"]) for r in bbt_sst2] == pytest.approx([79, 81, 83])
    assert [r["calls"] for r in bbt_sst2] == ["8"] * 3 and [float(r["wall_s"]) for r in bbt_sst2] == [23, 31, 52]
    assert {float(r["test"]) for r in rows if r["method"] == "zero-shot" and r["task"] == "rte"} == {52}

    md = (runs / "results.md").read_text()
    assert md in printed
    first = md.split("\n\n")[1]  # the caption, the test table, the cost table
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in first.splitlines() if "---" not in line}
    assert table["method"][:3] == ["sst2", "rte", "avg"]
    assert table["bbt"] == ["82.0 ± 2.0 (3)", "53.0 ± 2.6 (3)", "67.5"]
    assert table["prompt-tuning"] == ["71.0 ± 1.7 (3)", "60.0 ± 0.0 (3)", "65.5"]
    assert table["zero-shot"] == ["75.0 ± 0.0 (3)", "52.0 ± 0.0 (3)", "63.5"]
    assert "| bbt | 8 | 35.3 | 6 |" in md  # calls, mean wall s, runs

    for name in ("test_by_task.png", "curves.png"):
        assert (runs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_avg_is_over_the_tasks_every_method_has(runs):
    """A method run on fewer tasks (a table in progress): every avg is over the common tasks only."""
    write(runs / "sst2-bbtv2-13" / "results.json", results("sst2", "bbtv2", 13, 90))
    text, _ = report.report([runs], runs)
    assert "avg: mean over the tasks every method has (sst2)." in text
    assert "| avg (1 of 2 tasks) |" in text
    assert "| bbt | 82.0 ± 2.0 (3) | 53.0 ± 2.6 (3) | 82.0 |" in text
    assert "| bbtv2 | 90.0 ± 0.0 (1) | — | 90.0 |" in text


def test_out_folder_and_single_file(runs, tmp_path):
    one = runs / "rte-bbt-13" / "results.json"
    text, files = report.report([one], tmp_path / "elsewhere")
    assert all(f.parent == tmp_path / "elsewhere" and f.stat().st_size > 0 for f in files)
    assert "| bbt | 50.0 ± 0.0 (1) | 50.0 |" in text
    assert report.default_out([one]) == one.parent


@pytest.mark.parametrize("kw, label", [
    ({"method": "bbt"}, "bbt"),
    ({"method": "bbt", "strategy": "PyCMA_ES", "dev_candidate": "at-eval"}, "bbt-paper"),
    ({"method": "bbt", "strategy": "PyCMA_ES", "dev_candidate": "window-best"}, "bbt"),
    ({"method": "bbtv2", "layer_schedule": "sequential"}, "bbtv2-seq"),
    ({"method": "bbtv2", "layer_schedule": "parallel"}, "bbtv2-par"),
    ({"method": "prompt-tuning", "strategy": None}, "prompt-tuning"),
    ({"method": "deep-prompt-tuning", "strategy": None}, "deep-prompt-tuning"),
    ({"method": "bbtv2", "layer_schedule": "parallel", "label": "mine"}, "mine"),
])
def test_method_label(kw, label):
    method = kw.pop("method")
    assert report.method_label(results("sst2", method, 13, 80, **kw)) == label


def test_mrpc_uses_f1_and_seed_falls_back_to_config():
    r = results("mrpc", "bbt", 21, 60)
    r["test"]["f1"] = 0.7
    del r["effective"]["split_seed"]
    (row,) = report.run_rows(r)
    assert row["metric"] == "f1" and row["test"] == pytest.approx(70) and row["seed"] == 21
    r["zero_shot_test"] = {"acc": 0.5, "f1": 0.4, "rows": 16}
    assert report.run_rows(r)[1]["test"] == pytest.approx(40)


def test_plot_curve(tmp_path):
    report.plot_curve(results("sst2", "bbt", 13, 80), tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def _cli_error(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_malformed_results_is_one_line(runs, capsys):
    bad = runs / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"task": "sst2", ')
    assert str(bad) in _cli_error(["report", str(runs)], capsys)
    write(bad, [1, 2])
    assert "expected an object" in _cli_error(["report", str(runs)], capsys)
    write(bad, {"task": "sst2"})
    assert "no 'test'" in _cli_error(["report", str(bad)], capsys)


def test_no_results_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _cli_error(["report", str(tmp_path / "empty")], capsys)
    assert "no results.json found" in err and str(tmp_path / "empty") in err
    assert "no such file or folder" in _cli_error(["report", str(tmp_path / "nope")], capsys)
    with pytest.raises(UserError, match="no results.json"):
        report.find_results([tmp_path / "empty"])


def test_sweep_time_sums_each_cell_once_per_task_and_method(tmp_path):
    """experiments/sweep_time.py: minutes per task and method from progress lines; a resumed cell's later line
    replaces its earlier one; 'done' lines (skipped cells) count nothing. Hand-computed."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "sweep_time.py"
    spec = importlib.util.spec_from_file_location("sweep_time", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("[1/4] task=sst2,variant=bbt,seed=13: test acc 0.8 | dev acc 0.9 | 60 s | ETA 180 s\n"
                     "  [task=sst2,variant=bbt,seed=13 +1 seeds vmapped] [seed 13] calls 20/60 | 12 s |\n"
                     "[2/4] task=sst2,variant=bbt,seed=21: test acc 0.7 | dev acc 0.8 | 60 s | ETA 120 s\n"
                     "[3/4] task=rte,variant=bbt,seed=13: test acc 0.5 | dev acc 0.5 | 999 s | ETA 60 s\n")
    second.write_text("[1/4] task=sst2,variant=bbt,seed=13: done (test acc 0.8)\n"
                      "[3/4] task=rte,variant=bbt,seed=13: test acc 0.5 | dev acc 0.5 | 30 s | ETA 30 s\n"
                      "[4/4] task=rte,variant=pt,seed=13: test acc 0.6 | dev acc 0.5 | 90 s | ETA 0 s\n")
    seconds = mod.cell_seconds([str(first), str(second)])
    assert seconds == {"task=sst2,variant=bbt,seed=13": 60, "task=sst2,variant=bbt,seed=21": 60,
                       "task=rte,variant=bbt,seed=13": 30, "task=rte,variant=pt,seed=13": 90}
    lines = mod.table(seconds).splitlines()
    assert lines[2] == "| sst2 | 2.0 |  | 2.0 | 2 |"
    assert lines[3] == "| rte | 0.5 | 1.5 | 2.0 | 2 |"
    assert lines[4] == "| all | 2.5 | 1.5 | **4.0** (0.07 h) | 4 |"
    empty = tmp_path / "empty.log"
    empty.write_text("  [task=sst2,variant=bbt,seed=13 +1 seeds vmapped] [seed 13] calls 20/60\n")
    with pytest.raises(UserError, match="no finished cell"):
        mod.cell_seconds([str(empty)])
