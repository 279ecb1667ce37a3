"""What `--start-margin` would have kept in runs already made: the start (z = 0) unless a candidate beats its dev
metric by MORE than a margin (issue 16, item 4: a selection rule against 32 noisy dev rows).

    python experiments/start_margin.py experiments/table7/runs --out experiments/search_quality/start_margin_table7.md

Exact without rerunning anything (the selection never feeds the search): with z = 0 scored on dev first and the
dev metric selecting (one evaluation at a time, `--select-by metric`, `--dev-smooth 1`, no --cv-folds), the
run's kept candidate is the lexicographic best of (dev metric, lower dev loss) over z = 0 and its candidates;
with a margin m >= 0 the kept candidate is that same one when its dev metric exceeds z = 0's by more than m,
else z = 0 (the first candidate over the bar is at or before the best one, and after it the usual rule keeps the
best; a run made with a margin keeps that same candidate for any larger one). So each run's test under the
margin is its own test or its start's test (zero_shot_test). Runs that do not qualify (no dev_z0, loss or
smoothed selection, cross-validation, a --start-margin above the smallest of --rows) are counted and skipped.

Margins are given in dev rows (m = rows / the run's dev rows; for F1 the same fraction); 0 rows = a dev tie keeps
the start (no tie-break on dev loss against z = 0).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys

from bbt_jax.errors import run_main
from bbt_jax.io import read_json, write_bytes_atomic
from bbt_jax.report import find_results, format_mean_std, load_results, method_label, test_metric


def own_rows(res: dict, rows: float | None, margin_of: int = 0) -> float | None:
    """`rows` dev rows counted in rows of a `margin_of`-row dev set (the fraction rows / margin_of, as
    --start-margin sets it), as the run's own dev rows; margin_of 0: already the run's own."""
    return rows if rows is None or not margin_of else rows * res["rows"]["dev"]["used"] / margin_of


def qualifies(res: dict, margins=(0.0,)) -> bool:
    """Every margin in `margins` (dev rows) is exact for the run and its start has a test score."""
    return all(knows_margin(res, m) for m in margins) and res.get("zero_shot_test") is not None


def plain_dev_choice(res: dict) -> bool:
    """`best_on_dev` without a margin above 0 (a run with one cannot tell what a smaller one would have kept)."""
    return knows_margin(res, 0.0)


def knows_margin(res: dict, rows: float | None) -> bool:
    """Whether `kept(res, rows)` is exact: the run as made (`rows` None), or a margin at or above the run's own
    --start-margin (any margin >= 0 for a run without one; a run made with a margin cannot tell what a smaller
    one would have kept)."""
    if rows is None:
        return True
    own = res.get("config", {}).get("search", {}).get("start_margin", -1.0)
    return best_on_dev(res) and rows / res["rows"]["dev"]["used"] >= own - 1e-9


def best_on_dev(res: dict) -> bool:
    """z = 0 scored on dev first and the dev metric selecting, one evaluation at a time (any start margin): the
    kept candidate's dev metric is results.json's dev.best_perf."""
    s = res.get("config", {}).get("search", {})
    return (res.get("dev_z0") is not None and s.get("select_by", "metric") == "metric"
            and s.get("dev_smooth", 1) == 1 and s.get("cv_folds", 1) == 1)


def kept_test(res: dict, rows: float | None) -> float:
    """Test % of the candidate the margin keeps (`rows` None: the run as made)."""
    metric = test_metric(res)
    return 100 * (res["test"] if kept(res, rows) else res["zero_shot_test"])[metric]


def kept(res: dict, rows: float | None) -> bool:
    """True: the margin keeps the run's own choice (`rows` None: the run as made), False: z = 0."""
    if rows is None:
        return True
    margin = rows / res["rows"]["dev"]["used"]
    return res["dev"].get("best_generation", 0) > 0 and res["dev"]["best_perf"] > res["dev_z0"]["perf"] + margin + 1e-9


