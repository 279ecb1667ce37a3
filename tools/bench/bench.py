"""`bbt-jax bench`: throughput measured side by side, in one process and one run.

Rows (each its own measurement, so every saving is visible):
  * the machine's dense fp32 matmul rate (jnp.dot, large square, median of repeats);
  * ours: steady-state fused generations (ask + population evaluation + tell, one
    compiled call) after compilation, which is reported separately;
  * "bbt" reference: PyTorch, the original's way — one candidate per call, the whole
    train set in one batch padded to its longest row, LM head at the mask position
    over the full vocabulary; "stock": transformers' RobertaForMaskedLM as is (LM
    head over every position). References time a few candidates and scale to the
    population (stated in the row);
  * variants of ours that undo one saving each (no length buckets, full-vocab head,
    bf16), and the decoder with and without the shared input cache;
  * population scaling (chunked inside the jit) and sweeps (vmapped searches).
Every figure is a ratio taken in this run on this machine; accelerator numbers in
BENCHMARKS.md are projections from counted FLOPs.

Shape letters: P population, B rows, L length, K intrinsic dim, N prompt, C classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax import config as C
from bbt_jax import flops as F


def matmul_gflops(n: int = 2048, repeats: int = 7, dtype=jnp.float32) -> float:
    """Median rate of a large square jnp.dot on this device, GFLOP/s."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(ts)) / 1e9


def timed(fn, *args, repeats: int = 3):
    """(compile seconds, median seconds of `repeats` executions, last output) of a jitted function.
    Compilation is timed on its own (ahead of time), so no execution is mixed into it."""
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        ts.append(time.perf_counter() - t)
    return compile_s, float(np.median(ts)), out


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM of the current address space (getrusage's
    ru_maxrss would carry the parent's high-water mark over fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot (Linux), to report the share a hypervisor took."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before, after) -> float | None:
    """Fraction of CPU time stolen by the hypervisor between two `cpu_ticks()` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


@dataclasses.dataclass
class Row:
    name: str
    model: str
    pop: int
    batch: int
    tokens_real: int
    tokens_padded: int
    seconds_per_generation: float
    flops_per_generation: float | None = None
    gflops_achieved: float | None = None
    utilisation: float | None = None
    vs_bbt_reference: float | None = None
    vs_stock_reference: float | None = None
    vs_uncached: float | None = None
    compile_s: float | None = None
    tokens_real_per_s: float | None = None
    tokens_padded_per_s: float | None = None
    note: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def finish(self, matmul: float) -> Row:
        self.tokens_real_per_s = self.tokens_real / self.seconds_per_generation
        self.tokens_padded_per_s = self.tokens_padded / self.seconds_per_generation
        if self.flops_per_generation:
            self.gflops_achieved = self.flops_per_generation / self.seconds_per_generation / 1e9
            self.utilisation = self.gflops_achieved / matmul
        return self


def format_table(rows: list[Row]) -> str:
    head = ("name", "model", "pop", "batch", "tok real", "tok pad", "s/gen", "GFLOP/s", "util", "vs bbt",
            "vs stock", "vs uncached", "compile s", "note")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]

    def f(x, fmt):
        return "" if x is None else format(x, fmt)

    for r in rows:
        lines.append(" | ".join([r.name, r.model, str(r.pop), str(r.batch), str(r.tokens_real), str(r.tokens_padded),
                                 f(r.seconds_per_generation, ".3f"), f(r.gflops_achieved, ".1f"),
                                 f(r.utilisation, ".0%"), f(r.vs_bbt_reference, ".2f"),
                                 f(r.vs_stock_reference, ".2f"), f(r.vs_uncached, ".2f"), f(r.compile_s, ".1f"),
                                 r.note]))
    return "\n".join("| " + ln + " |" for ln in lines)


# ----------------------------------------------------------------------------- RoBERTa
def _torch_roberta(config, seed: int = 0):
    """A transformers RobertaForMaskedLM of our config's shape, random weights, eval mode."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    hf_cfg = RobertaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                           num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                           intermediate_size=config.intermediate_size,
                           max_position_embeddings=config.max_position_embeddings,
                           type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
                           pad_token_id=config.pad_token_id)
    hf_cfg._attn_implementation = "sdpa"
    return RobertaForMaskedLM(hf_cfg).eval()


