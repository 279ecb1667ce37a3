"""experiments/runs_equal.py: recorded and rerun cells matched by (task, seed), from hand-made results.json."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, task: str, seed: int, test: float, gen: int, dev: float, losses):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "task": task, "config": {"run": {"seed": seed}}, "test": {"acc": test},
        "dev": {"best_generation": gen, "best_perf": dev}, "curve": [{"best_loss": x} for x in losses]}))


def _script(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "runs_equal.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


def test_equal_cells_and_a_cell_that_moved(tmp_path):
    """Seed 1 equal (its curve 0.25 apart at most), seed 2 kept another generation: exit 1, one NO; seed 3
    recorded but not rerun is listed; a rerun cell without a recorded one is a one-line error."""
    _run(tmp_path / "rec" / "a", "sst2", 1, 0.85, 0, 0.75, [0.5, 0.4])
    _run(tmp_path / "rec" / "b", "sst2", 2, 0.80, 0, 0.7, [0.5, 0.4])
    _run(tmp_path / "rec" / "c", "sst2", 3, 0.80, 0, 0.7, [0.5])
    _run(tmp_path / "new" / "a", "sst2", 1, 0.85, 0, 0.75, [0.5, 0.15])
    _run(tmp_path / "new" / "b", "sst2", 2, 0.79, 5, 0.8, [0.5, 0.4])
    r = _script("--recorded", "rec", "--rerun", "new", "--out", "c.md", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    text = (tmp_path / "c.md").read_text()
    assert "| sst2 | 1 | 85.00 | 85.00 | 0 / 0 | 75.0 / 75.0 | 2.5e-01 | yes |" in text
    assert "| sst2 | 2 | 80.00 | 79.00 | 0 / 5 | 70.0 / 80.0 | 0.0e+00 | NO |" in text
    assert "1 of 2 rerun cells give" in text and "Recorded cells not rerun: 1." in text
    r = _script("--recorded", "rec/a", "--rerun", "new/a", cwd=tmp_path)
    assert r.returncode == 0 and "1 of 1 rerun cells" in r.stdout
    r = _script("--recorded", "rec/a", "--rerun", "new", cwd=tmp_path)
    assert r.returncode != 0 and r.stderr.strip() == "error: --rerun: no recorded run of sst2 seed 2"
