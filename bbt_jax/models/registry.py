"""The backbone-family registry: every family module declares a `Family`; this maps names,
presets, GGUF files and HF `model_type`s to them, and loads a model by its --model string.

Add a family: write its module with a `FAMILY` (models/family.py) and list it in FAMILIES.
"""

from __future__ import annotations

from pathlib import Path

from bbt_jax.errors import UserError
from bbt_jax.models import hf, llama, roberta
from bbt_jax.models.family import Family, LoadedModel

FAMILIES: dict[str, Family] = {f.name: f for f in (roberta.FAMILY, llama.FAMILY)}


def presets() -> dict[str, str]:
    """Every named model of every family: name -> description."""
    return {name: desc for f in FAMILIES.values() for name, desc in f.presets.items()}


def by_model_type(model_type: str | None, source: Path) -> Family:
    for f in FAMILIES.values():
        if f.model_type == model_type:
            return f
    supported = ", ".join(f.model_type for f in FAMILIES.values())
    raise UserError(f"{source}: unsupported model_type {model_type!r} (supported: {supported})")


def load(model: str, tokenizer: str = "", *, default_tokenizer: str | Path | None = None) -> LoadedModel:
    """A preset / GGUF file claimed by a family, or a checkpoint directory / hub id by its model_type."""
    for f in FAMILIES.values():
        if f.claims(model):
            config, params, tok, source, random = f.load_named(model, tokenizer or default_tokenizer)
            return LoadedModel(f, config, params, f.make_vocab(tok, config), source, random)
    ckpt = hf.resolve_checkpoint_dir(model)
    f = by_model_type(hf.read_config(ckpt).get("model_type"), ckpt / "config.json")
    config, params = f.load_checkpoint(ckpt)
    tok = hf.load_tokenizer(tokenizer or hf.tokenizer_file(ckpt) or default_tokenizer, model)
    return LoadedModel(f, config, params, f.make_vocab(tok, config), str(ckpt))