def _loaded_roberta_from_torch(tmodel, tokenizer_path):
    from bbt_jax.backbone import LoadedModel, _load_tokenizer
    from bbt_jax.models import roberta
    from bbt_jax.tasks import roberta_vocab

    sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    config, params = roberta.from_hf(tmodel.config.to_dict(), sd, "bench")
    vocab = roberta_vocab(_load_tokenizer(tokenizer_path, "bench"))
    return LoadedModel("roberta", config, params, vocab, "random weights (bench)")


def _torch_reference_seconds(tmodel, batch, prompts, *, head: str, threads: int) -> float:
    """Seconds per candidate of a sequential PyTorch loop (median over `prompts`)."""
    import torch

    torch.set_num_threads(threads)
    ids = torch.as_tensor(np.asarray(batch.input_ids_BxL), dtype=torch.long)
    mask = torch.as_tensor(np.asarray(batch.attention_mask_BxL), dtype=torch.long)
    lengths = mask.sum(1)
    longest = int(lengths.max())
    ids, mask = ids[:, :longest], mask[:, :longest]  # the original pads to the longest row
    start = int(np.asarray(batch.prompt_start_B)[0])
    answer = torch.as_tensor(np.asarray(batch.answer_pos_B), dtype=torch.long)
    rows = torch.arange(ids.shape[0])
    ts = []
    with torch.inference_mode():
        for p in prompts:
            p = torch.as_tensor(np.asarray(p))
            hook = tmodel.roberta.embeddings.register_forward_hook(
                lambda m, i, o, p=p: torch.cat([o[:, :start], o[:, start:start + p.shape[0]] + p,
                                                o[:, start + p.shape[0]:]], 1))
            t = time.perf_counter()
            if head == "stock":
                logits = tmodel(input_ids=ids, attention_mask=mask).logits  # B x L x V
                logits[rows, answer]
            else:
                h = tmodel.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
                tmodel.lm_head(h[rows, answer])  # B x V, the answer position only (bbt.py's model)
            ts.append(time.perf_counter() - t)
            hook.remove()
    return float(np.median(ts))


ROBERTA_VARIANTS = (  # (name, config overrides, head); the first is ours as shipped
    ("ours (4 buckets, verbalizer head)", {}, "verbalizer"),
    ("ours, 1 bucket (padded to longest)", {"num_buckets": 1}, "verbalizer"),
    ("ours, full-vocab head at mask", {}, "mask_vocab"),
    ("ours, bf16 compute", {"dtype": "bfloat16"}, "verbalizer"),
    ("ours, population in chunks of 4", {"pop_chunk": 4}, "verbalizer"),
)


def _roberta_setup(shape: str, *, tokenizer_path, data_dir, quick: bool):
    from bbt_jax.models import roberta

    config = roberta.preset(shape)
    tmodel = _torch_roberta(config)
    model = _loaded_roberta_from_torch(tmodel, tokenizer_path)
    pop = 20 if not quick else 4
    base = C.override(C.paper(), model=shape, task="sst2", seed=13, data_dir=str(data_dir), popsize=pop,
                      budget=pop * 10, n_prompt_tokens=50 if not quick else 8, intrinsic_dim=500 if not quick else 16)
    return config, tmodel, model, base, pop


def _time_variant(exp, head: str, repeats: int):
    """(compile s, steady s/generation) of one fused generation of `exp` with the given head."""
    score = exp.backbone.score if head == "verbalizer" else _full_vocab_scorer(exp)
    gen = _generation_fn(exp, score)
    compile_s, sec, _ = timed(gen, exp.frozen, exp.proj, exp.train, exp.search.es_params(),
                              exp.search.init(exp.key), repeats=repeats)
    return compile_s, sec


