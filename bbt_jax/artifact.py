"""The tuned prompt as a reusable artifact: prompt.safetensors + prompt.json.

prompt.safetensors holds z (K), p0 (N x D) and the prompt A z + p0 (N x D), all
float32. The projection A is not stored (K x N*D floats, 100 MB for the paper's
settings): it is redrawn from the seed, shape and kind recorded in the card.
prompt.json, the card, holds what is needed to use the prompt again: task,
model, template, verbalizer words and ids, placement, metrics, the full config,
and the sha256 of the tensors file. Both files are written atomically.

`evaluate_prompt` scores the SAVED prompt embeddings (so a prompt also works
with overrides that rebuild a different projection), and checks that A z + p0
of the rebuilt projection agrees with them when the projection is the same.

Shape letters: K intrinsic dim, N prompt tokens, D hidden.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax import config as config_lib
from bbt_jax.errors import UserError
from bbt_jax.fitness import split_metrics
from bbt_jax.harness import Harness
from bbt_jax.io import write_bytes_atomic
from bbt_jax.prompt import prompt_from_z

FORMAT = "bbt-jax-prompt/1"
TENSORS_FILE = "prompt.safetensors"
CARD_FILE = "prompt.json"
# Fields whose change redraws a different projection A (so z alone no longer gives the prompt).
PROJECTION_FIELDS = ("model", "tokenizer", "seed", "projection_seed", "intrinsic_dim", "n_prompt_tokens", "alpha",
                     "proj_sigma", "sigma", "random_proj", "placement", "init_prompt", "dtype")


@dataclasses.dataclass
class SavedPrompt:
    path: Path  # the card
    card: dict
    z_K: np.ndarray
    p0_NxD: np.ndarray
    prompt_NxD: np.ndarray


def save_prompt(out_dir: str | Path, h: Harness, z_K, metrics: dict) -> dict[str, Path]:
    """Write prompt.safetensors and prompt.json into `out_dir`; returns both paths."""
    from safetensors.numpy import save

    out_dir = Path(out_dir)
    z_K = np.asarray(z_K, np.float32)
    proj = h.projection
    prompt_NxD = np.asarray(jax.device_get(prompt_from_z(proj, jnp.asarray(z_K))), np.float32)
    p0_NxD = np.asarray(proj.p0_NxD, np.float32)
    cfg = h.cfg
    seed = cfg.run.seed_of("projection")
    projection = {"seed": seed, "key": "jax.random.split(jax.random.PRNGKey(seed))[0]",
                  "shape": list(map(int, proj.A_KxND.shape)), "kind": cfg.prompt.random_proj,
                  "alpha": cfg.prompt.alpha, "sigma": cfg.projection_sigma}
    blob = save({"z": z_K, "p0": p0_NxD, "prompt": prompt_NxD},
                metadata={"format": FORMAT, "task": h.task.name, "model": h.model.source,
                          "projection": json.dumps(projection)})
    write_bytes_atomic(out_dir / TENSORS_FILE, blob)
    tok = h.model.vocab.tokenizer
    card = {
        "format": FORMAT, "task": h.task.name, "labels": list(h.task.labels),
        "model": h.model.source, "family": h.model.family.name,
        "template": h.layout.template, "placement": h.layout.placement,
        "verbalizer": {"words": [tok.decode([int(i)]) for i in h.verbalizer_C],
                       "ids": [int(i) for i in h.verbalizer_C]},
        "n_prompt_tokens": int(prompt_NxD.shape[0]), "hidden": int(prompt_NxD.shape[1]),
        "intrinsic_dim": int(z_K.shape[0]), "projection": projection, "metrics": metrics,
        "config": config_lib.to_dict(cfg),
        "tensors": {"file": TENSORS_FILE, "sha256": hashlib.sha256(blob).hexdigest()},
    }
    write_bytes_atomic(out_dir / CARD_FILE, (json.dumps(card, indent=1, default=float) + "\n").encode())
    return {"tensors": out_dir / TENSORS_FILE, "card": out_dir / CARD_FILE}


def _card_path(path: Path) -> Path:
    if path.is_dir():
        return path / CARD_FILE
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    return path


def load_prompt(path: str | Path) -> SavedPrompt:
    """Read a prompt given its card, its tensors file or their folder; every problem is a UserError."""
    from safetensors.numpy import load

    given = Path(path)
    card_path = _card_path(given)
    if not card_path.is_file():
        what = "not found" if card_path == given else f"{card_path.name} not found"
        raise UserError(f"--prompt {given}: {what} (expected the prompt.json written by train)")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--prompt {card_path}: unreadable prompt card ({e})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise UserError(f"--prompt {card_path}: not a bbt-jax prompt card (format {FORMAT!r})")
    tensors_path = card_path.parent / card["tensors"]["file"]
    try:
        blob = tensors_path.read_bytes()
    except OSError as e:
        raise UserError(f"--prompt {card_path}: cannot read {tensors_path} ({e.strerror})") from None
    if hashlib.sha256(blob).hexdigest() != card["tensors"]["sha256"]:
        raise UserError(f"--prompt {card_path}: {tensors_path} does not match its card (sha256 differs)")
    try:
        t = load(blob)
        z_K, p0_NxD, prompt_NxD = (np.asarray(t[k], np.float32) for k in ("z", "p0", "prompt"))
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
        raise UserError(f"--prompt {tensors_path}: unreadable tensors ({type(e).__name__}: {e})") from None
    if prompt_NxD.ndim != 2 or p0_NxD.shape != prompt_NxD.shape or z_K.ndim != 1:
        raise UserError(f"--prompt {tensors_path}: inconsistent shapes z {z_K.shape}, p0 {p0_NxD.shape}, "
                        f"prompt {prompt_NxD.shape}")
    return SavedPrompt(card_path, card, z_K, p0_NxD, prompt_NxD)


def config_for(saved: SavedPrompt, **overrides) -> config_lib.Config:
    """The training config of the prompt, with some fields replaced (flat names, as the CLI flags)."""
    try:
        cfg = config_lib.from_dict(saved.card["config"])
    except (KeyError, TypeError) as e:
        raise UserError(f"--prompt {saved.path}: the card's config is not understood ({e})") from None
    return config_lib.override(cfg, **overrides)


def evaluate_prompt(h: Harness, saved: SavedPrompt, *, warn: Callable[[str], None] = print) -> dict:
    """Test metrics of the saved prompt embeddings on `h` (built from `config_for`)."""
    n, d = h.layout.p0.shape
    if saved.prompt_NxD.shape != (n, d):
        raise UserError(f"--prompt {saved.path}: the prompt is {saved.prompt_NxD.shape[0]} x "
                        f"{saved.prompt_NxD.shape[1]}, but this model and placement take {n} x {d}")
    same_projection = not config_lib.diff(saved.card["config"], config_lib.to_dict(h.cfg), PROJECTION_FIELDS)
    agree = None
    if same_projection:
        rebuilt_NxD = np.asarray(jax.device_get(prompt_from_z(h.projection, jnp.asarray(saved.z_K))))
        gap = float(np.max(np.abs(rebuilt_NxD - saved.prompt_NxD)))
        agree = gap <= 1e-5 * (1.0 + float(np.max(np.abs(saved.prompt_NxD))))
        if not agree:
            warn(f"warning: A z + p0 of the rebuilt projection differs from the saved prompt by {gap:.3g} "
                 "(other model weights?); scoring the saved prompt")
    # Score the embeddings themselves, with the fitness used in training.
    test = split_metrics(h.backbone, h.frozen, h.test_batches, jnp.asarray(saved.prompt_NxD)[None], h.task.metric)[0]
    return {"prompt": str(saved.path), "task": h.task.name, "model": h.model.source, "test": test,
            "z_agrees": agree, "reported": saved.card.get("metrics", {})}
