"""Parity of the Flax Llama with transformers' LlamaForCausalLM (tiny random, fp32),
and the shared input cache against the uncached forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from bbt_jax.errors import UserError
from bbt_jax.models import llama
from bbt_jax.types import TokenBatch

N, CUE, D = 3, 2, 48
VERB = np.array([5, 17, 99], np.int32)
TOL = 1e-4


def _tmodel(tied):
    torch.manual_seed(0)
    cfg = HFConfig(vocab_size=120, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                   num_key_value_heads=2, rope_theta=500.0, tie_word_embeddings=tied, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def models(request):
    t = _tmodel(request.param)
    return t, llama.from_hf(t.config.to_dict(), {k: v.numpy() for k, v in t.state_dict().items()}, "test")


def _batch():
    """Rows: input (varying length) + N slots + CUE cue tokens, right-padded."""
    rng = np.random.default_rng(0)
    in_lens, L = [7, 3, 5], 14
    ids = np.zeros((3, L), np.int64)
    mask = np.zeros((3, L), np.int64)
    for i, n in enumerate(in_lens):
        row = list(rng.integers(3, 119, n)) + [100] * N + [7, 8]
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    starts = np.array(in_lens)
    answer = starts + N + CUE - 1
    return ids, mask, TokenBatch(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(starts, jnp.int32),
                                 jnp.asarray(answer, jnp.int32), jnp.zeros(3, jnp.int32), jnp.ones(3, jnp.float32))


def _torch_ref(t, ids, mask, batch, prompt, layer_prompt=None, add=False):
    emb = t.model.embed_tokens(torch.as_tensor(ids)).detach().clone()
    starts = np.asarray(batch.prompt_start_B)
    for b, s in enumerate(starts):
        emb[b, s:s + N] = emb[b, s:s + N] + torch.as_tensor(prompt) if add else torch.as_tensor(prompt)
    hooks = []
    if layer_prompt is not None:
        for li, layer in enumerate(t.model.layers):
            def pre(m, args, kwargs, li=li):
                h = (args[0] if args else kwargs["hidden_states"]).clone()
                for b, s in enumerate(starts):
                    h[b, s:s + N] += torch.as_tensor(layer_prompt[li])
                return ((h,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
            hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = t(inputs_embeds=emb, attention_mask=torch.as_tensor(mask)).logits
    finally:
        for h in hooks:
            h.remove()
    return logits[torch.arange(3), torch.as_tensor(np.asarray(batch.answer_pos_B))][:, VERB].numpy()


def test_parity_with_prompt_and_padding(models):
    t, (cfg, params) = models
    ids, mask, batch = _batch()
    prompt = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    ref = _torch_ref(t, ids, mask, batch, prompt)
    got = np.asarray(llama.label_logits(cfg, params, batch, jnp.asarray(VERB), jnp.asarray(prompt)))
    assert np.abs(got - ref).max() <= TOL


def test_cached_equals_uncached_with_deep_prompts(models):
    """Prompts at every layer (BBTv2) keep the shared input cache: the input never attends to the prompt."""
    t, (cfg, params) = models
    ids, mask, batch = _batch()
    rng = np.random.default_rng(6)
    prompt, lp = rng.normal(size=(N, D)).astype(np.float32), rng.normal(size=(2, N, D)).astype(np.float32)
    inputs, suffix = llama.split_for_cache(batch, N + CUE)
    cache = llama.encode_inputs(cfg, params, inputs.input_ids_BxL, inputs.attention_mask_BxL)
    cached = llama.label_logits_cached(cfg, params, cache, suffix, jnp.asarray(VERB), jnp.asarray(prompt),
                                       jnp.asarray(lp))
    ref = _torch_ref(t, ids, mask, batch, prompt, lp)
    assert np.abs(np.asarray(cached) - ref).max() <= TOL
    no_layers = llama.label_logits_cached(cfg, params, cache, suffix, jnp.asarray(VERB), jnp.asarray(prompt))
    assert np.abs(np.asarray(no_layers) - ref).max() > 10 * TOL  # the layer prompts matter


def test_parity_additive_prompt_as_the_original_gpt2_path(models):
    """--decoder-splice add: A z is added to the placeholder tokens' embeddings (bbt.py's GPT-2 path),
    uncached and through the shared input cache."""
    t, (cfg, params) = models
    ids, mask, batch = _batch()
    prompt = np.random.default_rng(5).normal(size=(N, D)).astype(np.float32)
    ref = _torch_ref(t, ids, mask, batch, prompt, add=True)
    got = np.asarray(llama.label_logits(cfg, params, batch, jnp.asarray(VERB), jnp.asarray(prompt), placement="add"))
    assert np.abs(got - ref).max() <= TOL
    assert np.abs(got - _torch_ref(t, ids, mask, batch, prompt)).max() > 2 * TOL  # not the replacing form
    inputs, suffix = llama.split_for_cache(batch, N + CUE)
    cache = llama.encode_inputs(cfg, params, inputs.input_ids_BxL, inputs.attention_mask_BxL)
    cached = llama.label_logits_cached(cfg, params, cache, suffix, jnp.asarray(VERB), jnp.asarray(prompt), mode="add")
    assert np.abs(np.asarray(cached) - ref).max() <= TOL


def test_parity_with_layer_prompt(models):
    t, (cfg, params) = models
    ids, mask, batch = _batch()
    rng = np.random.default_rng(2)
    prompt, lp = rng.normal(size=(N, D)).astype(np.float32), rng.normal(size=(2, N, D)).astype(np.float32)
    ref = _torch_ref(t, ids, mask, batch, prompt, lp)
    got = np.asarray(llama.label_logits(cfg, params, batch, jnp.asarray(VERB), jnp.asarray(prompt), jnp.asarray(lp)))
    assert np.abs(got - ref).max() <= TOL


def test_cached_equals_uncached_under_vmap(models):
    _, (cfg, params) = models
    _, _, batch = _batch()
    inputs, suffix = llama.split_for_cache(batch, N + CUE)
    cache = llama.encode_inputs(cfg, params, inputs.input_ids_BxL, inputs.attention_mask_BxL)
    prompts = jax.random.normal(jax.random.PRNGKey(0), (4, N, D))
    cached = jax.vmap(lambda p: llama.label_logits_cached(cfg, params, cache, suffix, jnp.asarray(VERB), p))(prompts)
    for i in range(4):
        full = llama.label_logits(cfg, params, batch, jnp.asarray(VERB), prompts[i])
        assert np.abs(np.asarray(cached[i]) - np.asarray(full)).max() <= TOL
    assert np.ptp(np.asarray(cached[:, 0, 0])) > 10 * TOL  # prompts matter


def test_a_vmapped_group_of_caches_is_not_copied_per_call():
    """Several cells' input caches (sweep.py: a seed group, vmapped over cells, its population in chunks) are
    read in place: the compiled scorer's scratch memory stays far below the caches themselves (scanning the
    cache over layers made XLA copy all of it to put the cell axis behind the layer axis, every call). The
    shape keeps SmolLM2's proportion: a row's cache (layers x K/V width) dwarfs a member's attention scores."""
    cfg = llama.LlamaConfig(vocab_size=120, hidden_size=D, intermediate_size=64, num_hidden_layers=8,
                            num_attention_heads=2, num_key_value_heads=2)
    params = jax.eval_shape(lambda: llama.init_params(cfg, jax.random.PRNGKey(0)))
    S, P, B, L, R = 2, 4, 64, 256, N + CUE
    Y, Q, E = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    kv = jax.ShapeDtypeStruct((S, Y, B, L, Q, E), jnp.float32)
    cache = llama.InputCache(kv, kv, jax.ShapeDtypeStruct((S, B, L), jnp.int32))
    suffix = llama.Suffix(jax.ShapeDtypeStruct((S, B, R), jnp.int32), jax.ShapeDtypeStruct((S, B), jnp.int32), N)

    def cell(params, cache, suffix, prompts_PxNxD):
        def one(p):
            return llama.label_logits_cached(cfg, params, cache, suffix, jnp.asarray(VERB), p)

        return jax.lax.map(one, prompts_PxNxD, batch_size=2)

    scorer = jax.jit(jax.vmap(cell, in_axes=(None, 0, 0, 0)))
    memory = scorer.lower(params, cache, suffix, jax.ShapeDtypeStruct((S, P, N, D), jnp.float32)).compile()
    cache_bytes = 2 * np.prod(kv.shape) * 4
    assert memory.memory_analysis().temp_size_in_bytes < cache_bytes / 2  # scanned: 1.2x the caches


