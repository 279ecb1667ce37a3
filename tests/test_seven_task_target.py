"""experiments/seven_task_target.py: the 7-task average and its target from hand-made results.json files."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sst2", "yelpp", "agnews", "dbpedia", "mrpc", "rte", "snli")


def _run(folder: Path, task: str, seed: int, test: float, zero_shot: float | None = None, f1: float | None = None):
    folder.mkdir(parents=True)
    res = {"task": task, "config": {"run": {"seed": seed}}, "test": {"acc": test}}
    if f1 is not None:
        res["test"]["f1"] = f1
    if zero_shot is not None:
        res["zero_shot_test"] = {"acc": zero_shot, **({"f1": zero_shot} if f1 is not None else {})}
    (folder / "results.json").write_text(json.dumps(res))


def _script(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "seven_task_target.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


def test_the_average_and_the_target_hand_computed(tmp_path):
    """Kept: task i scores 60 + i on seed 1 and 62 + i on seed 2 (mrpc by F1, its accuracy 0 to tell), so the
    task means are 61 + i and the average 64.0; the per-seed means 63.0 and 65.0 (std sqrt(2), sem 1.0).
    Baseline: every task's zero-shot 55.9 (two runs of sst2, 55.8 and 56.0: their mean) -> 55.9 + 8 = 63.9, met;
    with --plus 8.2 (64.1) not met."""
    for i, task in enumerate(TASKS):
        mrpc = task == "mrpc"
        for seed, score in ((1, 60 + i), (2, 62 + i)):
            _run(tmp_path / "kept" / f"{task}-{seed}", task, seed, 0.0 if mrpc else score / 100,
                 f1=score / 100 if mrpc else None)
        _run(tmp_path / "base" / task, task, 1, 0.5, zero_shot=0.558 if task == "sst2" else 0.559,
             f1=0.5 if mrpc else None)
    _run(tmp_path / "base" / "sst2-again", "sst2", 2, 0.5, zero_shot=0.560)
    r = _script("--kept", "kept", "--baseline", "base", "--out", "t.md", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "t.md").read_text()
    assert "| mrpc | 55.90 | 65.00 |" in text and "| sst2 | 55.90 | 61.00 |" in text
    assert "**55.900** (+ 8 = 63.900) | **64.000**" in text
    assert "63.00 / 65.00 for seeds 1 / 2; std 1.41, standard error 1.00; 1 of 2 seeds" in text
    assert "Target MET: 64.000 against 63.900 (+0.100)." in text
    r = _script("--kept", "kept", "--baseline", "base", "--plus", "8.2", cwd=tmp_path)
    assert r.returncode == 0 and "Target NOT met: 64.000 against 64.100 (-0.100)." in r.stdout


def test_bad_inputs_get_one_line_errors(tmp_path):
    for i, task in enumerate(TASKS[:-1]):
        _run(tmp_path / "kept" / task, task, 1, 0.6)
    _run(tmp_path / "base" / "sst2", "sst2", 1, 0.5, zero_shot=0.5)
    r = _script("--kept", "kept", "--baseline", "base", cwd=tmp_path)
    assert r.returncode != 0 and r.stderr.strip() == "error: --kept kept: no run of snli"
    _run(tmp_path / "kept" / "snli", "snli", 1, 0.6)
    _run(tmp_path / "kept" / "snli-twice", "snli", 1, 0.6)
    r = _script("--kept", "kept", "--baseline", "base", cwd=tmp_path)
    assert r.returncode != 0 and "two runs of snli seed 1" in r.stderr and "Traceback" not in r.stderr
    r = _script("--kept", "kept/sst2", "kept/yelpp", "--baseline", "base", cwd=tmp_path)
    assert r.returncode != 0 and "no run of agnews, dbpedia, mrpc, rte, snli" in r.stderr
