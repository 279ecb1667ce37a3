"""The waywardness check (Khashabi et al., NAACL 2022) on the SST-2 prompts of the 7-task table.

Usage (after the table's sweep, from the repo root):
    python experiments/waywardness.py experiments/table7/runs --task sst2 --out experiments/table7/waywardness

For every run folder of the task: `reading.inspect(..., score=True)` (bbt_jax/reading.py): the tuned soft
prompt's test metric, the test metric of its hard reading (each position replaced by the embedding of its
nearest vocabulary token by cosine; deep prompts keep their per-layer prompts), how many positions read
as the token they started from (the cue's own token, p0), the prompt's distance from p0 against the
embeddings' typical norm, and the start prompt's test metric (zero-shot). One process loads SmolLM2 once;
the test rows' input cache is shared by every prompt. Writes <out>/waywardness.json (every reading) and
<out>/README.md (a row per run, a row per method).
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from bbt_jax import artifact, reading
from bbt_jax.errors import run_main
from bbt_jax.harness import build
from bbt_jax.io import shared_path, write_json_atomic
from bbt_jax.models.registry import load
from bbt_jax.report import format_mean_std, load_results, method_label


def _runs(root: Path, task: str) -> list[Path]:
    out = []
    for res in sorted(root.rglob("results.json")):
        results = load_results(res)
        if results["task"] == task and (res.parent / "prompt.json").is_file():
            out.append(res.parent)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a sweep's folder (every run folder below it with results.json and prompt.json)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = _runs(Path(args.root), args.task)
    if not runs:
        print(f"{args.root}: no finished {args.task} runs with a prompt", file=sys.stderr)
        return 1
    model, rows = None, []
    for folder in runs:
        saved = artifact.load_prompt(folder)
        cfg = artifact.config_for(saved)
        if not Path(cfg.run.data_dir).is_dir():
            from bbt_jax.config import override
            cfg = override(cfg, data_dir=str(shared_path("data")))
        model = model or load(cfg.model.model, cfg.model.tokenizer)
        h = build(cfg, model=model, log=lambda s: None)
        got = reading.inspect(h, saved, k=args.k, score=True)
        p0_ids = reading.hard_prompt_ids(np.asarray(h.backbone.word_embeddings(h.model.params)), saved.p0_NxD)
        hard_ids = np.asarray(got["score"]["hard_ids"])
        results = load_results(folder / "results.json")
        metric = "f1" if args.task == "mrpc" else "acc"
        row = {"run": folder.name, "method": results.get("label") or method_label(results),
               "seed": results["config"]["run"]["seed"],
               "soft": 100 * got["score"]["soft"][metric], "hard": 100 * got["score"]["hard"][metric],
               "zero_shot": 100 * results["zero_shot_test"][metric] if results.get("zero_shot_test") else None,
               "same_as_p0": int((hard_ids == p0_ids).sum()), "positions": len(hard_ids),
               "hard_tokens": got["score"]["hard_tokens"],
               "p0_tokens": [h.model.vocab.tokenizer.decode([int(i)]) for i in p0_ids],
               "distance_from_p0": [x["distance_from_p0"] for x in got["positions"]],
               "norm": [x["norm"] for x in got["positions"]], "word_norm_median": got["word_norms"]["median"],
               "reading": got}
        rows.append(row)
        print(f"{row['run']}: soft {row['soft']:.1f} hard {row['hard']:.1f} zero-shot {row['zero_shot']} | "
              f"{row['same_as_p0']}/{row['positions']} positions read as p0's token: {row['hard_tokens']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "waywardness.json", rows)
    (out / "README.md").write_text(table(rows, args) + "\n")
    print(table(rows, args))
    return 0


def table(rows: list[dict], args) -> str:
    lines = [f"# Waywardness: {args.task} prompts of {args.root} read as their nearest tokens", "",
             f"Command: `python experiments/waywardness.py {args.root} --task {args.task} --out {args.out}`", "",
             "soft = the tuned prompt's test metric; hard = the same prompt with every input-prompt position replaced "
             "by the embedding of its nearest vocabulary token (cosine; deep prompts keep their per-layer prompts); "
             "zero-shot = the start prompt p0 (the hand-written cue); 'as p0' = positions whose nearest token is "
             "the token p0 had there.", "",
             "| method | runs | soft | hard | zero-shot | positions read as p0 | distance from p0 / median word norm |",
             "|---|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        same = sum(r["same_as_p0"] for r in rs)
        total = sum(r["positions"] for r in rs)
        rel = [statistics.mean(r["distance_from_p0"]) / r["word_norm_median"] for r in rs]
        cols = [format_mean_std(r[k] for r in rs) for k in ("soft", "hard", "zero_shot")]
        lines.append(f"| {m} | {len(rs)} | {' | '.join(cols)} | {same}/{total} | {statistics.mean(rel):.2f} |")
    p0 = " ".join(repr(t) for t in rows[0]["p0_tokens"])
    lines += ["", f"| run | soft | hard | hard reading (p0: {p0}) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['soft']:.1f} | {r['hard']:.1f} | "
                     f"{' '.join(repr(t) for t in r['hard_tokens'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
