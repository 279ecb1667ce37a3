"""Issue 16's variant table: per variant of a sweep, the test metric, the dev metric it was selected on, and
how many seeds ended below the prompt they started from.

    python experiments/search_quality_summary.py experiments/search_quality/runs \
        --out experiments/search_quality/summary.md

A variant is a cell's label (the grid file's "variants"), per task (a task column when the runs span several
tasks, and then no dev rule line). Columns: test mean ± std over seeds (%), the start
prompt's test score (z = 0, each cell's zero-shot), seeds whose test is below their start, the selected
candidate's dev metric (mean; max over the run's dev evaluations, so optimistic) and z = 0's dev metric
(mean), the generation of the selected candidate, the calls (+ --demo-draws' passes). The last line names the
variant with the highest mean dev metric of its selected candidates: the rule for the recommended default from
session 8 to 16, biased towards variants that read dev more often; since session 17 experiments/held_out_dev.py
chooses it on rows no run selected on.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

from bbt_jax.errors import run_main
from bbt_jax.io import write_bytes_atomic
from bbt_jax.provenance import cpu_model
from bbt_jax.report import find_results, format_mean_std, load_results, method_label, test_metric


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _calls(res: dict) -> str:
    """The run's calls; with --demo-draws M > 1 the M passes that chose the demonstrations too."""
    draws = (res.get("config", {}).get("prompt") or {}).get("demo_draws", 1)
    return f"{res['calls']} + {draws} draws" if draws > 1 else str(res["calls"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="+", help="sweep folders (their cells' labels name the variants)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cells = collections.defaultdict(list)
    for path in find_results(args.root):
        res = load_results(path)
        cells[(res.get("task", ""), method_label(res))].append(res)
    if not cells:
        print(f"error: {' '.join(args.root)}: no results.json", file=sys.stderr)
        return 2
    several = len({task for task, _ in cells}) > 1  # a task column when the cells span several tasks
    lines = ["| " + "task | " * several + "variant | runs | test (%) | start's test | below start | dev of selected | "
             "dev of z = 0 | selected at generation | calls |", "|" + "---|" * (9 + several)]
    best = None
    for (task, name), runs in cells.items():
        tests = [100 * r["test"][test_metric(r)] for r in runs]
        starts = [100 * r["zero_shot_test"][test_metric(r)] for r in runs if r.get("zero_shot_test")]
        below = sum(t < s - 1e-9 for t, s in zip(tests, starts, strict=False))
        dev = statistics.mean(r["dev"]["best_perf"] for r in runs)
        dev0 = [r["dev_z0"]["perf"] for r in runs if r.get("dev_z0")]
        gens = sorted(r["dev"].get("best_generation") for r in runs)
        lines.append(f"| {task + ' | ' if several else ''}{name} | {len(runs)} | {format_mean_std(tests)} | "
                     f"{format_mean_std(starts) if starts else '—'} | {below} of {len(starts)} | {_pct(dev)} | "
                     f"{_pct(statistics.mean(dev0)) if dev0 else '—'} | {', '.join(map(str, gens))} | "
                     f"{_calls(runs[0])} |")
        if not several and len(runs) == max(len(v) for v in cells.values()) and (best is None or dev > best[1]):
            best = (name, dev)
    text = f"Machine: {cpu_model()}. Runs: {', '.join(args.root)}.\n\n" + "\n".join(lines) + "\n"
    if not several:  # the dev rule compares variants of one task
        text += (f"\nHighest mean dev metric of the selected candidates (variants with every seed): {best[0]} "
                 f"({_pct(best[1])}); the preset's rule until session 17, now experiments/held_out_dev.py's.\n")
    write_bytes_atomic(Path(args.out), text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
