"""Did a rerun give the recorded runs' figures? Two sets of run folders compared cell by cell, nothing run.

    python experiments/runs_equal.py --recorded 'experiments/search_quality/seven_tasks_bbtv2/runs/task=agnews*' \
        --rerun experiments/search_quality/held_out_rerun/rerun-five --out COMPARE.md

Cells are matched by (task, seed) (exactly one run on each side; a --rerun cell without a recorded one is an
error, recorded cells without a rerun are listed). Per cell: the test metric (bbt_jax/report.test_metric) of
each side, the generation the dev rule kept and its dev score, and the largest difference of the per-generation
best training loss along the curve (results.json "curve"). Exit 0 when every matched cell has the same test
metric, kept generation and dev score (the figures a report reads); the loss column tells how close the
searches ran.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `experiments.*` when run as a script

from bbt_jax.errors import UserError, run_main  # noqa: E402
from bbt_jax.io import write_bytes_atomic  # noqa: E402
from bbt_jax.report import find_results, load_results, run_rows  # noqa: E402


def cells(patterns: list[str], flag: str) -> dict[tuple[str, int], tuple[dict, Path]]:
    """{(task, seed): (results, folder)} of the results.json under the globbed folders, one run per (task,
    seed) (experiments/seven_task_target.py's --kept too)."""
    folders = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if not found:
            raise UserError(f"{flag} {pattern}: no such file or folder")
        folders += found
    out = {}
    for path in find_results(folders):
        res = load_results(path)
        row = run_rows(res, path.parent)[0]
        key = (row["task"], row["seed"])
        if key in out:
            raise UserError(f"{flag}: two runs of {key[0]} seed {key[1]}: {out[key][1]} and {path.parent}")
        out[key] = (res, path.parent)
    return out


def _figures(res: dict) -> tuple[float, int, float | None]:
    dev = res.get("dev") or {}
    return run_rows(res)[0]["test"], dev.get("best_generation", 0), dev.get("best_perf")


def _curve_gap(a: dict, b: dict) -> float | None:
    la = [g["best_loss"] for g in a.get("curve") or []]
    lb = [g["best_loss"] for g in b.get("curve") or []]
    return None if len(la) != len(lb) or not la else max(abs(x - y) for x, y in zip(la, lb, strict=True))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recorded", nargs="+", required=True, help="globs of recorded run folders or sweeps")
    p.add_argument("--rerun", nargs="+", required=True, help="globs of the rerun's folders or sweeps")
    p.add_argument("--out", help="markdown file to write")
    args = p.parse_args()
    recorded, rerun = cells(args.recorded, "--recorded"), cells(args.rerun, "--rerun")
    alone = sorted(set(rerun) - set(recorded))
    if alone:
        raise UserError(f"--rerun: no recorded run of {', '.join(f'{t} seed {s}' for t, s in alone)}")
    lines = ["| task | seed | test recorded | test rerun | kept generation (recorded / rerun) | dev (recorded / "
             "rerun) | max best-loss gap | equal |", "|---|---|---|---|---|---|---|---|"]
    equal = 0
    for key in sorted(rerun):
        a, b = recorded[key][0], rerun[key][0]
        fa, fb = _figures(a), _figures(b)
        gap = _curve_gap(a, b)
        same = fa == fb
        equal += same
        dev = " / ".join("—" if d is None else f"{100 * d:.1f}" for d in (fa[2], fb[2]))
        lines.append(f"| {key[0]} | {key[1]} | {fa[0]:.2f} | {fb[0]:.2f} | {fa[1]} / {fb[1]} | {dev} | "
                     f"{'—' if gap is None else f'{gap:.1e}'} | {'yes' if same else 'NO'} |")
    missing = sorted(set(recorded) - set(rerun))
    lines += ["", f"{equal} of {len(rerun)} rerun cells give the recorded test metric, kept generation and dev "
              "score." + (f" Recorded cells not rerun: {len(missing)}." if missing else "")]
    text = "\n".join(lines) + "\n"
    if args.out:
        write_bytes_atomic(args.out, text.encode())
    print(text, end="")
    return 0 if equal == len(rerun) else 1


if __name__ == "__main__":
    raise SystemExit(run_main(main))
