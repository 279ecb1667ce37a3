"""Off-domain check of issue 16: prompts tuned on one task scored on another task's test rows.

    python experiments/off_domain.py experiments/table7/runs --source sst2 --target yelpp --test-rows 1000 \
        --out experiments/table7/off_domain

Every finished cell of the table on --source (all methods, all seeds) is rebuilt with --task TARGET (the
target's template and label words around the tuned prompt, with the source run's own --cue if it set one;
the cue placement must take the same number of prompt vectors) and scored on the target's first --test-rows
test rows, next to the prompt it started from (p0, per method: a variant may start from another cue). One
process; one batched pass per method (its seeds stacked). A --demos run (In2) keeps its own SOURCE
demonstrations (its seed's training rows, its kept draw) before every target row, so both it and its start
are scored per seed, in the target's template when it is the source's (sst2 and yelpp share theirs).
Writes <out>/<source>-to-<target>.json and .md.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from bbt_jax import artifact
from bbt_jax import config as C
from bbt_jax import demos as demos_lib
from bbt_jax import tasks as tasks_lib
from bbt_jax.errors import UserError, run_main
from bbt_jax.harness import build, read_splits
from bbt_jax.io import shared_path, write_json_atomic
from bbt_jax.models.registry import load
from bbt_jax.provenance import cpu_model
from bbt_jax.report import METHOD_ORDER, find_results, format_mean_std, load_results, method_label, test_metric


def with_source_demos(cfg: C.Config, source: str, res: dict) -> C.Config:
    """A --demos run's config on the target task: the target's rows after the SOURCE run's demonstrations
    (its training rows, its kept draw), in the target's template; --demos off (nothing drawn from the target)."""
    src = C.override(cfg, task=source)
    task = tasks_lib.with_template(tasks_lib.get_task(source), template=cfg.prompt.template, cue=cfg.prompt.cue,
                                   label_words=cfg.prompt.label_words)
    draw = (res.get("effective") or {}).get("demo_draw") or 0
    shown, _ = demos_lib.with_demos(task, read_splits(src, task)["train"], cfg.prompt.demos,
                                    src.run.seed_of("split"), draw=draw)
    if not res.get("template", "").startswith(shown.decoder_input.split("{text}")[0]):
        raise UserError(f"seed {cfg.run.seed}: the demonstrations rebuilt from its training rows are not the ones "
                        "its results.json records")
    target = tasks_lib.get_task(cfg.run.task)
    if tasks_lib.with_template(target, template=cfg.prompt.template).decoder_input != task.decoder_input:
        raise UserError(f"--target {cfg.run.task}: its template differs from {source}'s; the source's "
                        "demonstrations would be written in another format")
    return C.override(cfg, template=shown.decoder_input, demos=0, demo_draws=1)


def finished_cells(roots, task: str, only) -> tuple[dict, list[str]]:
    """({label: [(folder, results)]} of the finished `task` cells under `roots` with a saved prompt, only the
    labels in `only` if any are given; the labels of `only` not found)."""
    cells = collections.defaultdict(list)
    for path in find_results(roots):
        res = load_results(path)
        if res.get("task") == task and (path.parent / artifact.CARD_FILE).is_file():
            cells[method_label(res)].append((path.parent, res))
    missing = [x for x in only if x not in cells]
    return ({k: v for k, v in cells.items() if k in only} if only else dict(cells)), missing


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--source", default="sst2")
    p.add_argument("--target", default="yelpp")
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument("--out", required=True)
    p.add_argument("--only", default="", help="comma-separated variant labels: score only these and merge them "
                   "into <out>'s table (the other methods already there stay)")
    args = p.parse_args()
    only = [x for x in args.only.split(",") if x]
    cells, missing = finished_cells([args.root], args.source, only)
    if missing:
        print(f"--only {args.only}: no finished {args.source} cells labelled {', '.join(missing)} in {args.root}",
              file=sys.stderr)
        return 1
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
        if not Path(cfg.run.data_dir).is_dir():
            cfg = C.override(cfg, data_dir=str(shared_path("data")))
        if cfg.prompt.demos:  # each seed's own source demonstrations in the target's template: a build per seed
            starts, scores = [], []
            for (_, res), s in zip(runs, saved, strict=True):
                own = artifact.config_for(s, task=args.target, test_rows=args.test_rows, data_dir=cfg.run.data_dir)
                h = build(with_source_demos(own, args.source, res), model=model, log=lambda s: None)
                metric = h.task.metric
                both = h.test_metrics(jax.tree.map(lambda *x: jnp.stack(x), jnp.asarray(h.layout.p0, jnp.float32),
                                                   jnp.asarray(s.prompt, jnp.float32)))
                starts.append(100 * both[0][metric])
                scores.append(100 * both[1][metric])
        else:
            h = build(cfg, model=model, log=lambda s: None)
            metric = h.task.metric
            prompts = jax.tree.map(lambda *x: jnp.stack(x), *[s.prompt for s in saved])
            # the hand-written cue this method's cells started from, on the target rows
            starts = [100 * h.test_metrics(jnp.asarray(h.layout.p0, jnp.float32)[None])[0][metric]] * len(saved)
            scores = [100 * m[metric] for m in h.test_metrics(prompts)]
        source = [100 * r["test"][test_metric(r)] for _, r in runs]
        out["methods"][method] = {"seeds": [r["config"]["run"]["seed"] for _, r in runs], "target": scores,
                                  "source": source, "starts": starts,
                                  "start": sum(starts) / len(starts)}
        print(f"{method}: {args.target} {format_mean_std(scores)} (start {format_mean_std(starts)}) | {args.source} "
              f"{format_mean_std(source)} | seeds {out['methods'][method]['seeds']}", flush=True)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{args.source}-to-{args.target}"
    if only and (folder / f"{name}.json").is_file():  # merge: the methods scored before stay
        before = json.loads((folder / f"{name}.json").read_text())
        out["methods"] = {**before["methods"], **out["methods"]}
        out["added"] = before.get("added", []) + [{"only": only, "cpu": out["cpu"]}]
    write_json_atomic(folder / f"{name}.json", out)
    lines = [f"# Prompts tuned on {args.source}, scored on {args.target} (SmolLM2-135M-Instruct)", "",
             f"Command: `python experiments/off_domain.py {args.root} --source {args.source} --target {args.target} "
             f"--test-rows {args.test_rows} --out {args.out}`; CPU: {out['cpu']}."]
    lines += [f"Then `--only {','.join(a['only'])}` (CPU: {a['cpu']}): those methods scored again and merged here."
              for a in out.get("added", [])]
    lines += ["",
             f"The table's {args.source} cells (5 seeds per method), each tuned prompt placed in {args.target}'s "
             f"template (same cue slot) and scored on {args.target}'s first {args.test_rows} test rows (%). A --demos "
             f"method keeps each seed's own {args.source} demonstrations before every {args.target} row, so its start "
             "differs per seed (mean ± std; seeds below: each against its own start).", "",
             f"| method | on {args.source} (test) | on {args.target} | its start prompt on {args.target} | seeds below "
             "their start |", "|---|---|---|---|---|"]
    for method, m in sorted(out["methods"].items()):
        starts = m.get("starts") or [m["start"]] * len(m["target"])  # before session 15: one start per method
        below = sum(s < b for s, b in zip(m["target"], starts, strict=True))
        start = f"{starts[0]:.1f}" if len(set(starts)) == 1 else format_mean_std(starts)  # --demos: per seed
        lines.append(f"| {method} | {format_mean_std(m['source'])} | {format_mean_std(m['target'])} | {start} | "
                     f"{below} of {len(m['target'])} |")
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
