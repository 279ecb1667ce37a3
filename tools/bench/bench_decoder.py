"""SmolLM2 rows of `python -m tools.bench`: the decoder with and without the shared input cache,
the demo's own workload (cue placement) with its ES overhead, and a sequential PyTorch
LlamaForCausalLM reference loaded from the same GGUF.

Workload: sst2 16-shot seed 13 train rows (32), pop 20, placement "suffix"
(input + N soft vectors + the cue), N = 10, d = 500; the demo row: the demo preset
(placement "cue", pop 20, d = 500). --quick: a tiny random Llama with SmolLM2's tokenizer,
suffix rows at pop 4, d = 16 (the demo row keeps pop 20, d = 500: the ES is the point there).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from bbt_jax import config as C
from tools.bench import flops as F
from tools.bench.bench import Row, _sync, es_overhead, quiet, time_generation, torch_device


def tiny_llama_model():
    """A tiny random Llama (tiny-llama's shape) over SmolLM2's own tokenizer, read from the GGUF."""
    import gguf as gguf_pkg

    from bbt_jax.models import gguf, llama
    from bbt_jax.models.family import LoadedModel

    reader = gguf_pkg.GGUFReader(str(gguf.smollm2_path()))
    tok = gguf.read_tokenizer(reader)
    smol = gguf.read_config(reader, llama.LlamaConfig)
    config = dataclasses.replace(llama.preset("tiny-llama"), vocab_size=tok.get_vocab_size(),
                                 pad_token_id=smol.pad_token_id, eos_token_id=smol.eos_token_id)
    params = llama.init_params(config, jax.random.PRNGKey(0))
    return LoadedModel(llama.FAMILY, config, params, llama.make_vocab(tok, config), "tiny-llama (bench)", True)


def _torch_llama(quick: bool, config):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from bbt_jax.models import gguf

    if quick:  # random weights of the tiny shape: the timing path, not parity
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                                            intermediate_size=config.intermediate_size,
                                            num_hidden_layers=config.num_hidden_layers,
                                            num_attention_heads=config.num_attention_heads,
                                            num_key_value_heads=config.num_key_value_heads,
                                            tie_word_embeddings=True)).eval()
    path = gguf.smollm2_path()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                torch_dtype=torch.float32).eval()


def _torch_llama_seconds(model, batch, prompts, threads: int, device: str = "cpu") -> float:
    """Seconds per candidate: one candidate per call, the train rows in one batch padded to the
    longest, full forward, logits at the last token."""
    import torch

    torch.set_num_threads(threads)
    model = model.to(device)
    mask = torch.as_tensor(np.asarray(batch.attention_mask_BxL), dtype=torch.long)
    longest = int(mask.sum(1).max())
    ids = torch.as_tensor(np.asarray(batch.input_ids_BxL), dtype=torch.long)[:, :longest].to(device)
    mask = mask[:, :longest].to(device)
    starts = np.asarray(batch.prompt_start_B)
    answer = torch.as_tensor(np.asarray(batch.answer_pos_B), dtype=torch.long).to(device)
    rows = torch.arange(ids.shape[0], device=device)
    ts = []
    with torch.inference_mode():
        base = model.model.embed_tokens(ids)
        for i, p in enumerate([prompts[0], *prompts]):  # the first call warms up
            _sync(device)
            t = time.perf_counter()
            emb = base.clone()
            pt = torch.as_tensor(np.asarray(p)).to(device=device, dtype=emb.dtype)
            for b, s in enumerate(starts):
                emb[b, s:s + pt.shape[0]] = pt
            h = model.model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
            model.lm_head(h[rows, answer])
            _sync(device)
            if i:
                ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench_smollm2(*, data_dir, matmul: float, threads: int, ref_candidates: int, n_prompt: int = 10,
                  quick: bool = False):
    """Returns (rows, es_rows): cached vs uncached suffix rows, the demo row, the torch reference;
    the demo's ES overhead."""
    from bbt_jax.fitness import make_fitness
    from bbt_jax.harness import build
    from bbt_jax.models.family import Backbone
    from bbt_jax.models.registry import load
    from bbt_jax.tasks import make_buckets, real_tokens

    label = "tiny-llama" if quick else "smollm2"
    model = tiny_llama_model() if quick else load("smollm2")
    pop, dim = (4, 16) if quick else (20, 500)
    cfg = C.override(C.demo(), placement="suffix", n_prompt_tokens=n_prompt, data_dir=str(data_dir), budget=pop * 10,
                     popsize=pop, intrinsic_dim=dim, seed=13, task="sst2")
    h = build(cfg, model=model, log=quiet)
    mcfg = model.config
    buckets = h.buckets("train")
    uncached = Backbone(h.backbone.family, mcfg, dataclasses.replace(h.layout, suffix_len=0))
    fit_unc = make_fitness(uncached, h.frozen, buckets, loss=cfg.search.loss, metric=h.task.metric)
    suffix_len = h.layout.suffix_len
    shapes = [b.input_ids_BxL.shape for b in buckets]
    nrows = sum(B for B, _ in shapes)
    rows: list[Row] = []
    for name, fitness in (("SmolLM2 fused, uncached", fit_unc), ("SmolLM2 fused, shared input cache", None)):
        compile_s, sec = time_generation(h, fitness, repeats=2)
        if fitness is None:  # per member: only the suffix runs, attending to the cached input and itself
            fl = pop * sum(F.llama_config_flops(mcfg, B, suffix_len, L + suffix_len) for B, L in shapes)
            tok_real = tok_pad = pop * nrows * suffix_len
            note = f"N={n_prompt}, d={dim}; input K/V computed once per batch, outside the generation"
        else:
            fl = pop * sum(F.llama_config_flops(mcfg, B, L, L) for B, L in shapes)
            tok_pad, tok_real = pop * sum(B * L for B, L in shapes), pop * real_tokens(buckets)
            note = f"N={n_prompt}, d={dim}"
        rows.append(Row(name, label, pop, nrows, tok_real, tok_pad, sec, fl, compile_s=compile_s, note=note))
    rows[0].vs_uncached = 1.0
    rows[1].vs_uncached = rows[0].seconds_per_generation / rows[1].seconds_per_generation

    # the demo's own workload (cue placement, pop 20, d = 500) and the ES's share of it
    demo = build(C.override(C.demo(), data_dir=str(data_dir)), model=model, log=quiet)
    compile_s, sec = time_generation(demo, None, repeats=2)
    dshapes = [b.input_ids_BxL.shape for b in demo.buckets("train")]
    dsl, dpop = demo.layout.suffix_len, demo.cfg.search.popsize
    drows = sum(B for B, _ in dshapes)
    rows.append(Row("SmolLM2 demo (cue placement, shared input cache)", label, dpop, drows, dpop * drows * dsl,
                    dpop * drows * dsl, sec,
                    dpop * sum(F.llama_config_flops(mcfg, B, dsl, L + dsl) for B, L in dshapes), compile_s=compile_s,
                    note=f"demo preset: N={demo.layout.n_prompt} (the cue), d={demo.cfg.prompt.intrinsic_dim}"))
    es_rows = [es_overhead(demo, sec, f"demo ({label}, cue, sst2 {demo.rows('train')} rows)", label)]
    # BBTv2 at the demo shape: one layer's strategy per generation (sequential) or every layer's (parallel)
    for schedule in ("sequential", "parallel"):
        deep = build(C.override(demo.cfg, method="bbtv2", layer_schedule=schedule, budget=dpop * 40),
                     model=model, log=quiet)
        compile_s, sec = time_generation(deep, None, repeats=2)
        nl = deep.backbone.num_layers
        rows.append(Row(f"SmolLM2 demo, BBTv2 {schedule} ({nl} layer prompts)", label, dpop, drows,
                        dpop * drows * dsl, dpop * drows * dsl, sec,
                        dpop * sum(F.llama_config_flops(mcfg, B, dsl, L + dsl) for B, L in dshapes),
                        compile_s=compile_s, note=f"demo shape, a z of d={deep.cfg.prompt.intrinsic_dim} per layer; "
                        f"{'1' if schedule == 'sequential' else str(nl)} strategy ask/tell per generation"))
        es_rows.append(es_overhead(deep, sec, f"demo BBTv2 {schedule} ({label}, {nl} layers)", label))

    # the PyTorch reference
    z = jax.random.normal(jax.random.PRNGKey(1), (ref_candidates, dim))
    prompts = [np.asarray(h.projection(z[i]), np.float32) for i in range(ref_candidates)]
    b = make_buckets(h.encoded["train"], model.vocab.pad_id, num_buckets=1)[0]
    nrows, longest = b.input_ids_BxL.shape[0], int(np.asarray(b.attention_mask_BxL).sum(1).max())
    device = torch_device()
    sec = _torch_llama_seconds(_torch_llama(quick, mcfg), b, prompts, threads, device) * pop
    src = "random weights of the tiny shape" if quick else "transformers GGUF load"
    ref = Row("SmolLM2 torch reference (1 candidate/call)", label, pop, nrows, pop * real_tokens([b]),
              pop * nrows * longest, sec, pop * F.llama_config_flops(mcfg, nrows, longest, longest),
              note=f"{src}, {ref_candidates} candidates timed, x{pop}; {device}")
    for r in rows[:2]:
        r.vs_bbt_reference = sec / r.seconds_per_generation
    return [*rows, ref], es_rows
