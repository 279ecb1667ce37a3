"""RoBERTa masked LM (transformers RobertaForMaskedLM, eval mode) as pure functions.

The forward is split into named steps: `embed` (word + position + type, LayerNorm),
`splice_prompt` (BBT's "add" / "cat"), `encode` (post-LN layers in one lax.scan,
with an optional per-layer additive prompt for BBTv2), and `head_at` (the LM head
at the answer position over the verbalizer rows only).

Prompt semantics follow Black-Box-Tuning models/modeling_roberta.py: "add" adds the
prompt to the embedding OUTPUT (after LayerNorm) at N placeholder-token slots; "cat"
inserts prompt vectors that carry no position embedding, the text keeping its
positions (the template puts them before <s>, as bbt.py concatenates them; with no position
embedding, after <s> gives the same logits: tests/models/test_roberta.py).

Shape letters: B batch, L length, D hidden, H heads, E head dim, I intermediate,
N prompt tokens, V vocab, C classes, Y layers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax import tasks
from bbt_jax.errors import UserError
from bbt_jax.models import hf, splice
from bbt_jax.models.family import Family, Layout
from bbt_jax.types import TokenBatch

_ALLOWED = frozenset({
    "architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id",
    "bos_token_id", "eos_token_id", "position_embedding_type", "use_cache", "classifier_dropout",
    "torch_dtype", "dtype", "transformers_version", "is_decoder", "add_cross_attention",
    "chunk_size_feed_forward", "tie_word_embeddings", "output_past", "gradient_checkpointing",
    "return_dict", "output_hidden_states", "output_attentions", "id2label", "label2id", "problem_type",
    "_name_or_path", "tokenizer_class", "is_encoder_decoder", "sep_token_id", "cls_token_id",
})
_EXPECTED = {"model_type": "roberta", "hidden_act": "gelu", "position_embedding_type": "absolute",
             "is_decoder": False, "add_cross_attention": False, "chunk_size_feed_forward": 0,
             "tie_word_embeddings": True}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobertaConfig:
    """Shapes of a RoBERTa encoder (HF field names)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"hidden_size {self.hidden_size} not divisible by num_attention_heads "
                            f"{self.num_attention_heads}")

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> RobertaConfig:
        hf.check_config_keys(d, _ALLOWED, _EXPECTED, source)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_PRESETS = {
    "roberta-base": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072),
    "roberta-large": dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096),
    "tiny": dict(vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64),
}


# Random-weight models of the real shapes (timing only) and the real models' hub ids.
RANDOM_PRESETS = {"random-roberta-base": "roberta-base", "random-roberta-large": "roberta-large", "tiny": "tiny"}
HUB_IDS = {"roberta-base": "FacebookAI/roberta-base", "roberta-large": "FacebookAI/roberta-large"}
# bbt.py: "add" adds A z at the slots; "cat" writes the vectors (no position embedding) before <s>.
_SPLICE = {"add": "add", "cat": "replace"}


def preset(name: str) -> RobertaConfig:
    if name not in _PRESETS:
        raise UserError(f"--model {name}: unknown RoBERTa preset (choose from {', '.join(_PRESETS)})")
    return RobertaConfig(**_PRESETS[name])


def init_params(config: RobertaConfig, key: jax.Array, dtype=jnp.float32) -> dict:
    """Random weights (normal std 0.02, LayerNorm 1/0), layers stacked on a leading axis."""
    D, I, Y = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    ks = iter(jax.random.split(key, 16))

    def n(shape):
        return (0.02 * jax.random.normal(next(ks), shape, jnp.float32)).astype(dtype)

    def ln(*lead):
        return {"scale": jnp.ones((*lead, D), dtype), "bias": jnp.zeros((*lead, D), dtype)}

    def dense(i, o):
        return {"kernel": n((Y, i, o)), "bias": jnp.zeros((Y, o), dtype)}

    return {
        "embeddings": {"word": n((config.vocab_size, D)), "position": n((config.max_position_embeddings, D)),
                       "token_type": n((config.type_vocab_size, D)), "ln": ln()},
        "layers": {"q": dense(D, D), "k": dense(D, D), "v": dense(D, D), "o": dense(D, D), "attn_ln": ln(Y),
                   "ffn_in": dense(D, I), "ffn_out": dense(I, D), "ffn_ln": ln(Y)},
        "lm_head": {"dense": {"kernel": n((D, D)), "bias": jnp.zeros((D,), dtype)}, "ln": ln(),
                    "bias": jnp.zeros((config.vocab_size,), dtype)},
    }


