"""Cost of a SmolLM2 test pass per task: the first prompt (builds the rows' input cache, compiles) and the
next ones (each pays only its cue suffix on the shared cache, LoadedModel.prepared).

Usage: python experiments/test_pass_cost.py sst2 agnews [--rows 1000] [--prompts 4]
Prints, per task, the seconds of each one-prompt test pass (prompt i = z0 + 0.3 i noise in z) and its accuracy.
"""

import argparse
import time

import jax
import numpy as np

from bbt_jax import config as C
from bbt_jax.errors import run_main
from bbt_jax.harness import build
from bbt_jax.io import shared_path
from bbt_jax.models.registry import load


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="+")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--prompts", type=int, default=4)
    args = p.parse_args()
    model = load("smollm2", "")
    for task in args.tasks:
        cfg = C.override(C.demo(), task=task, test_rows=args.rows, data_dir=str(shared_path("data")))
        h = build(cfg, model=model, log=lambda s: None)
        for i in range(args.prompts):
            z = 0.3 * i * np.random.RandomState(i).randn(1, cfg.prompt.intrinsic_dim).astype(np.float32)
            t0 = time.perf_counter()
            m = h.test_metrics(jax.vmap(h.projection)(z))[0]
            print(f"{task} prompt {i}: {time.perf_counter() - t0:.1f} s | acc {m['acc']:.4f} on {m['rows']} rows "
                  f"({len(h.test_batches)} batches)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
