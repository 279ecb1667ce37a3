"""Does a class-prior correction estimated on the TRAINING rows help? (issue 16, a measurement only)

For each run folder given (a sweep's cells of one task and variant), the saved prompt is scored on the
train rows and the test rows; the test decision is then made raw (argmax of the verbalizer logits, as every
table reports) and calibrated: the class log-probabilities minus the log of their mean probability over the
run's own training rows (the 16-shot train split is class-balanced, so a prompt that favours one class shows
it there; dev and test labels are never read). The z = 0 start prompt of each cell is scored the same way.

  python experiments/calibration_probe.py experiments/search_quality/runs/task=sst2,variant=cue-nl,seed=*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax import artifact, harness
from bbt_jax.errors import run_main
from bbt_jax.fitness import make_fitness, population_logits
from bbt_jax.objective import accuracy


def split_logits(h, batches, prompts_P):
    """logits_PxBxC and labels_B, weights_B over the batches (one prepared input cache per batch)."""
    out, labels, weights = [], [], []
    for b in batches:
        fit = make_fitness(h.backbone, h.frozen, (b,), metric=h.task.metric)
        out.append(np.asarray(population_logits(fit, prompts_P)))
        labels.append(np.asarray(b.labels_B))
        weights.append(np.asarray(b.weight_B))
    return np.concatenate(out, axis=1), np.concatenate(labels), np.concatenate(weights)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows, model = [], None
    for run in args.runs:
        saved = artifact.load_prompt(Path(run) / "prompt.json")
        cfg = artifact.config_for(saved)
        h = harness.build(cfg, model=model, log=lambda s: None)
        model = h.model
        start = h.projection(h.start)  # z = 0 (ES) or x0 (gradient methods: the identity)
        prompts = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a), jnp.asarray(b)]), start, saved.prompt)
        tr, tr_y, tr_w = split_logits(h, h.buckets("train"), prompts)
        te, te_y, te_w = split_logits(h, h.test_batches, prompts)
        row = {"run": run}
        for name, lt, le in (("start", tr[0], te[0]), ("tuned", tr[1], te[1])):
            logp_tr = jax.nn.log_softmax(lt, -1)[tr_w > 0]
            prior_C = np.log(np.mean(np.exp(logp_tr), 0))
            logp_te = np.asarray(jax.nn.log_softmax(le, -1))
            row[name] = {"test": float(accuracy(logp_te, te_y, te_w)),
                         "test_cal": float(accuracy(logp_te - prior_C, te_y, te_w)),
                         "train_prior": np.exp(prior_C).round(3).tolist()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for name in ("start", "tuned"):
        for k in ("test", "test_cal"):
            v = np.array([r[name][k] for r in rows]) * 100
            print(f"{name:6s} {k:9s} {v.mean():.1f} +- {v.std(ddof=1) if len(v) > 1 else 0:.1f}  {v.round(1).tolist()}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
