"""The backbone-family contract: what a model family declares so that tasks, fitness and
search never ask which family they run on.

A `Family` (one per module: roberta.py, llama.py; registered in registry.py) declares its
kind ("masked": answer at <mask>; "causal": answer after the last token), its presets,
how it loads weights and builds its vocabulary, its prompt placements and how each lays a
task out (`Layout`: template, N, p0, whether the decoder's shared input cache applies),
what happens to its head bias, and its two pure functions:

  prepare(config, params, buckets, layout) -> inputs   candidate-independent work, once per batch
  score(config, params, inputs, verbalizer_C, prompt, layout) -> logits_BxC   ONE candidate
  layer_inputs(config, params, batch, prompt, layout) -> Y x B x L x D   every layer's input
      (after its prompt) on one uncached batch: BBTv2's per-layer projection scale (deep.py)

`Backbone` binds a family to one config and layout; it is static (hashable), so it can be
a static field of the jitted fitness.

Shape letters: see bbt_jax/types.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("masked", "causal")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one task's prompt sits in one family's input.

    Attributes:
      placement: the family's placement name (e.g. "add", "cat", "cue").
      template: the task template with {prompt} (and {mask} for masked LMs).
      n_prompt: N, prompt slots per row.
      p0: N x D initial prompt (A z is added to it), as a tuple-free numpy array.
      suffix_len: > 0: the decoder's shared input cache applies and this many tokens
        (N prompt slots + cue) run per candidate; 0: the whole row runs per candidate.
      splice: "add" or "replace" (models/splice.py).
    """

    placement: str
    # only the rows' tokens read it (the compute never does): layouts that differ in it alone, e.g. the seeds'
    # own --demos, share their compiled calls
    template: str = dataclasses.field(compare=False)
    n_prompt: int
    p0: np.ndarray = dataclasses.field(compare=False, hash=False, repr=False)
    suffix_len: int = 0
    splice: str = "replace"


@dataclasses.dataclass(frozen=True)
class Family:
    """A backbone family: see the module docstring. Every field is a value or a function."""

    name: str
    kind: str
    model_type: str  # HF config.json model_type this family converts
    placements: tuple[str, ...]
    presets: dict = dataclasses.field(hash=False, compare=False)  # name -> description
    claims: Callable[[str], bool]  # whether a --model string (not a folder) is this family's
    load_named: Callable  # (name, tokenizer_path) -> (config, params, tokenizer, source, random_weights)
    load_checkpoint: Callable  # (ckpt_dir) -> (config, params)
    make_vocab: Callable  # (tokenizer, config) -> tasks.Vocab
    layout: Callable  # (task, vocab, config.PromptConfig, word_VxD) -> Layout
    head_params: Callable  # (params, zero_head_bias: bool) -> params
    word_embeddings: Callable  # params -> V x D
    prepare: Callable  # (config, params, buckets, layout) -> inputs
    score: Callable  # (config, params, inputs, verbalizer_C, prompt, layout) -> logits_BxC
    layer_inputs: Callable  # (config, params, batch, prompt, layout) -> Y x B x L x D

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


@dataclasses.dataclass
class LoadedModel:
    """Weights and vocabulary of one model, and where they came from."""

    family: Family
    config: Any
    params: Any
    vocab: Any  # tasks.Vocab
    source: str
    random_weights: bool = False
    # dev/test batches already prepared with these weights (fitness.split_metrics' cache): shared by every
    # harness built on this object, i.e. by every run of one process that passes the same loaded model
    prepared: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    # (dtype, zero_lm_head_bias) -> {(prepared batch key, prompt digest): logits_BxC}: prompts already scored
    scored: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    # (split, the cells' fitness.rows_key) -> their prepared train/dev rows stacked on a cell axis: the last seed
    # group's (sweep._group_problems), for the task's next method on the same cells
    stacked: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A family bound to one config and one layout (static and hashable)."""

    family: Family
    config: Any  # the family's frozen config dataclass
    layout: Layout

    def prepare(self, frozen, buckets) -> tuple:
        """Candidate-independent work, done once per batch (e.g. the decoder's input K/V cache)."""
        return self.family.prepare(self.config, frozen["params"], tuple(buckets), self.layout)

    def score(self, frozen, inputs, prompt) -> jax.Array:
        """Verbalizer logits (B x C, float32) of ONE candidate prompt over every prepared bucket; with
        several words per class (verbalizer C x W) a class's logit is the mean of its words' (verbalizer.py)."""
        dtype = self.family.word_embeddings(frozen["params"]).dtype
        prompt = jax.tree.map(lambda p: p.astype(dtype), prompt)
        ids = frozen["verbalizer"]
        logits = self.family.score(self.config, frozen["params"], inputs, ids.reshape(-1), prompt, self.layout)
        logits = logits.astype(jnp.float32)
        return logits if ids.ndim == 1 else jnp.mean(logits.reshape(logits.shape[0], *ids.shape), axis=-1)

    def word_embeddings(self, params) -> jax.Array:
        return self.family.word_embeddings(params)

    def layer_inputs(self, frozen, batch, prompt) -> jax.Array:
        """Y x B x L x D: every layer's input on one uncached batch (BBTv2's hidden-state statistics)."""
        return self.family.layer_inputs(self.config, frozen["params"], batch, prompt, self.layout)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)


def make_frozen(params, verbalizer_C, dtype: str = "float32") -> dict:
    """The frozen argument of every scorer: params cast to the compute dtype, verbalizer ids."""
    dt = jnp.dtype(dtype)
    params = jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return {"params": params, "verbalizer": jnp.asarray(verbalizer_C, jnp.int32)}