def test_config_allow_list():
    with pytest.raises(UserError, match="rope_scaling"):
        llama.LlamaConfig.from_hf_dict({"model_type": "llama", "rope_scaling": {"type": "linear"}}, "x")
    with pytest.raises(UserError, match="unsupported config key 'sliding_window'"):
        llama.LlamaConfig.from_hf_dict({"model_type": "llama", "sliding_window": 4}, "x")


def test_layer_inputs_equal_transformers_hidden_states(models):
    """BBTv2's statistics read every layer's input: transformers' hidden_states[:-1] (prompt replaced in)."""
    from bbt_jax.models.family import Layout

    t, (cfg, params) = models
    ids, mask, batch = _batch()
    prompt = np.random.default_rng(4).normal(size=(N, D)).astype(np.float32)
    emb = t.model.embed_tokens(torch.as_tensor(ids)).detach().clone()
    for b, s in enumerate(np.asarray(batch.prompt_start_B)):
        emb[b, s:s + N] = torch.as_tensor(prompt)
    with torch.no_grad():
        ref = t(inputs_embeds=emb, attention_mask=torch.as_tensor(mask), output_hidden_states=True).hidden_states
    layout = Layout(placement="suffix", template="", n_prompt=N, p0=prompt, splice="replace")
    got = np.asarray(llama.FAMILY.layer_inputs(cfg, params, batch, {"input": jnp.asarray(prompt),
                                                                  "layers": jnp.zeros((2, N, D))}, layout))
    keep = mask > 0  # padded positions differ (masked attention rows); BBTv2 never reads them
    for y in range(2):
        np.testing.assert_allclose(got[y][keep], ref[y].numpy()[keep], atol=TOL)
