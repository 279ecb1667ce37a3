"""Issue 15 item 5: 5 seeds as ONE vmapped search vs 5 runs one after another, SmolLM2 sst2 (demo layout).

    python experiments/seed_sweep_bench.py [--methods bbt deep-prompt-tuning] [--out experiments/bench/seed-sweep.json]

tools/bench's bench_seed_sweep on the table's settings: bbt (demo, pop 10, 60 calls, dev every 20) and deep
prompt tuning (20 steps, dev every 5); 32 test rows so that the search dominates. Search time includes each
run's compilation (as a user pays it); "steady" is the time per generation after the first interval.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ (the bench) is not installed

from bbt_jax.xla_flags import apply_cpu_defaults  # noqa: E402

apply_cpu_defaults()

from bbt_jax import config as C  # noqa: E402
from bbt_jax.errors import run_main  # noqa: E402
from bbt_jax.io import shared_path, write_json_atomic  # noqa: E402
from bbt_jax.models.registry import load  # noqa: E402
from bbt_jax.provenance import cpu_model  # noqa: E402
from tools.bench.bench import bench_seed_sweep  # noqa: E402

SETTINGS = {"bbt": {"popsize": 10, "budget": 60, "eval_every": 20},
            "deep-prompt-tuning": {"method": "deep-prompt-tuning", "budget": 20, "eval_every": 5, "lr": 0.01}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    model = load("smollm2", "")
    out = {"cpu": cpu_model(), "results": {}}
    for m in args.methods:
        cfg = C.override(C.demo(), data_dir=str(shared_path("data")), test_rows=32, **SETTINGS[m])
        r = bench_seed_sweep(cfg, [13, 21, 42, 87, 100], model=model)
        out["results"][m] = r
        print(f"{m}: 5 sequential {r['sequential_search_s']:.1f} s, vmapped {r['vmapped_search_s']:.1f} s -> "
              f"{r['speedup']:.2f}x; steady per generation {r['sequential_steady_s_per_gen']:.2f} vs "
              f"{r['vmapped_steady_s_per_gen']:.2f} s -> {r['steady_speedup']:.2f}x  ({out['cpu']})", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