def word_embeddings(params) -> jax.Array:
    return params["embeddings"]["word"]


# ----------------------------------------------------------------------------- forward
def _row(v, x):
    """A trailing-axis vector shaped to broadcast against x (explicit rank promotion)."""
    return v.reshape((1,) * (x.ndim - 1) + v.shape[-1:])


def _layer_norm(x, p, eps):
    x32 = x.astype(jnp.float32)
    mu = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mu), -1, keepdims=True)
    y = (x32 - mu) * jax.lax.rsqrt(var + eps)
    return (y * _row(p["scale"], y).astype(jnp.float32) + _row(p["bias"], y).astype(jnp.float32)).astype(x.dtype)


def _dense(x, p):
    return x @ p["kernel"] + _row(p["bias"], x)


def embed(config: RobertaConfig, params, input_ids_BxL, attention_mask_BxL, skip_BxL=None):
    """Embedding output (after LayerNorm). Position ids as HF: padding_idx + running count
    of real tokens; tokens in `skip_BxL` (cat slots) are not counted."""
    real_BxL = attention_mask_BxL.astype(jnp.int32) * (input_ids_BxL != config.pad_token_id)
    counted_BxL = real_BxL if skip_BxL is None else real_BxL * (~skip_BxL)
    pos_BxL = jnp.cumsum(counted_BxL, axis=1) * counted_BxL + config.pad_token_id
    e = params["embeddings"]
    h = e["word"][input_ids_BxL] + e["position"][pos_BxL] + e["token_type"][0][None, None, :]
    return _layer_norm(h, e["ln"], config.layer_norm_eps)


def _attention(config, p, h_BxLxD, bias_Bx1x1xL):
    B, L, D = h_BxLxD.shape
    H = config.num_attention_heads
    E = D // H

    def heads(x):
        return x.reshape(B, L, H, E)

    q, k, v = heads(_dense(h_BxLxD, p["q"])), heads(_dense(h_BxLxD, p["k"])), heads(_dense(h_BxLxD, p["v"]))
    s_BxHxLxL = jnp.einsum("bqhe,bkhe->bhqk", q, k).astype(jnp.float32) / np.float32(np.sqrt(E)) + bias_Bx1x1xL
    a = jax.nn.softmax(s_BxHxLxL, -1).astype(h_BxLxD.dtype)
    return _dense(jnp.einsum("bhqk,bkhe->bqhe", a, v).reshape(B, L, D), p["o"])