def off_domain_lines(path: str, cells: dict, margins: list, margin_of: int = 0) -> list[str]:
    """The margins on an experiments/off_domain.py table (its json: per seed the tuned prompt's and, for
    --demos runs, its own start's target score): a run reverted to z = 0 scores its start there."""
    table = read_json(path, path, "off-domain json")
    lines = ["", f"Off-domain ({path}: {table['source']} prompts on {table['target']}, test % of {table['test_rows']} "
             "rows):", "", "| variant | runs | start | as run (below start) | " + " | ".join(
                 f"margin {m:g} rows (below start)" for m in margins) + " |", "|" + "---|" * (4 + len(margins))]
    for (task, method), runs in sorted(cells.items()):
        entry = table["methods"].get(method)
        if task != table["source"] or entry is None:
            continue
        seeds = entry["seeds"]
        starts = entry.get("starts") or [entry["start"]] * len(seeds)
        by_seed = {r["config"]["run"]["seed"]: r for r in runs}
        if sorted(by_seed) != sorted(seeds):
            continue
        row = [method, str(len(seeds)), format_mean_std(starts)]
        for m in [None, *margins]:
            got = [t if kept(by_seed[sd], own_rows(by_seed[sd], m, margin_of)) else st
                   for sd, t, st in zip(seeds, entry["target"], starts, strict=True)]
            below = sum(g < st - 1e-9 for g, st in zip(got, starts, strict=True))
            row.append(f"{format_mean_std(got)} ({below})")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="+", help="run folders or sweeps (their results.json)")
    p.add_argument("--rows", default="0,1,2", help="margins in dev rows, comma-separated (default 0,1,2)")
    p.add_argument("--off-domain", help="an experiments/off_domain.py json: the margins on its per-seed scores")
    p.add_argument("--margin-of", type=int, default=0, metavar="ROWS",
                   help="count --rows in rows of a ROWS-row dev set, i.e. as the fraction m / ROWS of each run's own "
                   "dev rows (what --start-margin sets); default: the run's own dev rows")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    try:
        margins = [float(x) for x in args.rows.split(",")]
    except ValueError:
        print(f"error: --rows {args.rows}: comma-separated numbers of dev rows", file=sys.stderr)
        return 2
    cells, skipped = collections.defaultdict(list), 0
    for path in find_results(args.root):
        res = load_results(path)
        if qualifies(res, [own_rows(res, m, args.margin_of) for m in margins]):
            cells[(res["task"], method_label(res))].append(res)
        else:
            skipped += 1
    if not cells:
        print(f"error: {' '.join(args.root)}: no qualifying results.json", file=sys.stderr)
        return 2
    head = "| task | method | runs | start | as run (below start) | " + " | ".join(
        f"margin {m:g} rows (below start)" for m in margins) + " |"
    cpus = sorted({r.get("environment", {}).get("cpu_model", "?") for runs in cells.values() for r in runs})
    lines = [f"CPU of the runs (their results.json): {', '.join(cpus)}. Roots: {', '.join(args.root)}. "
             f"Skipped (not exact here): {skipped} runs."
             + (f" Margins in rows of a {args.margin_of}-row dev set (m / {args.margin_of} of each run's own)."
                if args.margin_of else ""), "", head, "|" + "---|" * (5 + len(margins))]
    delta = collections.defaultdict(lambda: collections.defaultdict(list))
    for (task, method), runs in sorted(cells.items()):
        starts = [100 * r["zero_shot_test"][test_metric(r)] for r in runs]
        row = [task, method, str(len(runs)), format_mean_std(starts)]
        for m in [None, *margins]:
            tests = [kept_test(r, own_rows(r, m, args.margin_of)) for r in runs]
            below = sum(t < s - 1e-9 for t, s in zip(tests, starts, strict=True))
            row.append(f"{format_mean_std(tests)} ({below})")
            delta[method][m].extend(t - s for t, s in zip(tests, starts, strict=True))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Mean change over the start (points) per method, all its qualifying runs:", "",
              "| method | runs | as run | " + " | ".join(f"margin {m:g}" for m in margins) + " |",
              "|" + "---|" * (3 + len(margins))]
    for method, by_m in sorted(delta.items()):
        vals = [f"{statistics.mean(by_m[m]):+.2f} ({sum(d < -1e-9 for d in by_m[m])} below)" for m in
                [None, *margins]]
        lines.append(f"| {method} | {len(by_m[None])} | " + " | ".join(vals) + " |")
    if args.off_domain:
        lines += off_domain_lines(args.off_domain, cells, margins, args.margin_of)
    write_bytes_atomic(args.out, ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
