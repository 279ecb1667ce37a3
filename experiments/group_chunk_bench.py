"""A seed group's cost per call against the members x train rows it scores at once (SmolLM2, CPU).

    python experiments/group_chunk_bench.py [--task mrpc] [--chunks 0 10 5 2] [--cells 5] [--out FILE]
    python experiments/group_chunk_bench.py --task dbpedia --cells 5 1 --chunks -1 --generations 3 --no-pop13

The second: a group of 5 dbpedia cells against one cell, each at the sweep's own plan (--pop-chunk -1:
sweep.group_plan under GROUP_MEMBER_ROWS), per cell-call (session 19's 5-seed BBT group ran at about half
the speed of one seed alone, near the VM's memory; table7's dbpedia groups had run faster than one seed).

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


def one(model, task: str, popsize: int, chunk: int, generations: int, cells: int = len(SEEDS)) -> dict:
    cfg = C.override(C.demo(), data_dir=str(shared_path("data")), task=task, test_rows=8, popsize=popsize,
                     budget=popsize * generations, eval_every=popsize, pop_chunk=chunk)
    stamps = []  # when the first seed's line of each interval (= generation) is logged

    def log(line: str) -> None:
        if line.startswith(f"[seed {SEEDS[0]}] calls"):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [C.override(cfg, seed=s, out=f"{tmp}/{s}") for s in SEEDS[:cells]]
        runs = sweep_lib.train_group(cfgs, model=model, log=log)
    r = runs[0]
    rows = r["rows"]["train"]["used"]
    assert len(stamps) == generations, stamps
    steady_gen = (stamps[-1] - stamps[0]) / (generations - 1)
    chunk = r["vmapped"]["pop_chunk"]  # as it took effect (-1: sweep.group_plan's)
    per_call = r["vmapped"]["runs"]  # cells in one call (group_plan may split them)
    return {"popsize": popsize, "pop_chunk": chunk, "cells": cells, "cells_per_call": per_call,
            "member_rows_per_step": per_call * (chunk or popsize) * rows,
            "steady_s_per_gen": steady_gen, "steady_s_per_call": steady_gen / popsize,
            "steady_s_per_cell_call": steady_gen / popsize / cells,
            "first_interval_s": r["time"]["first_interval_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 10, 5, 2])
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--cells", type=int, nargs="+", default=[len(SEEDS)],
                   help="group sizes to run (the first N seeds); each with every chunk")
    p.add_argument("--no-pop13", action="store_true", help="skip the pop-13 setting and the repeat")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    model = load("smollm2", "")
    out = {"cpu": cpu_model(), "task": args.task, "seeds": SEEDS, "results": []}
    settings = [(n, 20, c) for n in args.cells for c in args.chunks]
    if not args.no_pop13:
        settings += [(args.cells[0], 13, 0), settings[0]]
    for cells, pop, chunk in settings:
        r = one(model, args.task, pop, chunk, args.generations, cells)
        out["results"].append(r)
        print(f"{args.task} {cells} cells ({r['cells_per_call']} per call) pop {pop} chunk {r['pop_chunk'] or 'none'} "
              f"({r['member_rows_per_step']} member x rows per step): {r['steady_s_per_gen']:.2f} s/generation, "
              f"{r['steady_s_per_call']:.3f} s/call, {r['steady_s_per_cell_call']:.3f} s/cell-call "
              f"(first interval {r['first_interval_s']:.1f} s)  ({out['cpu']})", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
