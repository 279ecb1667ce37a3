"""Off-domain check of issue 16: prompts tuned on one task scored on another task's test rows.

    python experiments/off_domain.py experiments/table7/runs --source sst2 --target yelpp --test-rows 1000 \
        --out experiments/table7/off_domain

Every finished cell of the table on --source (all methods, all seeds) is rebuilt with --task TARGET (the
target's template and label words around the tuned prompt, with the source run's own --cue if it set one;
the cue placement must take the same number of prompt vectors) and scored on the target's first --test-rows
test rows, next to the prompt it started from (p0, per method: a variant may start from another cue). One
process; one batched pass per method (its seeds stacked). Writes <out>/<source>-to-<target>.json and .md.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from bbt_jax import artifact
from bbt_jax import config as C
from bbt_jax.errors import run_main
from bbt_jax.harness import build
from bbt_jax.io import shared_path, write_json_atomic
from bbt_jax.models.registry import load
from bbt_jax.provenance import cpu_model
from bbt_jax.report import METHOD_ORDER, format_mean_std, load_results, method_label, test_metric


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--source", default="sst2")
    p.add_argument("--target", default="yelpp")
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cells = collections.defaultdict(list)
    for res_path in sorted(Path(args.root).rglob("results.json")):
        res = load_results(res_path)
        if res.get("task") == args.source and (res_path.parent / artifact.CARD_FILE).is_file():
            cells[res.get("label") or method_label(res)].append((res_path.parent, res))
    if not cells:
        print(f"{args.root}: no finished {args.source} cells with a prompt", file=sys.stderr)
        return 1
    model = load("smollm2", "")
    out: dict = {"source": args.source, "target": args.target, "test_rows": args.test_rows, "cpu": cpu_model(),
                 "methods": {}}
    for method in sorted(cells, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
        runs = sorted(cells[method], key=lambda x: x[1]["config"]["run"]["seed"])
        saved = [artifact.load_prompt(folder) for folder, _ in runs]
        cfg = artifact.config_for(saved[0], task=args.target, test_rows=args.test_rows)
        if cfg.prompt.demos:  # the target's template would hold other demonstrations per seed: not one prompt
            print(f"{method}: skipped (--demos {cfg.prompt.demos}: its demonstrations are source rows)", flush=True)
            continue
        if not Path(cfg.run.data_dir).is_dir():
            cfg = C.override(cfg, data_dir=str(shared_path("data")))
        h = build(cfg, model=model, log=lambda s: None)
        metric = h.task.metric
        prompts = jax.tree.map(lambda *x: jnp.stack(x), *[s.prompt for s in saved])
        # the hand-written cue this method's cells started from, on the target rows
        start = 100 * h.test_metrics(jnp.asarray(h.layout.p0, jnp.float32)[None])[0][metric]
        scores = [100 * m[metric] for m in h.test_metrics(prompts)]
        source = [100 * r["test"][test_metric(r)] for _, r in runs]
        out["methods"][method] = {"seeds": [r["config"]["run"]["seed"] for _, r in runs], "target": scores,
                                  "source": source, "start": start}
        print(f"{method}: {args.target} {format_mean_std(scores)} (start {start:.1f}) | {args.source} "
              f"{format_mean_std(source)} | seeds {out['methods'][method]['seeds']}", flush=True)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{args.source}-to-{args.target}"
    write_json_atomic(folder / f"{name}.json", out)
    lines = [f"# Prompts tuned on {args.source}, scored on {args.target} (SmolLM2-135M-Instruct)", "",
             f"Command: `python experiments/off_domain.py {args.root} --source {args.source} --target {args.target} "
             f"--test-rows {args.test_rows} --out {args.out}`; CPU: {out['cpu']}.", "",
             f"The table's {args.source} cells (5 seeds per method), each tuned prompt placed in {args.target}'s "
             f"template (same cue slot) and scored on {args.target}'s first {args.test_rows} test rows (%).", "",
             f"| method | on {args.source} (test) | on {args.target} | its start prompt on {args.target} | seeds below "
             "their start |", "|---|---|---|---|---|"]
    for method, m in out["methods"].items():
        below = sum(s < m["start"] for s in m["target"])
        lines.append(f"| {method} | {format_mean_std(m['source'])} | {format_mean_std(m['target'])} | "
                     f"{m['start']:.1f} | {below} of {len(m['target'])} |")
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
