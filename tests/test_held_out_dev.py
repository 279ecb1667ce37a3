"""experiments/held_out_dev.py: the held-out rows of a seed (hand-computed) and the script end to end on a tiny
run (its rescoring on the run's own dev rows gives the dev figures results.json recorded)."""

import json
import subprocess
import sys
from pathlib import Path

from bbt_jax import config as C
from bbt_jax import tasks as tasks_lib

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "text_pair": None, "label": int(t[-1])}) + "\n" for t in texts))


def test_held_out_rows_hand_computed(tmp_path):
    """Seed 13's held-out rows: seeds 21 and 42's train then dev rows, in file order, each once, without any
    row of seed 13's own train or dev file (same text AND label; "b0" is another row than "b1")."""
    from experiments.held_out_dev import held_out_rows

    splits = {13: (["a0", "a1"], ["b0", "c1"]), 21: (["d0", "a1"], ["e1", "c1", "b1"]), 42: (["e1", "f0"], ["g1"])}
    for seed, (train, dev) in splits.items():
        _write(tmp_path / "sst2" / "k-shot" / f"16-{seed}" / "train.jsonl", train)
        _write(tmp_path / "sst2" / "k-shot" / f"16-{seed}" / "dev.jsonl", dev)
    _write(tmp_path / "sst2" / "test.jsonl", ["t0", "t1"])
    cfg = C.override(C.PRESETS["tiny"](), task="sst2", seed=13, data_dir=str(tmp_path))
    rows = held_out_rows(cfg, tasks_lib.get_task("sst2"), [13, 21, 42])
    assert [r.text for r in rows] == ["d0", "e1", "b1", "f0", "g1"]


def test_held_out_dev_script_reproduces_the_runs_dev_figures(tmp_path, data_dir):
    """A tiny run with z = 0 scored on dev: the script rescores its kept prompt and start on its own dev rows to
    results.json's figures, and scores both on the other seeds' rows (as many as held_out_rows gives)."""
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bbt_jax.cli", "train", "--preset", "tiny", "--task", "sst2",
                        "--seed", "21", "--dev-init", "--data-dir", str(data_dir), "--out", str(run)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "held_out_dev.py"), str(run), "--task", "sst2",
                        "--seeds", "21,42,87", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out" / "sst2.json").read_text())
    (one,) = out["variants"]["bbt"]
    res = json.loads((run / "results.json").read_text())
    assert one["reproduces"] is True and one["plain"] is True
    assert abs(one["own_dev"]["kept"] - res["dev"]["best_perf"]) < 1e-6
    assert abs(one["own_dev"]["start"] - res["dev_z0"]["perf"]) < 1e-6
    from experiments.held_out_dev import held_out_rows

    cfg = C.override(C.PRESETS["tiny"](), task="sst2", seed=21, data_dir=str(data_dir))
    assert one["rows"] == len(held_out_rows(cfg, tasks_lib.get_task("sst2"), [21, 42, 87])) > 64
    assert "| bbt | 1 |" in (tmp_path / "out" / "sst2.md").read_text()
    # --only scores those variants again and merges them into the table already there
    before = (tmp_path / "out" / "sst2.json").read_text()
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "held_out_dev.py"), str(run), "--task", "sst2",
                        "--seeds", "21,42,87", "--only", "bbt", "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "out" / "sst2.json").read_text())
    assert again["variants"] == json.loads(before)["variants"] and again["added"][0]["only"] == ["bbt"]
    assert "Then `--only bbt`" in (tmp_path / "out" / "sst2.md").read_text()


def test_margins_a_run_can_tell_hand_computed():
    """A run made with a 1-row start margin (of 32 dev rows) tells margins 1 and 2, not 0; one without tells all.
    Seed 87 left z = 0 by exactly 2 rows: margin 1 keeps its candidate, margin 2 its start; the held-out means
    are then hand-computed from the kept and start scores."""
    from experiments.held_out_dev import MARGINS, margin_name, margin_scores
    from experiments.start_margin import kept, knows_margin

    def res(margin, best_generation, best, z0):
        return {"config": {"search": {"start_margin": margin}}, "rows": {"dev": {"used": 32}}, "dev_z0": {"perf": z0},
                "dev": {"best_generation": best_generation, "best_perf": best}}

    moved, stayed, free = res(1 / 32, 19, 27 / 32, 25 / 32), res(1 / 32, 0, 30 / 32, 30 / 32), res(-1.0, 5, 0.75, 0.7)
    assert [knows_margin(moved, m) for m in MARGINS] == [True, False, True, True]
    assert [knows_margin(free, m) for m in MARGINS] == [True, True, True, True]
    assert [kept(moved, m) for m in (None, 1.0, 2.0)] == [True, True, False]
    assert [kept(stayed, m) for m in (None, 1.0, 2.0)] == [True, False, False]
    from experiments.start_margin import qualifies  # start_margin.py's table: every margin asked must be exact

    moved["zero_shot_test"] = {"acc": 0.86}
    assert qualifies(moved, (1.0, 2.0)) and not qualifies(moved, (0.0, 1.0, 2.0))
    assert not qualifies(stayed, (1.0,))  # no start's test score
    runs = [{"start": s, "kept": k, "margins": {margin_name(m): bool(kept(r, m)) for m in MARGINS
                                                if knows_margin(r, m)}}
            for r, s, k in ((moved, 0.86, 0.82), (stayed, 0.9, 0.9))]
    assert margin_scores(runs, 0.0) is None
    assert margin_scores(runs, None) == margin_scores(runs, 1.0) == [82.0, 90.0]
    assert margin_scores(runs, 2.0) == [86.0, 90.0]


def test_margins_counted_in_rows_of_32():
    """--margin-of 32: margin m stands for m / 32 of the run's dev rows (what --start-margin sets): a run with 64
    dev rows made with --start-margin 1/32 (2 of its rows) tells margins 1 and 2 of 32 (2 and 4 of its rows), and
    a candidate 3 rows above z = 0 stays under 1 of 32 and goes under 2 of 32; counted in its own rows it tells
    only margin 2 (= its own 2 rows)."""
    from experiments.held_out_dev import MARGINS, margin_rows
    from experiments.start_margin import kept, knows_margin

    res = {"config": {"search": {"start_margin": 1 / 32}}, "rows": {"dev": {"used": 64}},
           "dev_z0": {"perf": 40 / 64}, "dev": {"best_generation": 7, "best_perf": 43 / 64}}
    assert margin_rows(res, 32) == [(None, None), (0.0, 0.0), (1.0, 2.0), (2.0, 4.0)]
    assert margin_rows(res, 0) == [(m, m) for m in MARGINS]
    assert [knows_margin(res, r) for _, r in margin_rows(res, 32)] == [True, False, True, True]
    assert [kept(res, r) for _, r in margin_rows(res, 32)[2:]] == [True, False]
    assert [knows_margin(res, r) for _, r in margin_rows(res, 0)] == [True, False, False, True]
