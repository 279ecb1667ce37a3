"""A seed group's cost per call against the members x train rows it scores at once (SmolLM2, CPU).

    python experiments/group_chunk_bench.py [--task mrpc] [--chunks 0 10 5 2] [--out FILE]

Why: at the demo's 400 calls on the same 5 seeds, BBT's groups (pop 20) searched mrpc in 456 s and yelpp in
516 s, BBTv2's (pop 13, seven_tasks_bbtv2) in 270 s and 316 s: 1.65x less per call, though a BBTv2 call
does at least BBT's work. Is a group's call slower per member when it scores more members x rows at once?
One process, one loaded model, the demo preset on the task's 5 seeds as ONE vmapped group
(sweep.train_group), dev every generation (as seven_tasks), 8 test rows. Per setting: the steady seconds
per generation (from the first to the last generation's log line: no compilation, no row preparation)
and that divided by the population = seconds per call of the group (5 seeds' calls). Settings: pop 20
with --pop-chunk C for each C (0 = the whole population in one vmap, the sweep's default for mrpc under
GROUP_MEMBER_ROWS), and pop 13 in one vmap; the first setting again at the end (drift check).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bbt_jax.xla_flags import apply_cpu_defaults  # noqa: E402

apply_cpu_defaults()

from bbt_jax import config as C  # noqa: E402
from bbt_jax import sweep as sweep_lib  # noqa: E402
from bbt_jax.errors import run_main  # noqa: E402
from bbt_jax.io import shared_path, write_json_atomic  # noqa: E402
from bbt_jax.models.registry import load  # noqa: E402
from bbt_jax.provenance import cpu_model  # noqa: E402

SEEDS = [13, 21, 42, 87, 100]


def one(model, task: str, popsize: int, chunk: int, generations: int) -> dict:
    cfg = C.override(C.demo(), data_dir=str(shared_path("data")), task=task, test_rows=8, popsize=popsize,
                     budget=popsize * generations, eval_every=popsize, pop_chunk=chunk)
    stamps = []  # when the first seed's line of each interval (= generation) is logged

    def log(line: str) -> None:
        if line.startswith(f"[seed {SEEDS[0]}] calls"):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [C.override(cfg, seed=s, out=f"{tmp}/{s}") for s in SEEDS]
        runs = sweep_lib.train_group(cfgs, model=model, log=log)
    r = runs[0]
    rows = r["rows"]["train"]["used"]
    assert len(stamps) == generations, stamps
    steady_gen = (stamps[-1] - stamps[0]) / (generations - 1)
    members = chunk or popsize
    return {"popsize": popsize, "pop_chunk": chunk, "member_rows_per_step": len(SEEDS) * members * rows,
            "steady_s_per_gen": steady_gen, "steady_s_per_call": steady_gen / popsize,
            "first_interval_s": r["time"]["first_interval_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 10, 5, 2])
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    model = load("smollm2", "")
    out = {"cpu": cpu_model(), "task": args.task, "seeds": SEEDS, "results": []}
    settings = [(20, c) for c in args.chunks] + [(13, 0), (20, args.chunks[0])]
    for pop, chunk in settings:
        r = one(model, args.task, pop, chunk, args.generations)
        out["results"].append(r)
        print(f"{args.task} pop {pop} chunk {chunk or 'none'} ({r['member_rows_per_step']} member x rows per step): "
              f"{r['steady_s_per_gen']:.2f} s/generation, {r['steady_s_per_call']:.3f} s/call "
              f"(first interval {r['first_interval_s']:.1f} s)  ({out['cpu']})", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