def bench_roberta(shape: str, *, tokenizer_path, data_dir, quick: bool, matmul: float, ref_candidates: int,
                  threads: int, variants=ROBERTA_VARIANTS, repeats: int = 1, xla_defaults: bool = False
                  ) -> list[Row]:
    from bbt_jax.evaluate import population_fitness
    from bbt_jax.tasks import make_buckets, real_tokens
    from bbt_jax.train import build

    config, tmodel, model, base, pop = _roberta_setup(shape, tokenizer_path=tokenizer_path, data_dir=data_dir,
                                                     quick=quick)
    rows: list[Row] = []
    losses = {}
    exp = None
    for name, over, head in variants:
        exp = build(C.override(base, **over), model=model, log=lambda s: None)
        compile_s, sec = _time_variant(exp, head, repeats if not quick else 2)
        if head == "verbalizer" and set(over) <= {"dtype"}:  # fp32 (as shipped) vs bf16 on the same candidates
            z = jax.random.normal(jax.random.PRNGKey(1), (min(pop, 4), exp.proj.A_KxND.shape[0]))
            loss_fn = jax.jit(lambda fr, pr, z, d, exp=exp: population_fitness(exp.backbone.score, "ce", "acc", fr, pr,
                                                                              z, d)[0])
            losses[over.get("dtype", "float32")] = np.asarray(loss_fn(exp.frozen, exp.proj, z, exp.train))
        buckets = exp.train.inputs
        fl = pop * sum(F.roberta_config_flops(config, b.input_ids_BxL.shape[0], b.input_ids_BxL.shape[1], head=head)
                       for b in buckets)
        rows.append(Row(name, shape, pop, int(exp.train.weight_B.sum()), real_tokens(buckets) * pop,
                        sum(int(b.input_ids_BxL.size) for b in buckets) * pop, sec, fl, compile_s=compile_s))
        if over.get("dtype") == "bfloat16":
            diff = float(np.max(np.abs(losses["bfloat16"] - losses["float32"])))
            rows[-1].extra["max_abs_loss_diff_vs_fp32"] = diff
            rows[-1].note = f"max |loss bf16 - fp32| = {diff:.2e} over {len(losses['float32'])} candidates"
    if xla_defaults:
        rows.insert(1, _xla_defaults_row(shape, quick, rows[0]))

    # PyTorch references on the same weights, data and candidates (train rows in one batch).
    batch = make_buckets(exp.train_encoded, model.vocab.pad_id, num_buckets=1)[0]
    z = jax.random.normal(jax.random.PRNGKey(2), (ref_candidates, exp.proj.A_KxND.shape[0]))
    prompts = [np.asarray(exp.proj.p0_NxD + (z[i] @ exp.proj.A_KxND).reshape(exp.proj.p0_NxD.shape))
               for i in range(ref_candidates)]
    longest = int(np.asarray(batch.attention_mask_BxL).sum(1).max())
    nrows = batch.input_ids_BxL.shape[0]
    for name, head in (("bbt reference (torch, 1 candidate/call)", "mask_vocab"), ("stock reference (torch)", "stock")):
        sec = _torch_reference_seconds(tmodel, batch, prompts, head=head, threads=threads) * pop
        fl = pop * F.roberta_config_flops(config, nrows, longest, head=head)
        rows.append(Row(name, shape, pop, nrows, real_tokens([batch]) * pop, nrows * longest * pop, sec, fl,
                        note=f"{ref_candidates} candidates timed (median), x{pop}"))
    bbt_s, stock_s = rows[-2].seconds_per_generation, rows[-1].seconds_per_generation
    for r in rows[:-2]:
        r.vs_bbt_reference = bbt_s / r.seconds_per_generation
        r.vs_stock_reference = stock_s / r.seconds_per_generation
    return [r.finish(matmul) for r in rows]


def xla_defaults_child(shape: str, quick: bool) -> dict:
    """Run in a fresh process started with XLA's own defaults: ours as shipped, seconds per generation."""
    from bbt_jax.cli import shared_path
    from bbt_jax.train import build

    _, _, model, base, _ = _roberta_setup(shape, tokenizer_path=shared_path("models/roberta-tokenizer/tokenizer.json"),
                                          data_dir=shared_path("data"), quick=quick)
    exp = build(base, model=model, log=lambda s: None)
    compile_s, sec = _time_variant(exp, "verbalizer", 1 if not quick else 2)
    return {"seconds_per_generation": sec, "compile_s": compile_s, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "matmul_gflops": matmul_gflops(1024 if quick else 2048)}


