"""Held-out dev (issue 16, items 4-5): variants and selection rules compared on rows no run selected on.

    python experiments/held_out_dev.py experiments/search_quality/runs --task sst2 \
        --out experiments/search_quality/held_out_dev

A run keeps the candidate that scored best on its seed's dev rows (32 for sst2), so that candidate's dev
metric is optimistic, the more so the more often dev was read (the max of 21 noisy scores against 5): the
rule that chose the recommended preset until session 16 ("highest mean dev metric of the selected candidates")
favours the variants that read dev most. Here each seed's kept prompt and the prompt it started from (z = 0)
are scored on rows that seed's run never saw: the other seeds' 16-shot rows of the same task (their train AND dev files,
drawn from the task's training set like its own), less duplicates and any row of its own train or dev file.
No test row is read. With 5 seeds that is about 250 held-out rows per seed on sst2 (32 dev rows in the run).

A --demos run keeps its own demonstrations (its seed's training rows, its kept draw) before every held-out
row; a --words-per-class run its card's verbalizer ids. Check: every run is also scored on its own dev rows
the same way, which must give the dev metric its results.json recorded for the kept candidate
(`dev.best_perf`) and for z = 0 (`dev_z0.perf`) where the dev metric made the choice, one evaluation at a time
(experiments/start_margin.best_on_dev): the table counts the runs that reproduce both.

The rule that picks the recommended default from this table was declared here before any held-out score was
computed (session 17): the (variant, start margin) pair with the highest mean held-out accuracy of its kept
prompts over the variant's seeds, among the variants run on every seed; margins "as run" and 0, 1, 2 dev rows
(experiments/start_margin.kept: the run's choice or z = 0; margins only where a run can tell them: at or above
its own --start-margin, start_margin.knows_margin); ties go to "as run", then to the smaller margin.
`--preset smollm2-sst2` is then set to that pair's settings.

Writes <out>/<task>.json (per run: seed, held-out rows, kept/start held-out accuracy, own-dev rescoring) and
<task>.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `experiments.*` when run as a script

from bbt_jax import artifact  # noqa: E402
from bbt_jax import config as C  # noqa: E402
from bbt_jax import data as data_lib  # noqa: E402
from bbt_jax import tasks as tasks_lib  # noqa: E402
from bbt_jax.errors import UserError, run_main  # noqa: E402
from bbt_jax.harness import assemble, read_splits  # noqa: E402
from bbt_jax.io import read_json, shared_path, write_bytes_atomic, write_json_atomic  # noqa: E402
from bbt_jax.models.registry import load  # noqa: E402
from bbt_jax.provenance import cpu_model  # noqa: E402
from bbt_jax.report import format_mean_std  # noqa: E402
from experiments.off_domain import finished_cells, with_source_demos  # noqa: E402
from experiments.start_margin import best_on_dev, kept, knows_margin, own_rows, plain_dev_choice  # noqa: E402

MARGINS = (None, 0.0, 1.0, 2.0)  # dev rows; None: as run


def held_out_rows(cfg: C.Config, task: tasks_lib.Task, seeds) -> list[data_lib.Example]:
    """The other `seeds`' k-shot train and dev rows of the run's task, each once, less any row of the run's own
    train or dev file (in file order: seed by seed, train before dev)."""
    r = cfg.run
    own = read_splits(C.override(cfg, test_rows=1), task)
    seen = set(own["train"]) | set(own["dev"])
    rows = []
    for seed in seeds:
        if seed == r.seed_of("split"):
            continue
        paths = data_lib.split_paths(Path(r.data_dir), task.name, r.k_shot, seed, split=r.split)
        for split in ("train", "dev"):
            for row in data_lib.read_jsonl(paths[split], task.num_labels, pair=task.pair):
                if row not in seen:
                    seen.add(row)
                    rows.append(row)
    return rows


def run_setting(saved: artifact.SavedPrompt, res: dict, data_dir: str) -> tuple[C.Config, tasks_lib.Task]:
    """The run's config and task as it scored its rows: its template (with its own demonstrations), cue and
    label words."""
    cfg = artifact.config_for(saved, data_dir=data_dir)
    if cfg.prompt.demos:
        cfg = with_source_demos(cfg, cfg.run.task, res)
    p = cfg.prompt
    return cfg, tasks_lib.with_template(tasks_lib.get_task(cfg.run.task), template=p.template, cue=p.cue,
                                        label_words=p.label_words)


def score(cfg: C.Config, task: tasks_lib.Task, rows: list, saved: artifact.SavedPrompt, model) -> tuple[float, float]:
    """(metric of the start p0, metric of the kept prompt) on `rows`, in one pass (the run's verbalizer ids)."""
    h = assemble(cfg, task, {"test": rows}, model)
    ids_CxW = np.asarray(saved.card["verbalizer"]["ids"], np.int32)
    if not np.array_equal(ids_CxW, h.verbalizer_C):  # --words-per-class: the words the run chose on its train rows
        h = h.with_verbalizer(ids_CxW)
    p0 = jnp.asarray(saved.p0_NxD, jnp.float32)
    prompts = jax.tree.map(lambda a, b: jnp.stack([jnp.broadcast_to(a, b.shape), b]),
                           p0 if saved.layers_YxNxD is None else {"input": p0, "layers": jnp.zeros_like(
                               saved.prompt["layers"])}, saved.prompt)
    start, tuned = h.test_metrics(prompts)
    return start[task.metric], tuned[task.metric]


def margin_rows(res: dict, margin_of: int) -> list[tuple[float | None, float | None]]:
    """[(margin as labelled, the run's own dev rows it stands for)] for MARGINS (start_margin.own_rows)."""
    return [(m, own_rows(res, m, margin_of)) for m in MARGINS]


def margin_name(m) -> str:
    return "as run" if m is None else f"margin {m:g}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="+", help="sweep folders (their cells' labels name the variants)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--seeds", default="13,21,42,87,100", help="the k-shot seeds whose rows are pooled")
    p.add_argument("--only", default="", help="comma-separated variant labels: score only these and merge them "
                   "into <out>'s table (the variants already there stay)")
    p.add_argument("--margin-of", type=int, default=0, metavar="ROWS",
                   help="count the margins in rows of a ROWS-row dev set, i.e. as the fraction m / ROWS of each "
                   "run's own dev rows (what --start-margin sets; 32: 1 row of sst2's 32 = 2 of agnews' 64); "
                   "default: in the run's own dev rows")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.margin_of < 0:
        raise UserError(f"--margin-of {args.margin_of}: a number of dev rows (0: the run's own)")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise UserError(f"--seeds {args.seeds}: comma-separated integers") from None
    only = {x for x in args.only.split(",") if x}
    cells, missing = finished_cells(args.root, args.task, only)
    if missing:
        raise UserError(f"--only {args.only}: no finished {args.task} cells labelled {', '.join(sorted(missing))} "
                        f"in {' '.join(args.root)}")
    if not cells:
        raise UserError(f"{' '.join(args.root)}: no finished {args.task} cells with a prompt"
                        + (f" labelled {args.only}" if only else ""))
    data_dir, models, out = None, {}, {"task": args.task, "seeds": seeds, "cpu": cpu_model(), "variants": {}}
    # one seed's rows after another, variants of one prompt layout together: the model's caches (8 GB at most)
    # prepare each seed's rows once per layout and score each start prompt once
    order = sorted(((n, folder, res) for n, runs in cells.items() for folder, res in runs),
                   key=lambda x: (_layout_key(x[2]), x[2]["config"]["run"]["seed"], x[0]))
    for name, folder, res in order:
        saved = artifact.load_prompt(folder)
        if data_dir is None:
            d = saved.card["config"]["run"]["data_dir"]
            data_dir = d if Path(d).is_dir() else str(shared_path("data"))
        cfg, task = run_setting(saved, res, data_dir)
        key = (cfg.model.model, cfg.model.tokenizer)
        if key not in models:
            models[key] = load(*key, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"))
        rows = held_out_rows(cfg, task, seeds)
        start, tuned = score(cfg, task, rows, saved, models[key])
        own_start, own_tuned = score(cfg, task, read_splits(C.override(cfg, test_rows=1), task)["dev"], saved,
                                     models[key])
        plain, checkable = plain_dev_choice(res), best_on_dev(res)
        check = checkable and (abs(own_tuned - res["dev"]["best_perf"]) < 1e-6
                               and abs(own_start - res["dev_z0"]["perf"]) < 1e-6)
        out["variants"].setdefault(name, []).append({
            "seed": cfg.run.seed, "rows": len(rows), "start": start, "kept": tuned,
            "own_dev": {"start": own_start, "kept": own_tuned}, "reproduces": check if checkable else None,
            "plain": plain,
            "margins": {margin_name(m): bool(kept(res, r)) for m, r in margin_rows(res, args.margin_of)
                        if knows_margin(res, r)},
            "test": res["test"][task.metric], "start_test": (res.get("zero_shot_test") or {}).get(task.metric)})
        print(f"{name} seed {cfg.run.seed}: held-out ({len(rows)} rows) start {100 * start:.1f} kept "
              f"{100 * tuned:.1f} | own dev start {100 * own_start:.1f} kept {100 * own_tuned:.1f}"
              f"{'' if not checkable else ' reproduces' if check else ' DIFFERS from results.json'}", flush=True)
    for runs in out["variants"].values():
        runs.sort(key=lambda r: r["seed"])
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    if only and (folder / f"{args.task}.json").is_file():  # merge: the variants scored before stay
        before = read_json(folder / f"{args.task}.json", str(folder / f"{args.task}.json"), "held-out json")
        out["variants"] = {**{k: v for k, v in before["variants"].items() if k not in out["variants"]},
                           **out["variants"]}
        out["added"] = before.get("added", []) + [{"only": sorted(only), "cpu": out["cpu"]}]
        out["cpu"] = before["cpu"]
    write_json_atomic(folder / f"{args.task}.json", out)
    text = table(out, args)
    write_bytes_atomic(folder / f"{args.task}.md", text.encode())
    print(text)
    return 0


def _layout_key(res: dict) -> tuple:
    p = res.get("config", {}).get("prompt", {})
    return (str(p.get("template")), str(p.get("cue")), p.get("demos", 0), p.get("words_per_class", 1))


def margin_scores(runs: list[dict], m) -> list[float] | None:
    """Held-out accuracy (%) of what each run keeps under margin m (None: as run); None if a run cannot tell
    that margin (experiments/start_margin.knows_margin)."""
    if m is not None and not all(margin_name(m) in r["margins"] for r in runs):
        return None
    return [100 * (r["kept"] if m is None or r["margins"][margin_name(m)] else r["start"]) for r in runs]


def table(out: dict, args) -> str:
    variants = out["variants"]
    full = max(len(v) for v in variants.values())
    lines = [f"# Held-out dev on {out['task']}: kept prompts scored on rows no run selected on", "",
             f"Command: `python experiments/held_out_dev.py {' '.join(args.root)} --task {out['task']}"
             + (f" --margin-of {args.margin_of}" if args.margin_of else "") + f" --out {args.out}`; CPU: {out['cpu']}."
             + (f" Margins in rows of a {args.margin_of}-row dev set: m / {args.margin_of} of each run's own dev rows."
                if args.margin_of else "")] + [
                 f"Then `--only {','.join(a['only'])}` (CPU: {a['cpu']}): those variants scored again and merged here."
                 for a in out.get("added", [])] + ["",
             "Per seed, the other seeds' 16-shot train and dev rows not in its own (held-out rows, mean per seed "
             "below); the task's metric % (accuracy; mrpc F1), mean ± std over seeds; below: seeds whose kept "
             "prompt scores under their start there. `own dev reproduced`: runs whose rescoring on their own dev "
             "rows gives results.json's dev figures for the kept prompt and z = 0 (runs whose dev metric chose, one "
             "evaluation at a time).", "",
             "| variant | seeds | held-out rows | start | " + " | ".join(
                 f"{margin_name(m)} (below)" for m in MARGINS) + " | own dev reproduced | test as run |",
             "|" + "---|" * (7 + len(MARGINS))]
    best = None
    for name, runs in sorted(variants.items()):
        starts = [100 * r["start"] for r in runs]
        cols = []
        for m in MARGINS:
            s = margin_scores(runs, m)
            if s is None:
                cols.append("—")
                continue
            below = sum(a < b - 1e-9 for a, b in zip(s, starts, strict=True))
            cols.append(f"{format_mean_std(s)} ({below})")
            mean = statistics.mean(s)
            if len(runs) == full and (best is None or mean > best[2] + 1e-9):
                best = (name, m, mean)
        checked = [r["reproduces"] for r in runs if r["reproduces"] is not None]
        lines.append(f"| {name} | {len(runs)} | {statistics.mean(r['rows'] for r in runs):.0f} | "
                     f"{format_mean_std(starts)} | " + " | ".join(cols) + f" | {sum(checked)} of {len(checked)} | "
                     f"{format_mean_std([100 * r['test'] for r in runs])} |")
    lines += ["", f"The declared rule's choice (highest mean held-out accuracy; ties: as run, then the smaller "
              f"margin): **{best[0]}, {margin_name(best[1])}** ({best[2]:.2f})."]
    means = {k: [statistics.mean(r[f] if f != "own_dev" else r[f]["kept"] for r in runs) for f in
                 ("kept", "own_dev", "test")] for k, runs in variants.items() if len(runs) == full}
    if len(means) > 2:  # read after the choice, for the reading only
        held, own, test = zip(*means.values(), strict=True)
        lines += ["", f"Read after the choice: over the {len(means)} variants, the rank correlation (Spearman) of "
                  f"the mean test score as run with the mean held-out score is {spearmanr(held, test)[0]:.2f}, with "
                  f"the mean score of the kept prompts on their own dev rows (what they were selected on) "
                  f"{spearmanr(own, test)[0]:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(run_main(main))