def encode(config: RobertaConfig, params, h_BxLxD, attention_mask_BxL, layer_prompt_YxBxLxD=None, *,
           collect: bool = False):
    """Post-LN transformer layers as one lax.scan; optional additive prompt before each layer.
    `collect`: also return every layer's input (after its prompt), Y x B x L x D."""
    eps = config.layer_norm_eps
    bias = jnp.where(attention_mask_BxL[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)

    def layer(h, xs):
        p, extra = xs
        if extra is not None:
            h = h + extra
        h_in = h if collect else None
        h = _layer_norm(h + _attention(config, p, h, bias), p["attn_ln"], eps)
        ffn = _dense(jax.nn.gelu(_dense(h, p["ffn_in"]), approximate=False), p["ffn_out"])
        return _layer_norm(h + ffn, p["ffn_ln"], eps), h_in

    h, inputs_YxBxLxD = jax.lax.scan(layer, h_BxLxD, (params["layers"], layer_prompt_YxBxLxD))
    return (h, inputs_YxBxLxD) if collect else h


def _transform(config, params, h_BxD):
    p = params["lm_head"]
    return _layer_norm(jax.nn.gelu(_dense(h_BxD, p["dense"]), approximate=False), p["ln"], config.layer_norm_eps)


def head_at(config, params, h_BxLxD, answer_pos_B, rows_C=None):
    """LM head at the answer position only; over `rows_C` vocab rows (None: all)."""
    h_BxD = jnp.take_along_axis(h_BxLxD, answer_pos_B[:, None, None], axis=1)[:, 0]
    t_BxD = _transform(config, params, h_BxD)
    word, bias = params["embeddings"]["word"], params["lm_head"]["bias"]
    if rows_C is not None:
        word, bias = word[rows_C], bias[rows_C]
    return (t_BxD @ word.T + bias[None, :]).astype(jnp.float32)


def hidden_states(config, params, batch: TokenBatch, prompt_NxD, layer_prompt_YxNxD=None, *, placement="add",
                  collect: bool = False):
    """Last hidden states; "add" adds the prompt at the slots, "cat" replaces them (no position).
    `collect`: (last, every layer's input Y x B x L x D)."""
    mode = _SPLICE[placement]
    n, L = prompt_NxD.shape[0], batch.input_ids_BxL.shape[1]
    skip_BxL = splice.slots(batch.prompt_start_B, n, L) if placement == "cat" else None
    h = embed(config, params, batch.input_ids_BxL, batch.attention_mask_BxL, skip_BxL)
    h = splice.splice(h, prompt_NxD, batch.prompt_start_B, mode)
    extra = None
    if layer_prompt_YxNxD is not None:
        extra = splice.layer_additions(layer_prompt_YxNxD, batch.prompt_start_B, L, h.dtype)
    return encode(config, params, h, batch.attention_mask_BxL, extra, collect=collect)


def label_logits(config, params, batch: TokenBatch, verbalizer_C, prompt_NxD, layer_prompt_YxNxD=None, *,
                 placement: str = "add") -> jax.Array:
    """Verbalizer logits (BxC, float32) at each row's <mask>."""
    h = hidden_states(config, params, batch, prompt_NxD, layer_prompt_YxNxD, placement=placement)
    return head_at(config, params, h, batch.answer_pos_B, verbalizer_C)


def full_logits_at(config, params, batch: TokenBatch, prompt_NxD, *, placement: str = "add") -> jax.Array:
    """Full-vocab logits (BxV) at the answer position (the original bbt.py's head)."""
    h = hidden_states(config, params, batch, prompt_NxD, placement=placement)
    return head_at(config, params, h, batch.answer_pos_B)


# ----------------------------------------------------------------------------- HF conversion
def from_hf(config_dict: dict, state: dict, source: str = "checkpoint") -> tuple[RobertaConfig, dict]:
    """Convert a transformers RobertaForMaskedLM state dict (numpy) to our params."""
    config = RobertaConfig.from_hf_dict(config_dict, source)
    read = hf.weight_getter(state, "roberta.", source)
    names = set(state)

    def get(name):
        return jnp.asarray(read(name))

    def lin(prefix, stack=True):
        if stack:
            return {"kernel": jnp.stack([get(prefix.format(i) + ".weight").T for i in range(config.num_hidden_layers)]),
                    "bias": jnp.stack([get(prefix.format(i) + ".bias") for i in range(config.num_hidden_layers)])}
        return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

    def ln(prefix, stack=True):
        if stack:
            return {"scale": jnp.stack([get(prefix.format(i) + ".weight") for i in range(config.num_hidden_layers)]),
                    "bias": jnp.stack([get(prefix.format(i) + ".bias") for i in range(config.num_hidden_layers)])}
        return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

    L = "encoder.layer.{}."
    params = {
        "embeddings": {"word": get("embeddings.word_embeddings.weight"),
                       "position": get("embeddings.position_embeddings.weight"),
                       "token_type": get("embeddings.token_type_embeddings.weight"),
                       "ln": ln("embeddings.LayerNorm", stack=False)},
        "layers": {"q": lin(L + "attention.self.query"), "k": lin(L + "attention.self.key"),
                   "v": lin(L + "attention.self.value"), "o": lin(L + "attention.output.dense"),
                   "attn_ln": ln(L + "attention.output.LayerNorm"), "ffn_in": lin(L + "intermediate.dense"),
                   "ffn_out": lin(L + "output.dense"), "ffn_ln": ln(L + "output.LayerNorm")},
        # the head's forward adds decoder.bias; bbt.py's `lm_head.bias = zeros` replaces only lm_head.bias
        "lm_head": {"dense": lin("lm_head.dense", stack=False), "ln": ln("lm_head.layer_norm", stack=False),
                    "bias": get("lm_head.decoder.bias" if "lm_head.decoder.bias" in names else "lm_head.bias")},
    }
    return config, params


def load(path_or_id: str) -> tuple[RobertaConfig, dict]:
    """A local checkpoint directory or a hub id (downloaded when online)."""
    ckpt = hf.resolve_checkpoint_dir(path_or_id)
    return from_hf(hf.read_config(ckpt), hf.read_state_dict(ckpt), str(ckpt / "config.json"))


# ----------------------------------------------------------------------------- the family
def make_vocab(tokenizer, config=None) -> tasks.Vocab:
    """RoBERTa's <s>=0, <pad>=1, </s>=2, <mask> from the tokenizer."""
    ids = {t: tokenizer.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<mask>")}
    if None in ids.values():
        missing = [k for k, v in ids.items() if v is None]
        raise UserError(f"tokenizer: missing RoBERTa special tokens {missing}")
    return tasks.Vocab(tokenizer, "masked", pad_id=ids["<pad>"], bos_id=ids["<s>"], eos_id=ids["</s>"],
                       mask_id=ids["<mask>"])


def _claims(name: str) -> bool:
    return name in RANDOM_PRESETS or name in HUB_IDS


def _load_named(name: str, tokenizer_path):
    """A random-weight preset, or the real roberta-base/large from the hub (when online)."""
    if name in HUB_IDS:
        ckpt = hf.resolve_checkpoint_dir(HUB_IDS[name], flag_value=name)
        config, params = load(str(ckpt))
        tok = hf.load_tokenizer(tokenizer_path or hf.tokenizer_file(ckpt), name)
        return config, params, tok, f"{HUB_IDS[name]} ({ckpt})", False
    config = preset(RANDOM_PRESETS[name])
    params = init_params(config, jax.random.PRNGKey(0))
    return config, params, hf.load_tokenizer(tokenizer_path, name), f"preset:{name} (random weights)", True


def _layout(task, vocab, prompt_cfg, word_VxD) -> Layout:
    """bbt.py's templates; p0 = 0 (the prompt is A z alone; --init-prompt sets another p0)."""
    placement, n_prompt = prompt_cfg.placement, prompt_cfg.n_prompt_tokens
    template = tasks.template_for(task, vocab, placement)
    return Layout(placement=placement, template=template, n_prompt=n_prompt,
                  p0=np.zeros((n_prompt, word_VxD.shape[1]), np.float32), splice=_SPLICE[placement])


def _head_params(params, zero_head_bias: bool):
    if not zero_head_bias:
        return params
    return {**params, "lm_head": {**params["lm_head"], "bias": jnp.zeros_like(params["lm_head"]["bias"])}}


def _prepare(config, params, buckets, layout: Layout):
    return tuple(buckets)


def _score(config, params, inputs, verbalizer_C, prompt, layout: Layout):
    prompt_NxD, layers_YxNxD = splice.parts(prompt)
    logits = [label_logits(config, params, b, verbalizer_C, prompt_NxD, layers_YxNxD, placement=layout.placement)
              for b in inputs]
    return jnp.concatenate(logits, axis=0)


def _layer_inputs(config, params, batch, prompt, layout: Layout):
    prompt_NxD, layers_YxNxD = splice.parts(prompt)
    return hidden_states(config, params, batch, prompt_NxD, layers_YxNxD, placement=layout.placement, collect=True)[1]


FAMILY = Family(
    name="roberta", kind="masked", model_type="roberta", placements=tasks.ENCODER_PLACEMENTS,
    presets={**{k: f"random weights of {v}'s shape (timing, tests)" for k, v in RANDOM_PRESETS.items()},
             **{k: f"the real {k} ({v}), downloaded when online" for k, v in HUB_IDS.items()}},
    claims=_claims, load_named=_load_named, load_checkpoint=lambda ckpt: load(str(ckpt)), make_vocab=make_vocab,
    layout=_layout, head_params=_head_params, word_embeddings=word_embeddings, prepare=_prepare, score=_score,
    layer_inputs=_layer_inputs)
