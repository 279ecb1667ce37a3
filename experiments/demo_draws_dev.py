"""Does the --demo-draws rule (keep the demonstrations whose template has the lowest training loss at z = 0)
pick demonstrations that score better on DEV? Dev only: no test row is read.

Usage (from the repo root, after `make setup`):
    python experiments/demo_draws_dev.py --task sst2 --draws 20 --out experiments/search_quality/demo_draws_dev.md
For each seed's 16-shot split: the M draws of `--demos K` (bbt_jax/demos.py, draw 0 = the split seed's, what
`--demos` alone takes), each one's training loss at z = 0 on the rows it leaves (the rule's score, as
harness.score_draws computes it for choose_demos) and its dev accuracy at z = 0 (the template with those
demonstrations).
"""

import argparse
import time
from pathlib import Path

import numpy as np

from bbt_jax import config as C
from bbt_jax import tasks as tasks_lib
from bbt_jax.errors import run_main
from bbt_jax.fitness import split_metrics
from bbt_jax.harness import read_splits, score_draws
from bbt_jax.io import shared_path
from bbt_jax.models.registry import load
from bbt_jax.provenance import cpu_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--demos", type=int, default=1)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    model = load("smollm2", "")
    lines = [f"# --demo-draws on dev: {a.task}, --demos {a.demos}, {a.draws} draws (z = 0, SmolLM2-135M-Instruct)", "",
             f"Command: `python experiments/demo_draws_dev.py --task {a.task} --demos {a.demos} --draws {a.draws} "
             f"--out {a.out}`; CPU: {cpu_model()}.", "",
             "| seed | dev of draw 0 | dev of the rule's draw (lowest train loss) | kept draw | best dev of any draw | "
             "mean dev of draws | Spearman(train loss, -dev) |", "|---|---|---|---|---|---|---|"]
    kept_dev, first_dev = [], []
    for seed in [int(s) for s in a.seeds.split(",")]:
        t0 = time.time()
        cfg = C.override(C.demo(), task=a.task, seed=seed, data_dir=str(shared_path("data")), demos=a.demos,
                         demo_draws=a.draws)
        task = tasks_lib.get_task(a.task)
        splits = read_splits(cfg, task)

        def dev_acc(h):  # the draw's template at z = 0 on the dev rows
            batches = tasks_lib.make_eval_batches(h.encoded["dev"], h.model.vocab.pad_id, batch_rows=32)
            prompt = h.projection(h.start)[None]
            return 100 * split_metrics(h.backbone, h.frozen, batches, prompt, h.task.metric)[0]["acc"]

        _, losses, devs = score_draws(cfg, task, {"train": splits["train"], "dev": splits["dev"]}, model,
                                      also=dev_acc)
        losses, devs = np.asarray(losses), np.asarray(devs)
        k = int(np.argmin(losses))
        rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
        rho = float(np.corrcoef(rank(losses), rank(-devs))[0, 1])
        kept_dev.append(devs[k]), first_dev.append(devs[0])
        lines.append(f"| {seed} | {devs[0]:.1f} | {devs[k]:.1f} | {k} | {devs.max():.1f} | {devs.mean():.1f} | "
                     f"{rho:.2f} |")
        print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)
    lines.append(f"| mean | {np.mean(first_dev):.1f} | {np.mean(kept_dev):.1f} | | | | |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(lines[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
