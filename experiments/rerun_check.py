"""Does a seed group of the table rerun bit-identically? (reproducibility of the sweep's ES cells)

    python experiments/rerun_check.py experiments/table7/runs --task sst2 --variant bbt
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot python experiments/rerun_check.py ...

Reruns the 5 seeds of one (task, variant) of the table as one vmapped group (sweep.train_group, the sweep's
own path) with the recorded configs (test rows cut to 16: the test pass does not touch the search) into a
temporary folder, and prints per seed the largest difference of the per-generation best train loss from the
recorded curve, next to the XLA flags each side ran with (results.json environment.xla_flags).
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

from bbt_jax import config as C
from bbt_jax import sweep
from bbt_jax.errors import run_main
from bbt_jax.models.registry import load


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--task", default="sst2")
    p.add_argument("--variant", default="bbt")
    args = p.parse_args()
    cells = [json.loads(f.read_text()) for f in sorted(Path(args.root).glob(
        f"task={args.task},variant={args.variant},seed=*/results.json"))]
    if not cells:
        print(f"{args.root}: no finished {args.task} {args.variant} cells")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [C.override(C.from_dict(r["config"]), test_rows=16, out=f"{tmp}/{r['config']['run']['seed']}")
                for r in cells]
        model = load(cfgs[0].model.model, cfgs[0].model.tokenizer)
        rerun = sweep.train_group(cfgs, model=model, log=lambda s: None)
    print(f"recorded with XLA_FLAGS {cells[0]['environment']['xla_flags']!r}, rerun with "
          f"{os.environ.get('XLA_FLAGS', '')!r}")
    for old, new in zip(cells, rerun, strict=True):
        a, b = ([c["best_loss"] for c in r["curve"]] for r in (old, new))
        first = next((g + 1 for g, (x, y) in enumerate(zip(a, b)) if x != y), None)
        print(f"seed {old['config']['run']['seed']}: max |diff| {max(abs(x - y) for x, y in zip(a, b)):.2e}, "
              f"first generation that differs {first}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
