"""Parity of the Flax RoBERTa with transformers' PyTorch RobertaForMaskedLM (tiny random
config, fixed seed): no prompt, "add", "cat" and a per-layer prompt, with padding."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import RobertaConfig as HFConfig
from transformers import RobertaForMaskedLM

from bbt_jax.errors import UserError
from bbt_jax.models import roberta
from bbt_jax.types import TokenBatch

N, VERB = 4, np.array([1003, 1010, 1050], np.int32)
TOL = 1e-4


@pytest.fixture(scope="module")
def tmodel():
    torch.manual_seed(0)
    cfg = HFConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                   max_position_embeddings=64, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    m = RobertaForMaskedLM(cfg).eval()
    with torch.no_grad():  # a non-zero LM-head bias, so it is checked too
        m.lm_head.bias.normal_()
    return m


@pytest.fixture(scope="module")
def ours(tmodel):
    return roberta.from_hf(tmodel.config.to_dict(), {k: v.numpy() for k, v in tmodel.state_dict().items()}, "test")


def _rows(with_slots=True):
    """Three rows of different lengths: <s> [slots] text... <mask> </s>, right-padded with <pad>=1."""
    rng = np.random.default_rng(0)
    lens = [14, 9, 11]
    L = 16
    ids = np.ones((3, L), np.int64)
    mask = np.zeros((3, L), np.int64)
    answer = np.zeros(3, np.int64)
    for i, n in enumerate(lens):
        row = [0] + (list(range(1000, 1000 + N)) if with_slots else []) + list(rng.integers(4, 999, n - 3 - N))
        row += [1099, 2]  # 1099 plays <mask>
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        answer[i] = len(row) - 2
    return ids, mask, answer


def _batch(ids, mask, answer):
    B = ids.shape[0]
    return TokenBatch(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.ones(B, jnp.int32),
                      jnp.asarray(answer, jnp.int32), jnp.zeros(B, jnp.int32), jnp.ones(B, jnp.float32))


def _torch_logits(tmodel, ids, mask, answer, emb_hook=None, layer_prompts=None):
    hooks = []
    if emb_hook is not None:
        hooks.append(tmodel.roberta.embeddings.register_forward_hook(lambda m, i, o: emb_hook(o)))
    if layer_prompts is not None:
        for li, layer in enumerate(tmodel.roberta.encoder.layer):
            def pre(m, args, kwargs, li=li):
                h = args[0].clone() if args else kwargs["hidden_states"].clone()
                h[:, 1:1 + N] += torch.as_tensor(layer_prompts[li])
                return ((h,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
            hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = tmodel(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
    finally:
        for h in hooks:
            h.remove()
    return logits[torch.arange(ids.shape[0]), torch.as_tensor(answer)][:, VERB].numpy()


def _ours(ours, batch, prompt, placement="add", layer_prompt=None):
    cfg, params = ours
    return np.asarray(roberta.label_logits(cfg, params, batch, jnp.asarray(VERB), jnp.asarray(prompt), layer_prompt,
                                           placement=placement))


def test_no_prompt(tmodel, ours):
    ids, mask, answer = _rows()
    ref = _torch_logits(tmodel, ids, mask, answer)
    got = _ours(ours, _batch(ids, mask, answer), np.zeros((N, 32), np.float32))
    assert np.abs(got - ref).max() <= TOL


def test_add_placement(tmodel, ours):
    ids, mask, answer = _rows()
    prompt = 20 * np.random.default_rng(1).normal(size=(N, 32)).astype(np.float32)

    def add(o):
        o = o.clone()
        o[:, 1:1 + N] += torch.as_tensor(prompt)
        return o

    ref = _torch_logits(tmodel, ids, mask, answer, emb_hook=add)
    got = _ours(ours, _batch(ids, mask, answer), prompt)
    assert np.abs(got - ref).max() <= TOL
    assert np.abs(got - _ours(ours, _batch(ids, mask, answer), 0 * prompt)).max() > 10 * TOL  # the prompt matters


def test_cat_placement(tmodel, ours):
    """Reference: the input WITHOUT slots through torch, prompt vectors inserted after <s>
    at the embedding output, mask extended (bbt.py cat mode, with the vectors after <s>)."""
    ids, mask, answer = _rows(with_slots=False)
    prompt = np.random.default_rng(2).normal(size=(N, 32)).astype(np.float32)

    def cat(o):
        p = torch.as_tensor(prompt)[None].expand(o.shape[0], -1, -1)
        return torch.cat([o[:, :1], p, o[:, 1:]], 1)

    mask_ext = np.concatenate([mask[:, :1], np.ones((3, N), np.int64), mask[:, 1:]], 1)
    hook = tmodel.roberta.embeddings.register_forward_hook(lambda m, i, o: cat(o))
    try:
        with torch.no_grad():
            h = tmodel.roberta.embeddings(input_ids=torch.as_tensor(ids))
            # additive 4D mask, as HF's eager/sdpa attention adds it to the scores
            ext = (1.0 - torch.as_tensor(mask_ext, dtype=torch.float32))[:, None, None, :] * torch.finfo(torch.float32).min
    finally:
        hook.remove()
    with torch.no_grad():
        for layer in tmodel.roberta.encoder.layer:
            out = layer(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out
        ref = tmodel.lm_head(h[torch.arange(3), torch.as_tensor(answer + N)])[:, VERB].numpy()
    # ours: slots (any ids) after <s>, replaced by the prompt; positions skip them
    ids_slots = np.concatenate([ids[:, :1], np.full((3, N), 1000), ids[:, 1:]], 1)
    got = _ours(ours, _batch(ids_slots, mask_ext, answer + N), prompt, placement="cat")
    assert np.abs(got - ref).max() <= TOL


def test_cat_before_bos_as_bbt_py(tmodel, ours):
    """bbt.py's cat mode: the prompt vectors concatenated BEFORE the embedding output of the whole
    input (<s> included), no position embedding, mask extended (modeling_roberta.py torch.cat)."""
    ids, mask, answer = _rows(with_slots=False)
    prompt = np.random.default_rng(4).normal(size=(N, 32)).astype(np.float32)
    mask_ext = np.concatenate([np.ones((3, N), np.int64), mask], 1)
    hook = tmodel.roberta.embeddings.register_forward_hook(
        lambda m, i, o: torch.cat([torch.as_tensor(prompt)[None].expand(o.shape[0], -1, -1), o], 1))
    try:
        with torch.no_grad():
            h = tmodel.roberta.embeddings(input_ids=torch.as_tensor(ids))
    finally:
        hook.remove()
    ext = (1.0 - torch.as_tensor(mask_ext, dtype=torch.float32))[:, None, None, :] * torch.finfo(torch.float32).min
    with torch.no_grad():
        for layer in tmodel.roberta.encoder.layer:
            out = layer(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out
        ref = tmodel.lm_head(h[torch.arange(3), torch.as_tensor(answer + N)])[:, VERB].numpy()
    ids_slots = np.concatenate([np.full((3, N), 1000), ids], 1)
    batch = TokenBatch(jnp.asarray(ids_slots, jnp.int32), jnp.asarray(mask_ext, jnp.int32), jnp.zeros(3, jnp.int32),
                       jnp.asarray(answer + N, jnp.int32), jnp.zeros(3, jnp.int32), jnp.ones(3, jnp.float32))
    got = _ours(ours, batch, prompt, placement="cat")
    assert np.abs(got - ref).max() <= TOL
    # The vectors carry no position, and attention is order-free but for positions: the same model with the
    # vectors right after <s> (our layout before bbt-jax 0.2) gives the same logits.
    after = np.concatenate([ids[:, :1], np.full((3, N), 1000), ids[:, 1:]], 1)
    other = _ours(ours, _batch(after, mask_ext, answer + N), prompt, placement="cat")
    assert np.abs(other - ref).max() <= TOL
    assert np.abs(got - _ours(ours, batch, 0 * prompt, placement="cat")).max() > 10 * TOL  # the prompt matters


def test_lm_head_bias_as_bbt_py_leaves_it(tmodel):
    """bbt.py sets `lm_head.bias = Parameter(zeros)`; the head's forward adds decoder.bias, which keeps the
    pretrained bias. Converting that model gives the bias it really runs with; zeroing is our option."""
    import copy

    m = copy.deepcopy(tmodel)
    m.lm_head.bias = torch.nn.parameter.Parameter(torch.zeros(m.config.vocab_size))  # bbt.py line 199
    ids, mask, answer = _rows()
    with torch.no_grad():
        ref = m(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
    ref = ref[torch.arange(3), torch.as_tensor(answer)][:, VERB].numpy()
    cfg, params = roberta.from_hf(m.config.to_dict(), {k: v.numpy() for k, v in m.state_dict().items()}, "test")
    batch, zero = _batch(ids, mask, answer), np.zeros((N, 32), np.float32)
    kept = roberta.FAMILY.head_params(params, False)
    got = np.asarray(roberta.label_logits(cfg, kept, batch, jnp.asarray(VERB), jnp.asarray(zero)))
    assert np.abs(got - ref).max() <= TOL
    zeroed = roberta.FAMILY.head_params(params, True)
    got0 = np.asarray(roberta.label_logits(cfg, zeroed, batch, jnp.asarray(VERB), jnp.asarray(zero)))
    bias_C = tmodel.lm_head.decoder.bias.detach().numpy()[VERB]
    np.testing.assert_allclose(got0, ref - bias_C[None], atol=TOL)
    assert np.abs(bias_C).max() > 10 * TOL


def test_layer_prompt(tmodel, ours):
    ids, mask, answer = _rows()
    rng = np.random.default_rng(3)
    prompt = rng.normal(size=(N, 32)).astype(np.float32)
    layer_prompt = rng.normal(size=(3, N, 32)).astype(np.float32)

    def add(o):
        o = o.clone()
        o[:, 1:1 + N] += torch.as_tensor(prompt)
        return o

    ref = _torch_logits(tmodel, ids, mask, answer, emb_hook=add, layer_prompts=layer_prompt)
    got = _ours(ours, _batch(ids, mask, answer), prompt, layer_prompt=jnp.asarray(layer_prompt))
    assert np.abs(got - ref).max() <= TOL


def test_vmap_over_prompts_equals_single_calls(ours):
    ids, mask, answer = _rows()
    batch = _batch(ids, mask, answer)
    prompts = jax.random.normal(jax.random.PRNGKey(0), (3, N, 32))
    cfg, params = ours
    pop = jax.vmap(lambda p: roberta.label_logits(cfg, params, batch, jnp.asarray(VERB), p))(prompts)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(pop[i]), _ours(ours, batch, prompts[i]), atol=1e-5)


def test_full_logits_agree_with_verbalizer_rows(ours):
    ids, mask, answer = _rows()
    cfg, params = ours
    batch = _batch(ids, mask, answer)
    prompt = jnp.zeros((N, 32))
    full = np.asarray(roberta.full_logits_at(cfg, params, batch, prompt))
    assert full.shape == (3, 1100)
    np.testing.assert_allclose(full[:, VERB], _ours(ours, batch, prompt), atol=1e-5)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_checkpoint_dir_round_trip(tmodel, ours, tmp_path, fmt):
    if fmt == "safetensors":
        tmodel.save_pretrained(tmp_path, safe_serialization=True)
    else:
        tmodel.config.save_pretrained(tmp_path)
        torch.save(tmodel.state_dict(), tmp_path / "pytorch_model.bin")
    cfg, params = roberta.load(str(tmp_path))
    ids, mask, answer = _rows()
    batch = _batch(ids, mask, answer)
    prompt = np.zeros((N, 32), np.float32)
    np.testing.assert_allclose(_ours((cfg, params), batch, prompt), _ours(ours, batch, prompt), atol=1e-6)


def test_config_allow_list(tmp_path):
    shared = __import__("tests.conftest", fromlist=["SHARED"]).SHARED / "models" / "roberta-tokenizer"
    for name in ("config-roberta-base.json", "config-roberta-large.json"):
        if (shared / name).is_file():
            cfg = roberta.RobertaConfig.from_hf_dict(json.loads((shared / name).read_text()), name)
            assert cfg == roberta.preset(name.removeprefix("config-").removesuffix(".json"))
    with pytest.raises(UserError, match="unsupported config key 'rope_scaling'"):
        roberta.RobertaConfig.from_hf_dict({"model_type": "roberta", "rope_scaling": None, "vocab_size": 5}, "x")
    with pytest.raises(UserError, match="position_embedding_type"):
        roberta.RobertaConfig.from_hf_dict({"model_type": "roberta", "position_embedding_type": "relative_key"}, "x")
    with pytest.raises(UserError, match="unknown RoBERTa preset"):
        roberta.preset("nope")


def test_layer_inputs_equal_transformers_hidden_states(tmodel, ours):
    """BBTv2's statistics read every layer's input: transformers' hidden_states[:-1] (no layer prompt)."""
    ids, mask, _ = _rows()
    cfg, params = ours
    with torch.no_grad():
        ref = tmodel(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                     output_hidden_states=True).hidden_states
    prompt = {"input": jnp.zeros((N, 32)), "layers": jnp.zeros((3, N, 32))}
    got = np.asarray(roberta.FAMILY.layer_inputs(cfg, params, _batch(ids, mask, np.zeros(3, np.int64)), prompt,
                                                 _layout()))
    assert got.shape == (3, 3, 16, 32)
    for y in range(3):
        np.testing.assert_allclose(got[y], ref[y].numpy(), atol=TOL)


def _layout():
    from bbt_jax.models.family import Layout

    return Layout(placement="add", template="", n_prompt=N, p0=np.zeros((N, 32), np.float32), splice="add")
