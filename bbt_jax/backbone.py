"""One interface over the backbone families: load by name, score one candidate.

`Backbone.score(frozen, inputs, prompt_NxD) -> logits_BxC` is the scorer that
`evaluate` vmaps over the population. `frozen` = {"params", "verbalizer"}; the
projection and the candidates are separate arguments (see evaluate.py).

Shape letters: B batch rows, N prompt tokens, D hidden, C classes, V vocab.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax.config import ModelConfig
from bbt_jax.errors import UserError
from bbt_jax.models import hf
from bbt_jax.tasks import Vocab, roberta_vocab

ROBERTA_PRESETS = ("roberta-base", "roberta-large", "tiny")
LLAMA_PRESETS = ("smollm2",)


def _family_module(family: str):
    if family == "roberta":
        from bbt_jax.models import roberta

        return roberta
    from bbt_jax.models import llama

    return llama


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Static (hashable) description of a backbone: family, shapes, placement."""

    family: str  # "roberta" | "llama"
    config: Any  # the family's frozen config dataclass
    placement: str  # "add" | "cat" (roberta) ; "replace" (llama)
    suffix_len: int = 0  # > 0: decoder with the shared input cache; N + cue tokens run per member

    def prepare(self, frozen, buckets) -> tuple:
        """Candidate-independent work, done once per batch: the decoder's input K/V cache."""
        if not self.suffix_len:
            return tuple(buckets)
        from bbt_jax.models import llama

        out = []
        for b in buckets:
            inputs, suffix = llama.split_for_cache(b, self.suffix_len)
            cache = llama.encode_inputs(self.config, frozen["params"], inputs.input_ids_BxL, inputs.attention_mask_BxL)
            out.append((cache, suffix))
        return tuple(out)

    def score(self, frozen, inputs, prompt_NxD) -> jax.Array:
        """Verbalizer logits of ONE candidate over every bucket of prepared `inputs`, concatenated."""
        mod = _family_module(self.family)
        prompt_NxD = prompt_NxD.astype(mod.word_embeddings(frozen["params"]).dtype)
        if self.suffix_len:
            logits = [mod.label_logits_cached(self.config, frozen["params"], cache, suffix, frozen["verbalizer"],
                                              prompt_NxD) for cache, suffix in inputs]
        else:
            logits = [mod.label_logits(self.config, frozen["params"], b, frozen["verbalizer"], prompt_NxD,
                                       placement=self.placement) for b in inputs]
        return jnp.concatenate(logits, axis=0).astype(jnp.float32)

    def score_batches(self, frozen, buckets, prompt_NxD) -> jax.Array:
        """Score raw buckets (prepare + score), for one-off dev/test passes."""
        return self.score(frozen, self.prepare(frozen, buckets), prompt_NxD)

    def word_embeddings(self, params) -> jax.Array:
        return _family_module(self.family).word_embeddings(params)


@dataclasses.dataclass
class LoadedModel:
    family: str
    config: Any
    params: Any
    vocab: Vocab
    source: str


def make_frozen(params, verbalizer_C, dtype: str = "float32") -> dict:
    """The frozen argument of every scorer; params cast to the compute dtype."""
    dt = jnp.dtype(dtype)
    params = jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return {"params": params, "verbalizer": jnp.asarray(verbalizer_C, jnp.int32)}


def _load_tokenizer(path: str | Path | None, what: str):
    from tokenizers import Tokenizer

    if not path:
        raise UserError(f"--model {what}: no tokenizer.json found; pass --tokenizer")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tokenizer {path}: file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"--tokenizer {path}: unreadable tokenizer ({e})") from None


def _causal_vocab(tokenizer, config) -> Vocab:
    pad = getattr(config, "pad_token_id", None)
    eos = getattr(config, "eos_token_id", None)
    pad_id = pad if isinstance(pad, int) else (eos if isinstance(eos, int) else 0)
    return Vocab(tokenizer, "causal", pad_id=pad_id)


def load_model(cfg: ModelConfig, *, default_tokenizer: str | Path | None = None) -> LoadedModel:
    """Load a preset, a GGUF file, a checkpoint directory or a hub id."""
    name = cfg.model
    if name in ROBERTA_PRESETS:
        from bbt_jax.models import roberta

        config = roberta.preset(name)
        params = roberta.init_params(config, jax.random.PRNGKey(0))
        tok = _load_tokenizer(cfg.tokenizer or default_tokenizer, name)
        return LoadedModel("roberta", config, params, roberta_vocab(tok), f"preset:{name} (random weights)")
    if name in LLAMA_PRESETS or name.endswith(".gguf"):
        from bbt_jax.models import gguf

        path = gguf.smollm2_path() if name == "smollm2" else Path(name)
        if not path.is_file():
            raise UserError(f"--model {name}: GGUF file not found")
        config, params, tok = gguf.load_gguf(path)
        return LoadedModel("llama", config, params, _causal_vocab(tok, config), str(path))
    ckpt = hf.resolve_checkpoint_dir(name)
    model_type = hf.read_config(ckpt).get("model_type")
    tok_path = cfg.tokenizer or hf.tokenizer_file(ckpt) or default_tokenizer
    if model_type == "roberta":
        from bbt_jax.models import roberta

        config, params = roberta.load(str(ckpt))
        return LoadedModel("roberta", config, params, roberta_vocab(_load_tokenizer(tok_path, name)), str(ckpt))
    if model_type == "llama":
        from bbt_jax.models import llama

        config, params = llama.load(str(ckpt))
        return LoadedModel("llama", config, params, _causal_vocab(_load_tokenizer(tok_path, name), config),
                           str(ckpt))
    raise UserError(f"{ckpt / 'config.json'}: unsupported model_type {model_type!r} (supported: roberta, llama)")


def backbone_for(model: LoadedModel, placement: str, suffix_len: int = 0) -> Backbone:
    """`suffix_len` > 0 (decoders, "suffix"/"cue" placement) turns on the shared input cache."""
    if model.family == "roberta":
        return Backbone("roberta", model.config, placement)
    return Backbone("llama", model.config, "replace", suffix_len if placement in ("suffix", "cue") else 0)


def token_embeddings(model: LoadedModel, ids) -> np.ndarray:
    """Input embeddings of token ids (for p0 = the embeddings of a text)."""
    word = np.asarray(_family_module(model.family).word_embeddings(model.params), np.float32)
    return word[np.asarray(ids, np.int64)]