def _xla_defaults_row(shape: str, quick: bool, ours: Row) -> Row:
    """Ours as shipped, but in a child process with XLA's CPU defaults (our flags off)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["BBT_JAX_XLA_DEFAULTS"] = "0"
    r = subprocess.run([sys.executable, "-m", "bbt_jax", "bench", "--xla-child", shape] + (["--quick"] if quick else []),
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    child = json.loads(r.stdout.strip().splitlines()[-1])
    return dataclasses.replace(ours, name="ours, XLA's default CPU flags",
                               seconds_per_generation=child["seconds_per_generation"], compile_s=child["compile_s"],
                               extra={"xla_flags": child["xla_flags"], "matmul_gflops": child["matmul_gflops"]},
                               note="child process without our XLA_FLAGS defaults; util vs this run's matmul rate")


def _full_vocab_scorer(exp):
    """Scorer that computes the full-vocab head at the mask, then keeps the verbalizer columns."""
    from bbt_jax.models import roberta

    def score(frozen, inputs, prompt_NxD):
        prompt_NxD = prompt_NxD.astype(roberta.word_embeddings(frozen["params"]).dtype)
        out = [roberta.full_logits_at(exp.backbone.config, frozen["params"], b, prompt_NxD,
                                      placement=exp.backbone.placement)[:, frozen["verbalizer"]] for b in inputs]
        return jnp.concatenate(out, 0).astype(jnp.float32)

    return score


def _generation_fn(exp, score):
    """One fused generation (ask + population evaluation + tell) as its own jitted call."""
    from bbt_jax.search import Search

    search = Search(score, metric=exp.task.metric, config=exp.cfg.search, intrinsic_dim=exp.cfg.prompt.intrinsic_dim)
    return jax.jit(search._generation)


# ----------------------------------------------------------------------------- population / sweeps
def pop_scaling_child(pop: int, chunk: int, quick: bool) -> dict:
    """Run in a fresh process (peak RSS is per process): time per member at one population size."""
    from bbt_jax.backbone import Backbone, make_frozen
    from bbt_jax.evaluate import make_eval_data, population_fitness
    from bbt_jax.models import roberta
    from bbt_jax.prompt import make_projection
    from bbt_jax.types import TokenBatch

    cfg = roberta.preset("tiny")
    params = roberta.init_params(cfg, jax.random.PRNGKey(0))
    B, L, N, K = (32, 48, 8, 64) if not quick else (8, 24, 4, 16)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 1000, (B, L)).astype(np.int32)
    batch = TokenBatch(ids, np.ones((B, L), np.int32), np.ones(B, np.int32), np.full(B, L - 2, np.int32),
                       rng.integers(0, 2, B).astype(np.int32), np.ones(B, np.float32))
    data = make_eval_data((batch,), batch.labels_B, batch.weight_B)
    frozen = make_frozen(params, np.array([10, 20], np.int32))
    proj = make_projection(jax.random.PRNGKey(1), intrinsic_dim=K, p0_NxD=np.zeros((N, cfg.hidden_size)),
                           embed_std=0.02)
    bb = Backbone("roberta", cfg, "add")
    fn = jax.jit(lambda fr, pr, z, d: population_fitness(bb.score, "ce", "acc", fr, pr, z, d, chunk=chunk)[0])
    z = jax.random.normal(jax.random.PRNGKey(2), (pop, K))
    rss0 = peak_rss_mb()
    compile_s, sec, _ = timed(fn, frozen, proj, z, data, repeats=3)
    return {"pop": pop, "chunk": chunk, "seconds": sec, "per_member_ms": 1000 * sec / pop, "compile_s": compile_s,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0, "tokens": B * L}


def bench_population(quick: bool) -> list[dict]:
    """Time per member and peak RSS at growing populations, chunked inside the jit; the largest
    population once more unchunked, to show what the chunk bounds. One fresh process per size."""
    chunk = 20 if not quick else 8
    runs = [(20, chunk), (200, chunk), (2000, chunk), (2000, 0)] if not quick else [(8, chunk), (32, chunk), (32, 0)]
    out = []
    for pop, ch in runs:
        r = subprocess.run([sys.executable, "-m", "bbt_jax", "bench", "--pop-child", str(pop), "--chunk", str(ch)]
                           + (["--quick"] if quick else []), capture_output=True, text=True, env=os.environ.copy())
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def bench_sweep(quick: bool, data_dir, tokenizer_path) -> dict:
    """S=8 searches vmapped into one call vs the same 8 run one after another."""
    from bbt_jax.prompt import make_projection
    from bbt_jax.sweep import Sweep
    from bbt_jax.train import build

    S = 8
    cfg = C.override(C.tiny(), data_dir=str(data_dir), popsize=8, budget=8 * (4 if quick else 10), eval_every=16)
    exp = build(cfg, default_tokenizer=tokenizer_path, log=lambda s: None)
    word = exp.backbone.word_embeddings(exp.frozen["params"])
    from bbt_jax.prompt import embedding_std

    projs = [make_projection(jax.random.PRNGKey(s), intrinsic_dim=cfg.prompt.intrinsic_dim, p0_NxD=exp.proj.p0_NxD,
                             embed_std=embedding_std(word)) for s in range(S)]
    projs_S = jax.tree.map(lambda *x: jnp.stack(x), *projs)
    keys_S = jnp.stack([jax.random.PRNGKey(100 + s) for s in range(S)])
    sweep = Sweep(exp.search)
    st, p = sweep.init(keys_S, [cfg.search.sigma] * S)
    t = time.perf_counter()
    jax.block_until_ready(sweep.run(exp.frozen, projs_S, exp.train, exp.dev, st, p))
    first_vmapped = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(sweep.run(exp.frozen, projs_S, exp.train, exp.dev, st, p))
    vmapped = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(S):
        exp.search.run(exp.frozen, projs[s], exp.train, exp.dev, exp.search.init(keys_S[s]))
    sequential = time.perf_counter() - t  # the solo interval was compiled by the first member
    return {"S": S, "vmapped_s": vmapped, "vmapped_first_s": first_vmapped, "sequential_s": sequential,
            "speedup": sequential / vmapped, "generations": exp.search.total_generations, "pop": cfg.search.popsize,
            "model": "tiny"}


# ----------------------------------------------------------------------------- main
def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def run(args, save=lambda out: None) -> dict:
    """The whole bench; `save(out)` is called after every section (a partial run keeps its results)."""
    from bbt_jax.cli import shared_path

    data_dir = shared_path("data")
    tok = shared_path("models/roberta-tokenizer/tokenizer.json")
    threads = int(os.environ.get("BBT_BENCH_TORCH_THREADS", str(os.cpu_count() or 1)))
    out: dict = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                 "xla_flags": os.environ.get("XLA_FLAGS", ""), "machine": machine(), "quick": args.quick,
                 "command": "bbt-jax bench " + " ".join(sys.argv[2:]), "complete": False}
    mm = matmul_gflops(1024 if args.quick else 2048)
    out["matmul_gflops"] = mm
    out["matmul_gflops_bf16"] = matmul_gflops(1024 if args.quick else 2048, dtype=jnp.bfloat16)
    print(f"matmul fp32: {mm:.1f} GFLOP/s | bf16: {out['matmul_gflops_bf16']:.1f} GFLOP/s", flush=True)
    rows: list[Row] = []
    out["cpu_steal"] = {}  # share of CPU time the hypervisor took during each section (noise indicator)
    ticks = [cpu_ticks()]

    def section_done(name):
        ticks.append(cpu_ticks())
        out["cpu_steal"][name] = steal_share(ticks[-2], ticks[-1])
        out["rows"] = [dataclasses.asdict(r) for r in rows]
        save(out)

    shapes = ["tiny"] if args.quick else [s for s in ("roberta-base", "roberta-large") if s in args.shapes]
    for shape in shapes:
        big = shape == "roberta-large"  # ~3.5x the work of base: ours as shipped only
        rows += bench_roberta(shape, tokenizer_path=tok, data_dir=data_dir, quick=args.quick, matmul=mm,
                              ref_candidates=1 if args.quick else args.ref_candidates, threads=threads,
                              variants=ROBERTA_VARIANTS[:1] if big else ROBERTA_VARIANTS, xla_defaults=not big)
        section_done(shape)
        print(format_table(rows), flush=True)
    if not args.quick and "smollm2" in args.shapes:
        from bbt_jax.bench_decoder import bench_smollm2

        rows += [r.finish(mm) for r in bench_smollm2(data_dir=data_dir, matmul=mm, threads=threads,
                                                      ref_candidates=args.ref_candidates)]
        section_done("smollm2")
        print(format_table(rows), flush=True)
    out["population"] = bench_population(args.quick)
    section_done("population")
    print("population scaling:", json.dumps(out["population"]), flush=True)
    out["sweep"] = bench_sweep(args.quick, data_dir, tok)
    out["complete"] = True
    section_done("sweep")
    return out
