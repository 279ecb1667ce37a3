"""BBT vs BBTv2 (sequential, parallel) vs prompt tuning / deep prompt tuning on SmolLM2, per task and seed.

Usage (from the repo root, after `make setup`):
    python experiments/smollm2_methods.py --tasks sst2 agnews rte --seeds 13 21 42 87 100 \
        --out experiments/smollm2/methods
One process loads SmolLM2 once and runs every cell (task x method x seed); the pending seeds of an ES
method (bbt, bbtv2) run as ONE vmapped search (sweep.train_group, equal to solo runs up to float
rounding; seeds 13 and 21 ran one by one), gradient methods seed by seed. A cell whose results.json
exists is skipped, so a killed run continues where it stopped. Writes
<out>/<task>-<method>-<seed>/results.json and the table <out>/README.md (mean +- std over seeds of the
test metric, calls, forward/backward passes, wall time and search time per generation). The zero-shot
row is the cue template (z = 0) scored in the BBT cells' test pass.

Every method starts from the demo preset (cue placement: p0 = the cue's embeddings, SmolLM2's shared
input cache, dev_init, dev loss tie-break) at the settings below; the ES methods get the same number of
calls, the gradient methods a number of steps of about the same compute (a step is a forward and a
backward pass over the training rows, ~3 forward passes).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bbt_jax import config as C
from bbt_jax import sweep
from bbt_jax.errors import run_main
from bbt_jax.io import shared_path, write_json_atomic
from bbt_jax.models.registry import load
from bbt_jax.provenance import environment
from bbt_jax.train import train

METHODS = {
    "bbt": {},
    "bbtv2-seq": {"method": "bbtv2", "layer_schedule": "sequential", "sigma": 0.2, "alpha": 0.2, "proj_sigma": 0.0},
    "bbtv2-par": {"method": "bbtv2", "layer_schedule": "parallel", "sigma": 0.2, "alpha": 0.2, "proj_sigma": 0.0},
    "prompt-tuning": {"method": "prompt-tuning"},
    "deep-prompt-tuning": {"method": "deep-prompt-tuning"},
}


def cell_config(task, method, seed, args) -> C.Config:
    over = {"task": task, "seed": seed, "data_dir": str(shared_path("data")), "test_rows": args.test_rows,
            "popsize": args.popsize, "budget": args.budget, "eval_every": args.eval_every,
            "out": f"{args.out}/{task}-{method}-{seed}", **METHODS[method]}
    if method in ("prompt-tuning", "deep-prompt-tuning"):
        over.update(budget=args.steps, eval_every=args.steps_eval_every, lr=args.lr)
    return C.override(C.demo(), **over)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["sst2", "agnews", "rte"])
    p.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42, 87, 100])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--popsize", type=int, default=10)
    p.add_argument("--budget", type=int, default=300, help="calls of every ES method (BBTv2 sequential: "
                   "budget // (popsize x 30 layers) rounds)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--steps", type=int, default=100, help="steps of the gradient methods")
    p.add_argument("--steps-eval-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--test-rows", type=int, default=200)
    p.add_argument("--out", default="experiments/smollm2/methods")
    p.add_argument("--no-vmap-seeds", action="store_true", help="run every cell alone (default: the pending seeds "
                   "of an ES method as one vmapped search, sweep.train_group)")
    args = p.parse_args()

    model = load("smollm2", "")
    t0 = time.perf_counter()

    def save(cfg, res, task, method, seed):
        res["environment"] = environment(os.environ)
        write_json_atomic(Path(cfg.run.out) / "results.json", res)
        print(f"[{task} {method} {seed}] done, {time.perf_counter() - t0:.0f} s so far", flush=True)

    for task in args.tasks:
        for method in args.methods:
            todo = [s for s in args.seeds if not (Path(cell_config(task, method, s, args).run.out)
                                                 / "results.json").is_file()]
            cfgs = [cell_config(task, method, s, args) for s in todo]
            for cfg in cfgs:
                Path(cfg.run.out).mkdir(parents=True, exist_ok=True)
            grouped = None
            if len(cfgs) > 1 and not args.no_vmap_seeds:  # ES methods: the seeds as ONE vmapped search
                grouped = sweep.train_group(cfgs, model=model, zero_shot=method == "bbt",
                                            log=lambda s, m=method: print(f"[{task} {m} {todo}] {s}", flush=True))
            if grouped is not None:
                for cfg, res, seed in zip(cfgs, grouped, todo, strict=True):
                    save(cfg, res, task, method, seed)
                continue
            for cfg, seed in zip(cfgs, todo, strict=True):  # gradient methods (or one seed): one by one
                res = train(cfg, log=lambda s, m=method, seed=seed: print(f"[{task} {m} {seed}] {s}", flush=True),
                            zero_shot=method == "bbt", out=Path(cfg.run.out), model=model)
                save(cfg, res, task, method, seed)
    write_table(args)
    return 0


def _ms(values):
    v = [100 * x for x in values]
    return f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}" if v else "—"


def write_table(args) -> None:
    lines = ["# SmolLM2-135M-Instruct: BBT, BBTv2 and gradient baselines", "",
             f"Command: `python experiments/smollm2_methods.py --tasks {' '.join(args.tasks)} --seeds "
             f"{' '.join(map(str, args.seeds))} --popsize {args.popsize} --budget {args.budget} --eval-every "
             f"{args.eval_every} --steps {args.steps} --steps-eval-every {args.steps_eval_every} --lr {args.lr} "
             f"--test-rows {args.test_rows}`", "",
             f"16-shot, seeds {', '.join(map(str, args.seeds))}; test = the first {args.test_rows} rows of each "
             "task's evaluation split; metric: accuracy (%) mean ± std over seeds.", "",
             "| task | method | test | dev (best) | calls | fwd / bwd passes | wall s | search s/gen |",
             "|---|---|---|---|---|---|---|---|"]
    env = None
    for task in args.tasks:
        cells = {m: [json.loads((Path(args.out) / f"{task}-{m}-{s}" / "results.json").read_text())
                     for s in args.seeds if (Path(args.out) / f"{task}-{m}-{s}" / "results.json").is_file()]
                 for m in args.methods}
        metric = "f1" if task == "mrpc" else "acc"
        if cells.get("bbt"):
            zs = [r["zero_shot_test"][metric] for r in cells["bbt"]]
            lines.append(f"| {task} | zero-shot (cue template) | {_ms(zs)} (n={len(zs)}) | | 0 | | | |")
        for m in args.methods:
            rs = cells[m]
            if not rs:
                continue
            env = env or rs[0].get("environment")
            test = [r["test"][metric] for r in rs]
            dev = [r["dev"]["best_perf"] for r in rs if r["dev"]["best_perf"] is not None]
            gen_s = statistics.mean(r["time"]["search_s"] / max(r["generations"], 1) for r in rs)
            wall = statistics.mean(r["time"]["wall_s"] for r in rs)
            lines.append(f"| {task} | {m} | {_ms(test)} (n={len(rs)}) | {_ms(dev)} | {rs[0]['calls']} | "
                         f"{rs[0]['passes']['forward']} / {rs[0]['passes']['backward']} | {wall:.0f} | {gen_s:.2f} |")
    if env:
        lines += ["", f"Machine: {env.get('cpu_model', env.get('cpu'))}, {env.get('cpu_count', '?')} cores; "
                  f"jax {env.get('versions', {}).get('jax', '?')}."]
    (Path(args.out) / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
