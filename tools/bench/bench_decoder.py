"""SmolLM2 rows of `bbt-jax bench`: the decoder with and without the shared input cache,
and a sequential PyTorch LlamaForCausalLM reference loaded from the same GGUF.

Workload: sst2 16-shot seed 13 train rows, pop 20, placement "suffix"
(input + N soft vectors + the cue), N = 10, d = 500.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from bbt_jax import config as C
from bbt_jax import flops as F
from bbt_jax.bench import Row, timed


def _torch_llama_seconds(batch, prompts, threads: int) -> float:
    """Seconds per candidate: transformers' own GGUF loading, one candidate per call, the
    train rows in one batch padded to the longest, full forward, logits at the last token."""
    import torch
    from transformers import AutoModelForCausalLM

    from bbt_jax.models import gguf

    torch.set_num_threads(threads)
    path = gguf.smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 torch_dtype=torch.float32).eval()
    mask = torch.as_tensor(np.asarray(batch.attention_mask_BxL), dtype=torch.long)
    longest = int(mask.sum(1).max())
    ids = torch.as_tensor(np.asarray(batch.input_ids_BxL), dtype=torch.long)[:, :longest]
    mask = mask[:, :longest]
    starts = np.asarray(batch.prompt_start_B)
    answer = torch.as_tensor(np.asarray(batch.answer_pos_B), dtype=torch.long)
    rows = torch.arange(ids.shape[0])
    ts = []
    with torch.inference_mode():
        base = model.model.embed_tokens(ids)
        for p in prompts:
            t = time.perf_counter()
            emb = base.clone()
            pt = torch.as_tensor(np.asarray(p))
            for b, s in enumerate(starts):
                emb[b, s:s + pt.shape[0]] = pt
            h = model.model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
            model.lm_head(h[rows, answer])
            ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench_smollm2(*, data_dir, matmul: float, threads: int, ref_candidates: int, n_prompt: int = 10) -> list[Row]:
    from bbt_jax.backbone import Backbone, load_model
    from bbt_jax.evaluate import make_eval_data
    from bbt_jax.search import Search
    from bbt_jax.tasks import make_buckets, real_tokens
    from bbt_jax.train import build

    pop = 20
    cfg = C.override(C.demo(), placement="suffix", n_prompt_tokens=n_prompt, data_dir=str(data_dir), budget=pop * 10,
                     seed=13, task="sst2")
    model = load_model(cfg.model)
    exp = build(cfg, model=model, log=lambda s: None)
    mcfg, pad = model.config, model.vocab.pad_id
    buckets = make_buckets(exp.train_encoded, pad, num_buckets=cfg.prompt.num_buckets)  # = exp.train's, unprepared
    data_unc = make_eval_data(tuple(buckets), exp.train.labels_B, exp.train.weight_B)
    uncached = Backbone("llama", mcfg, "replace", 0)
    suffix_len = exp.backbone.suffix_len
    rows: list[Row] = []
    for name, bb, data in (("SmolLM2 fused, uncached", uncached, data_unc),
                           ("SmolLM2 fused, shared input cache", exp.backbone, exp.train)):
        search = Search(bb.score, metric="acc", config=cfg.search, intrinsic_dim=cfg.prompt.intrinsic_dim)
        gen = jax.jit(search._generation)
        compile_s, sec, _ = timed(gen, exp.frozen, exp.proj, data, search.es_params(), search.init(exp.key), repeats=2)
        shapes = [b.input_ids_BxL.shape for b in buckets]
        nrows = sum(B for B, _ in shapes)
        if bb.suffix_len:  # per member: only the suffix runs, attending to the cached input and itself
            fl = pop * sum(F.llama_config_flops(mcfg, B, suffix_len, L + suffix_len) for B, L in shapes)
            tok_real = tok_pad = pop * nrows * suffix_len
            note = f"N={n_prompt}; input K/V computed once per batch, outside the generation"
        else:
            fl = pop * sum(F.llama_config_flops(mcfg, B, L, L) for B, L in shapes)
            tok_pad, tok_real = pop * sum(B * L for B, L in shapes), pop * real_tokens(buckets)
            note = f"N={n_prompt}"
        rows.append(Row(name, "smollm2", pop, nrows, tok_real, tok_pad, sec, fl, compile_s=compile_s, note=note))
    rows[0].vs_uncached = 1.0
    rows[1].vs_uncached = rows[0].seconds_per_generation / rows[1].seconds_per_generation
    z = jax.random.normal(jax.random.PRNGKey(1), (ref_candidates, cfg.prompt.intrinsic_dim))
    prompts = [np.asarray(exp.proj.p0_NxD + (z[i] @ exp.proj.A_KxND).reshape(exp.proj.p0_NxD.shape))
               for i in range(ref_candidates)]
    b = make_buckets(exp.train_encoded, pad, num_buckets=1)[0]
    nrows, longest = b.input_ids_BxL.shape[0], int(np.asarray(b.attention_mask_BxL).sum(1).max())
    sec = _torch_llama_seconds(b, prompts, threads) * pop
    ref = Row("SmolLM2 torch reference (1 candidate/call)", "smollm2", pop, nrows, pop * real_tokens([b]),
              pop * nrows * longest, sec, pop * F.llama_config_flops(mcfg, nrows, longest, longest),
              note=f"transformers GGUF load, {ref_candidates} candidates timed, x{pop}")
    for r in rows:
        r.vs_bbt_reference = sec / r.seconds_per_generation
    return [*rows, ref]
