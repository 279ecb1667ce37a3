"""Demonstrations in the decoder template (BBT-RGB's "In2": the prompt starts from an instruction plus
demonstrations), drawn from the run's own TRAINING rows.

`with_demos` picks K rows per class from the training split (a permutation drawn from the split's seed,
so a seed's demonstrations are fixed and dev/test are never read), writes each one in the task's own
decoder format with its answer, "{input}{cue}{word}\\n\\n" (input: the template's part after `{demos}`),
and puts them where the template says `{demos}` (an instruction may come before them: `--template
"Classify ...\\n\\n{demos}Review: {text}"`), else before the input part. The chosen rows leave the
training split: a row whose answer is in the context would teach the search nothing. Every row of a run
(train, dev, test) then carries the same demonstrations; the soft prompt (cue placement: the cue) still
follows each row's own input.

`--demo-draws M` (harness.choose_demos) draws M such sets and keeps the one whose template at z = 0 has the
lowest training loss on the rows it leaves (the training rows only, one call per draw); `--demo-none` weighs
the template without demonstrations (`without_demos`, on every training row) against them by the same loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bbt_jax.data import Example
from bbt_jax.errors import UserError
from bbt_jax.tasks import FIELD, Task

MARK = "{demos}"
SEPARATOR = "\n\n"


def pick(rows: list[Example], num_labels: int, k: int, seed) -> list[Example]:
    """K rows of each class, in class order, from one permutation of the rows drawn from `seed`; rows whose
    text holds a template field (e.g. a literal "{text}") are never picked."""
    order = np.random.default_rng(seed).permutation(len(rows))
    picked = []
    for c in range(num_labels):
        mine = [rows[i] for i in order if rows[i].label == c
                and not any(FIELD.search(t or "") for t in (rows[i].text, rows[i].text_pair))]
        if len(mine) <= k:
            raise UserError(f"--demos {k}: class {c} has {len(mine)} usable training rows; it needs more than {k} "
                            "(the demonstrations leave the training split)")
        picked += mine[:k]
    return picked


def write(task: Task, ex: Example) -> str:
    """One demonstration in the task's decoder format (the template's part after `{demos}`), with its answer."""
    body = task.decoder_input.split(MARK)[-1].replace("{text}", task.clean(ex.text))
    if task.pair:
        body = body.replace("{text_pair}", task.clean(ex.text_pair or ""))
    return body + task.decoder_cue + task.decoder_words[ex.label] + SEPARATOR


def draw_seed(seed: int, draw: int):
    """The permutation seed of draw `draw` (--demo-draws): draw 0 is the split seed's own."""
    return seed if draw == 0 else [seed, draw]


def with_demos(task: Task, train: list[Example], k: int, seed: int, draw: int = 0) -> tuple[Task, list[Example]]:
    """(The task with K demonstrations per class in its decoder template, the training rows left); `draw`:
    another set drawn from the same seed (draw_seed)."""
    if k == 0:
        if MARK in task.decoder_input:
            raise UserError(f"--template {task.decoder_input!r}: {MARK} marks where --demos go; --demos is 0")
        return task, train
    chosen = pick(train, task.num_labels, k, draw_seed(seed, draw))
    text = "".join(write(task, ex) for ex in chosen)
    template = task.decoder_input if MARK in task.decoder_input else MARK + task.decoder_input
    left = [r for r in train if not any(r is ex for ex in chosen)]
    return dataclasses.replace(task, decoder_input=template.replace(MARK, text)), left


def without_demos(task: Task) -> Task:
    """The task with no demonstrations, its template's {demos} mark (if any) left empty: --demo-none's candidate."""
    return dataclasses.replace(task, decoder_input=task.decoder_input.replace(MARK, ""))
