"""The tuned prompt as a reusable artifact: prompt.safetensors + prompt.json.

prompt.safetensors holds, all float32: "prompt" (N x D, the input prompt A z + p0),
"p0" (N x D), "z" (the searched candidate: K for BBT, Y x K for BBTv2; absent for
gradient methods, whose candidate is the prompt) and, for deep prompts (BBTv2, deep
prompt tuning), "layers" (Y x N x D, added at every layer's input). The projection A is
not stored (K x N*D floats per layer, 100 MB for the paper's settings): it is redrawn
from the seed, shape and kind recorded in the card.
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
from bbt_jax.harness import Harness
from bbt_jax.io import read_json, read_verified, safetensors_bytes, write_bytes_atomic
from bbt_jax.verbalizer import word_texts

FORMAT = "bbt-jax-prompt/1"
TENSORS_FILE = "prompt.safetensors"
CARD_FILE = "prompt.json"
# Fields whose change redraws a different projection A (so z alone no longer gives the prompt).
PROJECTION_FIELDS = ("model", "tokenizer", "seed", "projection_seed", "intrinsic_dim", "n_prompt_tokens", "alpha",
                     "proj_sigma", "sigma", "random_proj", "placement", "init_prompt", "prompt_init", "dtype", "cue")


@dataclasses.dataclass
class SavedPrompt:
    path: Path  # the card
    card: dict
    z: np.ndarray | None  # K or Y x K; None for gradient methods
    p0_NxD: np.ndarray
    prompt_NxD: np.ndarray
    layers_YxNxD: np.ndarray | None = None  # deep prompts

    @property
    def prompt(self):
        """The prompt pytree the scorer takes (types.Prompt)."""
        if self.layers_YxNxD is None:
            return jnp.asarray(self.prompt_NxD)
        return {"input": jnp.asarray(self.prompt_NxD), "layers": jnp.asarray(self.layers_YxNxD)}


def _prompt_tensors(prompt) -> dict[str, np.ndarray]:
    prompt = jax.device_get(prompt)
    if isinstance(prompt, dict):
        return {"prompt": np.asarray(prompt["input"], np.float32), "layers": np.asarray(prompt["layers"], np.float32)}
    return {"prompt": np.asarray(prompt, np.float32)}


def save_prompt(out_dir: str | Path, h: Harness, z, metrics: dict) -> dict[str, Path]:
    """Write prompt.safetensors and prompt.json into `out_dir` for the candidate `z` of the run's method;
    returns both paths."""
    out_dir = Path(out_dir)
    z = jax.tree.map(lambda x: np.asarray(x, np.float32), z)
    proj = h.projection
    tensors = _prompt_tensors(proj(jax.tree.map(jnp.asarray, z)))
    prompt_NxD = tensors["prompt"]
    p0_NxD = np.asarray(h.layout.p0, np.float32)
    cfg = h.cfg
    projection = None
    if not h.gradient:
        seed = cfg.run.seed_of("projection")
        A = proj.A_KxND if hasattr(proj, "A_KxND") else proj.A_YxKxND
        projection = {"seed": seed, "key": "jax.random.split(jax.random.PRNGKey(seed))[0]"
                      + ("; layer i: jax.random.split(key, Y)[i]" if h.deep else ""),
                      "shape": list(map(int, A.shape)), "kind": cfg.prompt.random_proj,
                      "alpha": cfg.prompt.alpha, "sigma": cfg.projection_sigma}
        if h.method == "bbtv2":
            projection["layer_stds"] = [float(x) for x in h.layer_stds]
        tensors["z"] = np.asarray(z, np.float32)
    metadata = {"format": FORMAT, "task": h.task.name, "model": h.model.source, "method": h.method,
                "projection": json.dumps(projection)}
    blob = safetensors_bytes({**tensors, "p0": p0_NxD}, metadata=metadata)
    write_bytes_atomic(out_dir / TENSORS_FILE, blob)
    tok = h.model.vocab.tokenizer
    card = {
        "format": FORMAT, "task": h.task.name, "labels": list(h.task.labels),
        "model": h.model.source, "family": h.model.family.name,
        "template": h.layout.template, "placement": h.layout.placement,
        "verbalizer": {"words": word_texts(tok, h.verbalizer_C), "ids": np.asarray(h.verbalizer_C).tolist()},
        "method": h.method, "layers": int(tensors["layers"].shape[0]) if "layers" in tensors else None,
        "n_prompt_tokens": int(prompt_NxD.shape[0]), "hidden": int(prompt_NxD.shape[1]),
        "intrinsic_dim": None if h.gradient else cfg.prompt.intrinsic_dim, "projection": projection,
        "metrics": metrics,
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
    card = read_json(card_path, f"--prompt {card_path}", "prompt card")
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise UserError(f"--prompt {card_path}: not a bbt-jax prompt card (format {FORMAT!r})")
    tensors_path = card_path.parent / card["tensors"]["file"]
    blob = read_verified(tensors_path, card["tensors"]["sha256"], f"--prompt {card_path}", "its card")
    try:
        t = load(blob)
        p0_NxD, prompt_NxD = (np.asarray(t[k], np.float32) for k in ("p0", "prompt"))
        z = np.asarray(t["z"], np.float32) if "z" in t else None
        layers_YxNxD = np.asarray(t["layers"], np.float32) if "layers" in t else None
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
        raise UserError(f"--prompt {tensors_path}: unreadable tensors ({type(e).__name__}: {e})") from None
    if (prompt_NxD.ndim != 2 or p0_NxD.shape != prompt_NxD.shape
            or (layers_YxNxD is not None and layers_YxNxD.shape[1:] != prompt_NxD.shape)):
        raise UserError(f"--prompt {tensors_path}: inconsistent shapes p0 {p0_NxD.shape}, prompt {prompt_NxD.shape}"
                        + (f", layers {layers_YxNxD.shape}" if layers_YxNxD is not None else ""))
    return SavedPrompt(card_path, card, z, p0_NxD, prompt_NxD, layers_YxNxD)


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
    if saved.layers_YxNxD is not None and saved.layers_YxNxD.shape[0] != h.backbone.num_layers:
        raise UserError(f"--prompt {saved.path}: a deep prompt of {saved.layers_YxNxD.shape[0]} layers, but this "
                        f"model has {h.backbone.num_layers}")
    same_projection = not config_lib.diff(saved.card["config"], config_lib.to_dict(h.cfg),
                                          PROJECTION_FIELDS + ("method",))
    agree = None
    if same_projection and saved.z is not None:
        rebuilt = _prompt_tensors(h.projection(jnp.asarray(saved.z)))
        saved_t = _prompt_tensors(saved.prompt)
        gap = max(float(np.max(np.abs(rebuilt[k] - saved_t[k]))) for k in saved_t)
        scale = max(float(np.max(np.abs(v))) for v in saved_t.values())
        agree = gap <= 1e-5 * (1.0 + scale)
        if not agree:
            warn(f"warning: A z + p0 of the rebuilt projection differs from the saved prompt by {gap:.3g} "
                 "(other model weights?); scoring the saved prompt")
    # Score the embeddings themselves, with the fitness used in training.
    prompts_P = jax.tree.map(lambda x: x[None], saved.prompt)
    test = h.test_metrics(prompts_P)[0]
    return {"prompt": str(saved.path), "task": h.task.name, "model": h.model.source, "test": test,
            "z_agrees": agree, "reported": saved.card.get("metrics", {})}
