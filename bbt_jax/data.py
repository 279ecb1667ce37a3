"""Read the few-shot task data (JSONL, one schema) with clear errors.

Schema per line: {"text": str, "text_pair": str | null, "label": int}.
Layout: <data_dir>/<task>/k-shot/<k>-<seed>/{train,dev}.jsonl, <task>/bbt-seed42/{train,dev}.jsonl
and <task>/test.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bbt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: int


def read_jsonl(path: Path, num_labels: int, *, pair: bool) -> list[Example]:
    """Read and validate one JSONL split; any problem names file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable data file ({e})") from None
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: malformed JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{i}: expected a JSON object")
        text, text_pair, label = obj.get("text"), obj.get("text_pair"), obj.get("label")
        if not isinstance(text, str):
            raise UserError(f"{path}:{i}: 'text' must be a string")
        if pair and not isinstance(text_pair, str):
            raise UserError(f"{path}:{i}: 'text_pair' must be a string for a sentence-pair task")
        if not isinstance(label, int) or isinstance(label, bool):
            raise UserError(f"{path}:{i}: 'label' must be an integer, got {label!r}")
        if not 0 <= label < num_labels:
            raise UserError(f"{path}:{i}: label {label} out of range [0, {num_labels})")
        rows.append(Example(text, text_pair if pair else None, label))
    return rows


SPLITS = ("k-shot", "bbt-seed42")


def split_paths(data_dir: Path, task: str, k_shot: int, seed: int, *, split: str = "k-shot") -> dict[str, Path]:
    """Paths of the train/dev/test files of one task and few-shot split.

    split="k-shot": <task>/k-shot/<k_shot>-<seed>/ (LM-BFF-style splits, seeds 13 21 42 87 100).
    split="bbt-seed42": <task>/bbt-seed42/, the 16-shot seed-42 split aligned with the
    BBT paper (BBT-RGB); k_shot must be 16, and `seed` does not pick the data (it
    still seeds A and CMA-ES, so several search seeds can run on the paper's split).
    Test is <task>/test.jsonl for both. A missing split folder is a UserError naming it.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root}: no such directory (the task data live in ../shared/data)")
    if split == "k-shot":
        shot = root / task / "k-shot" / f"{k_shot}-{seed}"
    elif split == "bbt-seed42":
        if k_shot != 16:
            raise UserError(f"--split bbt-seed42: is a 16-shot split; got --k-shot {k_shot}")
        shot = root / task / "bbt-seed42"
    else:
        raise UserError(f"--split {split}: choose from {', '.join(SPLITS)}")
    if not shot.is_dir():
        raise UserError(f"{shot}: no such split folder (--split {split}, task {task})")
    return {"train": shot / "train.jsonl", "dev": shot / "dev.jsonl", "test": root / task / "test.jsonl"}


def check_train_split(rows: list[Example], path: Path | str, num_labels: int) -> None:
    """Refuse an empty or one-class training split (no signal to search on)."""
    if not rows:
        raise UserError(f"{path}: the training split is empty")
    if num_labels > 1 and len({r.label for r in rows}) < 2:
        raise UserError(f"{path}: the training split has a single class ({rows[0].label}); need at least two")
