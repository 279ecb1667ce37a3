"""Issue 16's 7-task target, exact from the runs: the kept prompts' test average against the shipped templates'
zero-shot average + 8 points.

    python experiments/seven_task_target.py \
        --kept experiments/search_quality/held_out_rerun/rerun-sst2-margin2 ... \
        --baseline experiments/search_quality/seven_tasks_bbtv2 \
        --out experiments/search_quality/held_out_rerun/seven_tasks.md

--kept: run folders (searched for results.json) holding exactly one run per (task, seed) of the seven tasks;
its test metric (bbt_jax/report.test_metric: F1 for mrpc) is the task's figure. --baseline: runs that start from
the shipped templates; their zero-shot test score (z = 0, `zero_shot_test`) is the baseline, one value per task
(the mean over its runs; it does not depend on the seed). Prints and writes a markdown table: per task the
baseline and the kept mean, the average over the tasks of each, the per-seed average (the seven tasks' mean for
one split seed) with its standard deviation and standard error, and whether the average reaches the target.
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `experiments.*` when run as a script

from bbt_jax.errors import UserError, run_main  # noqa: E402
from bbt_jax.io import write_bytes_atomic  # noqa: E402
from bbt_jax.report import find_results, load_results, run_rows  # noqa: E402
from experiments.runs_equal import cells  # noqa: E402

TASKS = ("sst2", "yelpp", "agnews", "dbpedia", "mrpc", "rte", "snli")


def kept_scores(roots: list[str]) -> dict[str, dict[int, tuple[float, str, str]]]:
    """{task: {seed: (test %, folder, method label)}} of TASKS, one run per (task, seed) (runs_equal.cells: a
    clear error otherwise)."""
    out = collections.defaultdict(dict)
    for (task, seed), (res, folder) in cells(roots, "--kept").items():
        if task in TASKS:
            row = run_rows(res)[0]
            out[task][seed] = (row["test"], str(folder), row["method"])
    missing = [t for t in TASKS if t not in out]
    if missing:
        raise UserError(f"--kept {' '.join(roots)}: no run of {', '.join(missing)}")
    seeds = {t: sorted(v) for t, v in out.items()}
    if len({tuple(s) for s in seeds.values()}) != 1:
        raise UserError("--kept: the tasks' seeds differ: " + "; ".join(f"{t} {s}" for t, s in seeds.items()))
    return out


def baseline_scores(roots: list[str]) -> dict[str, float]:
    """{task: mean zero-shot test % over the baseline runs of that task}."""
    by_task = collections.defaultdict(list)
    for path in find_results(roots):
        for row in run_rows(load_results(path))[1:]:  # the zero-shot row, where the run scored z = 0
            if row["task"] in TASKS:
                by_task[row["task"]].append(row["test"])
    missing = [t for t in TASKS if t not in by_task]
    if missing:
        raise UserError(f"--baseline {' '.join(roots)}: no zero-shot score of {', '.join(missing)}")
    return {t: statistics.mean(v) for t, v in by_task.items()}


def target_table(kept: dict, base: dict[str, float], plus: float) -> tuple[str, float, float]:
    """(markdown, kept average, target)."""
    seeds = sorted(next(iter(kept.values())))
    means = {t: statistics.mean(kept[t][s][0] for s in seeds) for t in TASKS}
    avg, base_avg = statistics.mean(means.values()), statistics.mean(base[t] for t in TASKS)
    target = base_avg + plus
    per_seed = [statistics.mean(kept[t][s][0] for t in TASKS) for s in seeds]
    sd = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    lines = ["| task | zero-shot, shipped template | kept (mean over seeds) | method |", "|---|---|---|---|"]
    lines += [f"| {t} | {base[t]:.2f} | {means[t]:.2f} | {', '.join(sorted({kept[t][s][2] for s in seeds}))} |"
              for t in TASKS]
    lines += [f"| average | **{base_avg:.3f}** (+ {plus:g} = {target:.3f}) | **{avg:.3f}** | |", "",
              "Per seed (the seven tasks' mean for one split seed): " + " / ".join(
                  f"{v:.2f}" for v in per_seed) + f" for seeds {' / '.join(map(str, seeds))}; std {sd:.2f}, "
              f"standard error {sd / math.sqrt(len(per_seed)):.2f}; {sum(v >= target for v in per_seed)} of "
              f"{len(per_seed)} seeds at or above the target.", "",
              f"Target {'MET' if avg >= target else 'NOT met'}: {avg:.3f} against {target:.3f} "
              f"({avg - target:+.3f})."]
    return "\n".join(lines) + "\n", avg, target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kept", nargs="+", required=True, help="folders of the kept runs (one per task and seed)")
    p.add_argument("--baseline", nargs="+", required=True, help="folders of runs from the shipped templates")
    p.add_argument("--plus", type=float, default=8.0, help="points over the zero-shot average (issue 16: 8)")
    p.add_argument("--out", help="markdown file to write")
    args = p.parse_args()
    text, _, _ = target_table(kept_scores(args.kept), baseline_scores(args.baseline), args.plus)
    text = (f"Command: `python experiments/seven_task_target.py --kept {' '.join(args.kept)} --baseline "
            f"{' '.join(args.baseline)}" + (f" --plus {args.plus:g}" if args.plus != 8 else "")
            + (f" --out {args.out}`" if args.out else "`") + "\n\n" + text)
    if args.out:
        write_bytes_atomic(args.out, text.encode())
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
