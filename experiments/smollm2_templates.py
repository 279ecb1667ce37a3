"""Zero-shot SmolLM2 templates of the 7 tasks, and alternatives where a template sits near chance.

Usage (from the repo root, after `make setup`):
    python experiments/smollm2_templates.py --test-rows 300 --out experiments/smollm2/templates.md
For every (task, template) the hand-written prompt (the demo preset's cue placement at z = 0, i.e. the
template itself) is scored on the task's 16-shot dev splits of the --seeds (32-224 rows each; the dev column
is the mean over seeds) and on the first --test-rows rows of its evaluation split, with SmolLM2-135M-Instruct
loaded once. The template a user should take is the one with the best DEV score; the test column is
reported, not used to choose. `--demos K` gives every run K demonstrations per class from its own training
rows (bbt_jax/demos.py; `{demos}` in a template marks where): the test column is then the mean over seeds.
"""

import argparse
import sys
import time
from pathlib import Path

import jax

from bbt_jax import config as C
from bbt_jax.errors import run_main
from bbt_jax.fitness import split_metrics
from bbt_jax.harness import build
from bbt_jax.io import shared_path
from bbt_jax.models.registry import load
from bbt_jax.tasks import TASKS, make_eval_batches

# (name, --template, --cue, --label-words); "task's own" = the task's built-in decoder template
INSTRUCTION = "Classify the sentiment of each movie review as positive or negative.\n\n{demos}Review: {text}"
NL_CUE = "\nOverall, the sentiment of this movie review is"
VARIANTS = {
    "sst2": [("instruction", INSTRUCTION, "", ""), ("better cue", "", NL_CUE, ""),
             ("instruction + better cue", INSTRUCTION, NL_CUE, "")],
    "mrpc": [("yes/no paraphrase", "Sentence 1: {text}\nSentence 2: {text_pair}",
              "\nAre the two sentences paraphrases? Answer:", " No| Yes"),
             ("true/false", "{text}\nQuestion: Does this mean the same as \"{text_pair}\"? True or False?",
              "\nAnswer:", " False| True"),
             ("until 2026-11-28: task's own", "Sentence 1: {text}\nSentence 2: {text_pair}",
              "\nDo both sentences mean the same thing?", " No| Yes")],
    "snli": [("true/neither/false", "{text}\nQuestion: {text_pair} True, False or Neither?", "\nAnswer:",
              " True| Neither| False"),
             ("yes/maybe/no answer", "Premise: {text}\nHypothesis: {text_pair}",
              "\nIs the hypothesis true given the premise? Answer yes, maybe or no.\nAnswer:", " yes| maybe| no"),
             ("until 2026-11-28: task's own", "Premise: {text}\nHypothesis: {text_pair}",
              "\nDoes the premise imply the hypothesis? Yes, Maybe or No?", " Yes| Maybe| No")],
    # session 21 (7-task target): cues for the three tasks whose templates were never scanned, declared before
    # any of them was scored (experiments/search_quality/seven_tasks_cues/README.md)
    "yelpp": [("sst2's better cue", "", NL_CUE, ""),
              ("review cue", "", "\nOverall, the sentiment of this review is", ""),
              ("yelp template", "Yelp review: {text}", "", "")],
    "agnews": [("topic cue", "", "\nThe topic of this news article is", ""),
               ("about cue", "", "\nThis news article is about", ""),
               ("news template", "News: {text}", "", "")],
    "dbpedia": [("category cue", "", "\nThe category of this text is", ""),
                ("question cue", "", "\nWhich category does this text belong to? Answer:", ""),
                ("wikipedia template", "Wikipedia article: {text}", "", "")],
    "rte": [("true/false", "{text}\nQuestion: {text_pair} True or False?", "\nAnswer:", " True| False"),
            ("yes/no answer", "Premise: {text}\nHypothesis: {text_pair}",
             "\nIs the hypothesis true given the premise? Answer yes or no.\nAnswer:", " yes| no")],
}


def score(h, split: str) -> dict:
    """The metric of z = 0 (the template itself) on dev or test, through the run's own scoring code."""
    if split == "test":
        return h.test_metrics(jax.numpy.expand_dims(h.projection(h.start), 0))[0]
    batches = make_eval_batches(h.encoded["dev"], h.model.vocab.pad_id, batch_rows=32)
    return split_metrics(h.backbone, h.frozen, batches, jax.numpy.expand_dims(h.projection(h.start), 0),
                         h.task.metric)[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--test-rows", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42, 87, 100])
    p.add_argument("--out", default="experiments/smollm2/templates.md")
    p.add_argument("--dev-only", action="store_true", help="score dev only (choosing a template needs no test)")
    p.add_argument("--only", default="", help="score only the variants whose name contains this text")
    p.add_argument("--demos", type=int, default=0, help="--demos K of every run (each seed's own training rows)")
    args = p.parse_args()
    model = load("smollm2", "")
    lines = ["# SmolLM2-135M-Instruct: the decoder templates of the 7 tasks, zero-shot", "",
             "Command: `python experiments/smollm2_templates.py " + " ".join(sys.argv[1:]) + "`", "",
             f"The template itself (cue placement, z = 0) scored on the 16-shot dev splits of seeds "
             f"{', '.join(map(str, args.seeds))} (mean) and on "
             f"the first {args.test_rows} test rows (metric: accuracy, F1 for mrpc; chance = the majority share is "
             "printed beside). Choose on dev; test is reported.", "",
             "| task | template | input part | cue | words | dev | test | test majority share | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        variants = [("task's own", "", "", "")] + VARIANTS.get(task, [])
        for name, template, cue, words in variants:
            if args.only not in name:
                continue
            t0 = time.perf_counter()
            hs = [build(C.override(C.demo(), task=task, seed=seed, data_dir=str(shared_path("data")),
                                   test_rows=args.test_rows, template=template if args.demos else
                                   template.replace("{demos}", ""), cue=cue, label_words=words, demos=args.demos),
                        model=model, log=lambda s: None) for seed in args.seeds]
            h = hs[0]
            metric = h.task.metric
            dev = {metric: sum(score(x, "dev")[metric] for x in hs) / len(hs)}
            tested = hs if args.demos else [h]  # each seed's demonstrations make its test rows its own
            test = {metric: float("nan")} if args.dev_only else {
                metric: sum(score(x, "test")[metric] for x in tested) / len(tested)}
            labels = [r.label for r in h.encoded["test"]]
            majority = max(labels.count(c) for c in set(labels)) / len(labels)
            shown = lambda s: s.replace("\n", "\\n").replace("|", "\\|")  # noqa: E731
            lines.append(f"| {task} | {name} | `{shown(h.task.decoder_input)}` | `{shown(h.task.decoder_cue)}` | "
                         f"{shown('/'.join(w.strip() for w in h.task.decoder_words))} | {100 * dev[metric]:.1f} | "
                         f"{100 * test[metric]:.1f} | {100 * majority:.1f} | {time.perf_counter() - t0:.0f} |")
            print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
