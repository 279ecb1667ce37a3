"""Zero-shot hand-written prompt vs BBT on SmolLM2, over the five few-shot seeds.

Usage (from the repo root, after `make setup`):
    python experiments/smollm2_table.py --task sst2 --seeds 13 21 42 87 100 --out experiments/smollm2
Writes <out>/<task>-<seed>/results.json per run and appends the table to <out>/<task>.md.
"""

import argparse
import json
import statistics
from pathlib import Path

from bbt_jax import config as C
from bbt_jax.errors import run_main
from bbt_jax.io import shared_path, write_json_atomic
from bbt_jax.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42, 87, 100])
    p.add_argument("--budget", type=int, default=None, help="override the demo preset's budget")
    p.add_argument("--test-rows", type=int, default=0, help="first this-many test rows (0: all)")
    p.add_argument("--out", default="experiments/smollm2")
    args = p.parse_args()

    rows = []
    for seed in args.seeds:
        over = {"task": args.task, "seed": seed, "data_dir": str(shared_path("data")), "test_rows": args.test_rows,
                "out": f"{args.out}/{args.task}-{seed}"}
        if args.budget:
            over["budget"] = args.budget
        cfg = C.override(C.demo(), **over)
        res = train(cfg, log=lambda s: print(f"[{args.task} {seed}] {s}", flush=True), zero_shot=True)
        Path(cfg.run.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(cfg.run.out) / "results.json", res)
        metric = "f1" if args.task == "mrpc" else "acc"
        rows.append((seed, res["zero_shot_test"][metric], res["test"][metric], res["dev"]["best_perf"],
                     res["calls"], res["time"]["wall_s"]))

    cfg = C.demo()
    zs, bbt = [r[1] for r in rows], [r[2] for r in rows]
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    lines = [f"### SmolLM2-135M-Instruct, {args.task} 16-shot, test = {rows and 'all' if not args.test_rows else args.test_rows} rows",
             "", f"Command: `python experiments/smollm2_table.py --task {args.task} --seeds {' '.join(map(str, args.seeds))}"
             + (f" --budget {args.budget}" if args.budget else "") + (f" --test-rows {args.test_rows}" if args.test_rows else "") + "`",
             f"BBT: placement `{cfg.prompt.placement}` (the soft prompt replaces the answer cue, p0 = cue embeddings), "
             f"d={cfg.prompt.intrinsic_dim}, pop={cfg.search.popsize}, budget={args.budget or cfg.search.budget} calls, "
             f"sigma0={cfg.search.sigma}, projection sigma={cfg.prompt.proj_sigma}, loss={cfg.search.loss}, dev_init=on.",
             "", "| seed | zero-shot test | BBT test | best dev | calls | wall time (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {z*100:.1f} | {b*100:.1f} | {d*100:.1f} | {c} | {w:.0f} |" for s, z, b, d, c, w in rows]
    lines += [f"| mean ± std | {statistics.mean(zs)*100:.1f} ± {sd(zs)*100:.1f} | {statistics.mean(bbt)*100:.1f} ± "
              f"{sd(bbt)*100:.1f} | | | {statistics.mean(r[5] for r in rows):.0f} |", ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.task}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.task}.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
