"""Does the --demo-draws rule (keep the demonstrations whose template has the lowest training loss at z = 0)
pick demonstrations that score better on DEV, and does --demo-none (weigh the template without
demonstrations by the same loss) keep the template where demonstrations hurt? Dev only: no test row is read.

Usage (from the repo root, after `make setup`):
    python experiments/demo_draws_dev.py --task sst2 --draws 20 --out experiments/search_quality/demo_draws_dev.md
    python experiments/demo_draws_dev.py --task mrpc,snli,rte,yelpp,agnews --draws 5 --max-length 512 \
        --none --kept-only --out experiments/search_quality/demo_none_dev.md
For each task and seed's 16-shot split: the M draws of `--demos K` (bbt_jax/demos.py, draw 0 = the split seed's,
what `--demos` alone takes), each one's training loss at z = 0 on the rows it leaves (the rule's score, as
harness.score_draws computes it for choose_demos) and its dev metric at z = 0 (the template with those
demonstrations; F1 for mrpc). `--none`: also the template without demonstrations on every training row
(harness.score_without_demos, --demo-none's candidate) and what --demo-none keeps. `--kept-only`: the dev
metric of the rule's draw only (one dev pass instead of M: the long tasks' scan in the time there is).
"""

import argparse
import time
from pathlib import Path

import numpy as np

from bbt_jax import config as C
from bbt_jax import tasks as tasks_lib
from bbt_jax.errors import run_main
from bbt_jax.fitness import split_metrics
from bbt_jax.harness import assemble, kept_draw, read_splits, score_draws, score_without_demos
from bbt_jax.io import shared_path
from bbt_jax.models.registry import load
from bbt_jax.provenance import cpu_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2", help="one task or several, comma-separated")
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--demos", type=int, default=1)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=C.demo().prompt.max_length)
    ap.add_argument("--none", action="store_true", help="also the template without demonstrations (--demo-none)")
    ap.add_argument("--kept-only", action="store_true", help="dev of the rule's draw only (not of every draw)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    names = a.task.split(",")
    for name in names:
        tasks_lib.get_task(name)  # a clear error before the model loads
    model = load("smollm2", "")
    command = (f"python experiments/demo_draws_dev.py --task {a.task} --demos {a.demos} --draws {a.draws} "
               f"--max-length {a.max_length}{' --none' if a.none else ''}{' --kept-only' if a.kept_only else ''} "
               f"--out {a.out}")
    lines = [f"# --demo-draws on dev: {a.task}, --demos {a.demos}, {a.draws} draws (z = 0, SmolLM2-135M-Instruct)", "",
             f"Command: `{command}`; CPU: {cpu_model()}.", ""]
    head = ("| task | seed | dev of draw 0 | dev of the rule's draw (lowest train loss) | kept draw | best dev of any "
            "draw | mean dev of draws | Spearman(train loss, -dev) |")
    if a.none:
        head += " train loss: rule's draw / no demos | dev of no demos | --demo-none keeps | its dev |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    summary = []
    for name in names:
        kept_dev, first_dev, none_dev, chosen_dev = [], [], [], []
        for seed in [int(s) for s in a.seeds.split(",")]:
            t0 = time.time()
            cfg = C.override(C.demo(), task=name, seed=seed, data_dir=str(shared_path("data")), demos=a.demos,
                             demo_draws=a.draws, max_length=a.max_length)
            task = tasks_lib.get_task(name)
            splits = {k: v for k, v in read_splits(cfg, task).items() if k in ("train", "dev")}

            def dev_metric(h):  # the template (with or without demonstrations) at z = 0 on the dev rows
                batches = tasks_lib.make_eval_batches(h.encoded["dev"], h.model.vocab.pad_id, batch_rows=32)
                prompt = h.projection(h.start)[None]
                return 100 * split_metrics(h.backbone, h.frozen, batches, prompt, h.task.metric)[0][h.task.metric]

            if a.kept_only:  # dev of the rule's draw only: rebuilt after the scoring (one dev pass, not M)
                draws, losses, _ = score_draws(cfg, task, {"train": splits["train"]}, model)
                k = kept_draw(losses)
                kept = dev_metric(assemble(cfg, draws[k][0], {"train": draws[k][1], "dev": splits["dev"]}, model))
                kept_dev.append(kept)
                row = f"| {name} | {seed} | - | {kept:.1f} | {k} | - | - | - |"
            else:
                _, losses, devs = score_draws(cfg, task, splits, model, also=dev_metric)
                devs = np.asarray(devs)
                k = kept_draw(losses)
                rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
                rho = float(np.corrcoef(rank(losses), rank(-devs))[0, 1])
                kept_dev.append(devs[k]), first_dev.append(devs[0])
                row = (f"| {name} | {seed} | {devs[0]:.1f} | {devs[k]:.1f} | {k} | {devs.max():.1f} | "
                       f"{devs.mean():.1f} | {rho:.2f} |")
            if a.none:
                _, loss, dev = score_without_demos(cfg, task, splits, model, also=dev_metric)
                keep = kept_draw(losses, loss) == -1
                none_dev.append(dev), chosen_dev.append(dev if keep else kept_dev[-1])
                row += (f" {losses[k]:.4f} / {loss:.4f} | {dev:.1f} | {'no demos' if keep else f'draw {k}'} | "
                        f"{chosen_dev[-1]:.1f} |")
            lines.append(row)
            print(row, f"({time.time() - t0:.0f} s)", flush=True)
        first = f"{np.mean(first_dev):.1f}" if first_dev else "-"
        mean = f"| {name} | mean | {first} | {np.mean(kept_dev):.1f} | | | | |"
        if a.none:
            mean += f" | {np.mean(none_dev):.1f} | | {np.mean(chosen_dev):.1f} |"
        lines.append(mean), summary.append(mean)
        Path(a.out).write_text("\n".join(lines) + "\n")  # after every task: a kill keeps what is done
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
