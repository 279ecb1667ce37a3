"""`python -m tools.bench`: throughput measured side by side, in one process and one run.

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
  * ES overhead: the strategy's ask + tell alone (CMA-ES, d=500, pop 20) against the
    whole generation;
  * test-pass cost: dev/test scoring (fitness.split_metrics over the harness's eval
    batches) per 1000 rows, compile and compute apart, eval buckets 0 vs 4;
  * population scaling (chunked inside the jit) and sweeps (vmapped searches).
Every figure is a ratio taken in this run on this machine; accelerator numbers in
BENCHMARKS.md are projections from counted FLOPs unless a GPU run wrote them.

Runs unchanged on CPU or GPU: JAX's default backend is used (tools/bench/__main__.py
--device picks one), and the PyTorch references run on CUDA when JAX runs on a GPU.

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
from bbt_jax import xla_flags
from bbt_jax.io import shared_path
from bbt_jax.provenance import cpu_model
from tools.bench import flops as F

REPO = Path(__file__).resolve().parents[2]
ROBERTA_SHAPES = ("random-roberta-base", "random-roberta-large")
SHAPES = (*ROBERTA_SHAPES, "smollm2")


def quiet(*_):
    pass


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
    out = None
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


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def torch_device() -> str:
    """Where the PyTorch references run: CUDA when JAX runs on a GPU and torch sees one."""
    import torch

    return "cuda" if on_gpu() and torch.cuda.is_available() else "cpu"


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


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


def format_table(rows: list[Row], header: str = "") -> str:
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
    table = "\n".join("| " + ln + " |" for ln in lines)
    return f"{header}\n\n{table}" if header else table


def format_es_table(rows: list[dict]) -> str:
    lines = ["| ES overhead (steady state) | model | d | pop | ask+tell ms | generation ms | ES share | "
             "generation ms from init |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['model']} | {r['dim']} | {r['pop']} | {r['es_ms']:.2f} | "
                     f"{r['generation_ms']:.1f} | {r['es_share']:.1%} | {r['generation_ms_from_init']:.1f} |")
    return "\n".join(lines)


def format_eval_table(rows: list[dict]) -> str:
    lines = ["| test pass | model | task | eval buckets | rows | shapes | tok real | tok pad | compile s | "
             "compute s / 1000 rows |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['model']} | {r['task']} | {r['num_buckets']} | {r['rows']} | {r['shapes']} | "
                     f"{r['tokens_real']} | {r['tokens_padded']} | {r['compile_s']:.2f} | "
                     f"{r['compute_s_per_1000_rows']:.3f} |")
    return "\n".join(lines)


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


def _loaded_roberta_from_torch(tmodel, tokenizer_path, name: str):
    """The torch model's weights as our LoadedModel (same weights on both sides)."""
    from bbt_jax.models import hf, roberta
    from bbt_jax.models.family import LoadedModel

    sd = {k: v.detach().float().cpu().numpy() for k, v in tmodel.state_dict().items()}
    config, params = roberta.from_hf(tmodel.config.to_dict(), sd, "bench")
    vocab = roberta.make_vocab(hf.load_tokenizer(tokenizer_path, name))
    return LoadedModel(roberta.FAMILY, config, params, vocab, f"preset:{name} (random weights, bench)", True)


def _torch_reference_seconds(tmodel, batch, prompts, *, head: str, threads: int, device: str = "cpu") -> float:
    """Seconds per candidate of a sequential PyTorch loop (median over `prompts`)."""
    import torch

    torch.set_num_threads(threads)
    dtype = next(tmodel.parameters()).dtype
    ids = torch.as_tensor(np.asarray(batch.input_ids_BxL), dtype=torch.long)
    mask = torch.as_tensor(np.asarray(batch.attention_mask_BxL), dtype=torch.long)
    lengths = mask.sum(1)
    longest = int(lengths.max())
    ids, mask = ids[:, :longest].to(device), mask[:, :longest].to(device)  # the original pads to the longest row
    start = int(np.asarray(batch.prompt_start_B)[0])
    answer = torch.as_tensor(np.asarray(batch.answer_pos_B), dtype=torch.long).to(device)
    rows = torch.arange(ids.shape[0], device=device)
    ts = []
    with torch.inference_mode():
        for i, p in enumerate([prompts[0], *prompts]):  # the first call warms up (CUDA kernels, allocator)
            p = torch.as_tensor(np.asarray(p)).to(device=device, dtype=dtype)
            hook = tmodel.roberta.embeddings.register_forward_hook(
                lambda m, inp, o, p=p: torch.cat([o[:, :start], o[:, start:start + p.shape[0]] + p,
                                                  o[:, start + p.shape[0]:]], 1))
            _sync(device)
            t = time.perf_counter()
            if head == "stock":
                logits = tmodel(input_ids=ids, attention_mask=mask).logits  # B x L x V
                logits[rows, answer]
            else:
                h = tmodel.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
                tmodel.lm_head(h[rows, answer])  # B x V, the answer position only (bbt.py's model)
            _sync(device)
            if i or device == "cpu":
                ts.append(time.perf_counter() - t)
            hook.remove()
    return float(np.median(ts))


ROBERTA_VARIANTS = (  # (name, config overrides, head); the first is ours as shipped (on one CPU device the
    # population goes 4 members at a time: --pop-chunk -1, harness.default_pop_chunk)
    ("ours (4 buckets, verbalizer head)", {}, "verbalizer"),
    ("ours, 1 bucket (padded to longest)", {"num_buckets": 1}, "verbalizer"),
    ("ours, full-vocab head at mask", {}, "mask_vocab"),
    ("ours, bf16 compute", {"dtype": "bfloat16"}, "verbalizer"),
    ("ours, population in one vmap (--pop-chunk 0)", {"pop_chunk": 0}, "verbalizer"),
)


def roberta_base_config(shape: str, *, data_dir, quick: bool, pop: int | None = None, dtype: str = "float32"):
    """The bench's RoBERTa workload: sst2 16-shot seed 13, N=50, d=500, pop 20 (quick: tiny, N=8, d=16, pop 4)."""
    pop = pop or (20 if not quick else 4)
    return C.override(C.paper(), model=shape, task="sst2", seed=13, data_dir=str(data_dir), popsize=pop,
                      budget=pop * 10, n_prompt_tokens=50 if not quick else 8, intrinsic_dim=500 if not quick else 16,
                      dtype=dtype)


def _roberta_setup(shape: str, *, tokenizer_path, data_dir, quick: bool, pop=None, dtype="float32"):
    from bbt_jax.models import roberta

    name = "tiny" if quick else shape
    config = roberta.preset(roberta.RANDOM_PRESETS[name])
    tmodel = _torch_roberta(config)
    model = _loaded_roberta_from_torch(tmodel, tokenizer_path, name)
    base = roberta_base_config(name, data_dir=data_dir, quick=quick, pop=pop, dtype=dtype)
    return config, tmodel, model, base, base.search.popsize


def _full_vocab_fitness(h):
    """The train fitness with a scorer that computes the full-vocab head at the mask, then keeps the
    verbalizer columns (what bbt.py computes)."""
    from bbt_jax.models import roberta

    config, placement = h.backbone.config, h.layout.placement

    def score(frozen, inputs, prompt_NxD):
        prompt_NxD = prompt_NxD.astype(roberta.word_embeddings(frozen["params"]).dtype)
        out = [roberta.full_logits_at(config, frozen["params"], b, prompt_NxD, placement=placement)[:, frozen["verbalizer"]]
               for b in inputs]
        return jnp.concatenate(out, 0).astype(jnp.float32)

    return h.fitness("train").replace(score=score)


def time_generation(h, fitness=None, repeats: int = 1):
    """(compile s, steady s/generation) of one fused generation (ask + population evaluation + tell)
    as its own jitted call, on the harness's train problem (or `fitness` with its projection)."""
    from bbt_jax.problem import PromptProblem

    search = h.search()
    problem = h.problem("train") if fitness is None else PromptProblem(fitness, h.projection)
    gen = jax.jit(search._generation)
    compile_s, sec, _ = timed(gen, problem, search.es_params(), search.init(h.keys[1]), repeats=repeats)
    return compile_s, sec


def steady_generation_seconds(h, warmup: int = 2, timed_calls: int = 3) -> float:
    """Median s/generation of the fused generation away from the initial state: the state is carried
    from call to call, so CMA-ES's covariance is no longer the identity (its eigendecomposition of
    the identity, in the first generation, is much cheaper than later ones)."""
    search = h.search()
    problem, params = h.problem("train"), search.es_params()
    gen = jax.jit(search._generation)
    state = search.init(h.keys[1])
    for _ in range(warmup):  # the first call compiles
        state, _ = jax.block_until_ready(gen(problem, params, state))
    ts = []
    for _ in range(timed_calls):
        t = time.perf_counter()
        state, _ = jax.block_until_ready(gen(problem, params, state))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def es_overhead(h, generation_s: float, name: str, model: str, generations: int = 10, warmup: int = 2,
                timed_calls: int = 3) -> dict:
    """The strategy's share of a generation, both at steady state: ask + tell alone (the harness's
    strategy, a cheap stand-in fitness), `generations` generations in one jitted lax.scan after a
    warm-up call, vs the whole generation with its state carried over (steady_generation_seconds).
    `generation_s` (the row's figure, timed from the initial state) is kept for reference."""
    from bbt_jax.search import _evosax_promotion

    s = h.cfg.search
    strategy = h.search().strategy  # BBTv2: the layer-wise strategy (one state per layer)
    es, params = strategy.es, strategy.params()
    with _evosax_promotion():
        state = es.init(jax.random.PRNGKey(0), jnp.zeros_like(es.solution, dtype=jnp.float32), params)

    @jax.jit
    def run(state, key, params):
        def body(state, key):
            k_ask, k_tell = jax.random.split(key)
            with _evosax_promotion():
                z_PxK, state = es.ask(k_ask, state, params)
                loss_P = jnp.sum((z_PxK * z_PxK).reshape(z_PxK.shape[0], -1), axis=1)  # stand-in, negligible
                state, _ = es.tell(k_tell, z_PxK, loss_P, state, params)
            return state, loss_P[0]

        return jax.lax.scan(body, state, jax.random.split(key, generations))

    state, _ = jax.block_until_ready(run(state, jax.random.PRNGKey(1), params))  # compile + warm-up
    ts = []
    for i in range(3):
        t = time.perf_counter()
        state, _ = jax.block_until_ready(run(state, jax.random.PRNGKey(2 + i), params))
        ts.append((time.perf_counter() - t) / generations)
    es_s = float(np.median(ts))
    gen_s = steady_generation_seconds(h, warmup, timed_calls)
    return {"name": name, "model": model, "strategy": strategy.name, "method": s.method,
            "dim": int(es.num_dims), "pop": s.popsize,
            "es_ms": 1e3 * es_s, "generation_ms": 1e3 * gen_s, "es_share": es_s / gen_s,
            "generation_ms_from_init": 1e3 * generation_s, "es_generations_timed": generations,
            "generation_calls_timed": timed_calls}


def bench_roberta(shape: str, *, tokenizer_path, data_dir, quick: bool, matmul: float, ref_candidates: int,
                  threads: int, variants=ROBERTA_VARIANTS, repeats: int = 1, xla_defaults: bool = False,
                  pop: int | None = None, dtype: str = "float32", es: bool = False):
    """RoBERTa rows (ours, its variants, the two PyTorch references); with `es`, also the ES
    overhead row of ours as shipped. Returns (rows, es_rows)."""
    from bbt_jax.harness import build
    from bbt_jax.tasks import make_buckets, real_tokens

    config, tmodel, model, base, pop = _roberta_setup(shape, tokenizer_path=tokenizer_path, data_dir=data_dir,
                                                     quick=quick, pop=pop, dtype=dtype)
    label = "tiny" if quick else shape
    rows: list[Row] = []
    es_rows: list[dict] = []
    losses = {}
    h = None
    for name, over, head in variants:
        h = build(C.override(base, **over), model=model, log=quiet)
        fitness = _full_vocab_fitness(h) if head == "mask_vocab" else None
        compile_s, sec = time_generation(h, fitness, repeats if not quick else 2)
        if es and not rows:
            es_rows.append(es_overhead(h, sec, f"{label}, {h.cfg.model.dtype}", label,
                                       warmup=2 if quick else 1, timed_calls=3 if quick else 2))
        if head == "verbalizer" and set(over) <= {"dtype"}:  # shipped dtype vs bf16 on the same candidates
            z = jax.random.normal(jax.random.PRNGKey(1), (min(pop, 4), h.projection.intrinsic_dim))
            loss_fn = jax.jit(lambda problem, z: problem(z)[0])
            losses[h.cfg.model.dtype] = np.asarray(loss_fn(h.problem("train"), z))
        buckets = h.buckets("train")
        fl = pop * sum(F.roberta_config_flops(config, b.input_ids_BxL.shape[0], b.input_ids_BxL.shape[1], head=head)
                       for b in buckets)
        rows.append(Row(name if dtype == "float32" or over else f"{name}, {dtype}", label, pop,
                        int(sum(np.asarray(b.weight_B).sum() for b in buckets)), real_tokens(buckets) * pop,
                        sum(int(b.input_ids_BxL.size) for b in buckets) * pop, sec, fl, compile_s=compile_s))
        if over.get("dtype") == "bfloat16" and "float32" in losses:
            diff = float(np.max(np.abs(losses["bfloat16"] - losses["float32"])))
            rows[-1].extra["max_abs_loss_diff_vs_fp32"] = diff
            rows[-1].note = f"max |loss bf16 - fp32| = {diff:.2e} over {len(losses['float32'])} candidates"
    if xla_defaults and not on_gpu() and xla_flags.CPU_DEFAULTS:  # no default flag: "ours" is that row
        rows.insert(1, _xla_defaults_row(shape, quick, rows[0]))

    # PyTorch references on the same weights, data and candidates (train rows in one batch).
    device = torch_device()
    if device == "cuda" or dtype != "float32":
        import torch

        tmodel = tmodel.to(device=device, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    batch = make_buckets(h.encoded["train"], model.vocab.pad_id, num_buckets=1)[0]
    z = jax.random.normal(jax.random.PRNGKey(2), (ref_candidates, h.projection.intrinsic_dim))
    prompts = [np.asarray(h.projection(z[i]), np.float32) for i in range(ref_candidates)]
    longest = int(np.asarray(batch.attention_mask_BxL).sum(1).max())
    nrows = batch.input_ids_BxL.shape[0]
    for name, head in (("bbt reference (torch, 1 candidate/call)", "mask_vocab"), ("stock reference (torch)", "stock")):
        sec = _torch_reference_seconds(tmodel, batch, prompts, head=head, threads=threads, device=device) * pop
        fl = pop * F.roberta_config_flops(config, nrows, longest, head=head)
        rows.append(Row(name, label, pop, nrows, real_tokens([batch]) * pop, nrows * longest * pop, sec, fl,
                        note=f"{ref_candidates} candidates timed (median), x{pop}; {device}, {dtype}"))
    bbt_s, stock_s = rows[-2].seconds_per_generation, rows[-1].seconds_per_generation
    for r in rows[:-2]:
        r.vs_bbt_reference = bbt_s / r.seconds_per_generation
        r.vs_stock_reference = stock_s / r.seconds_per_generation
    return [r.finish(matmul) for r in rows], es_rows


def xla_defaults_child(shape: str, quick: bool) -> dict:
    """Run in a fresh process started with XLA's own defaults: ours as shipped, seconds per generation."""
    from bbt_jax.harness import build

    _, _, model, base, _ = _roberta_setup(shape, tokenizer_path=shared_path("models/roberta-tokenizer/tokenizer.json"),
                                          data_dir=shared_path("data"), quick=quick)
    h = build(base, model=model, log=quiet)
    compile_s, sec = time_generation(h, None, 1 if not quick else 2)
    return {"seconds_per_generation": sec, "compile_s": compile_s, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "matmul_gflops": matmul_gflops(1024 if quick else 2048)}


def run_child(args: list[str], env: dict | None = None) -> dict:
    """`python -m tools.bench.child ARGS` in a fresh process from the repository root; its last stdout line (JSON)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH", "")])])
    r = subprocess.run([sys.executable, "-m", "tools.bench.child", *args], capture_output=True, text=True, env=env,
                       cwd=str(REPO))
    if r.returncode != 0:
        raise RuntimeError(f"tools.bench.child {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _xla_defaults_row(shape: str, quick: bool, ours: Row) -> Row:
    """Ours as shipped, but in a child process with XLA's CPU defaults (our flags off)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["BBT_JAX_XLA_DEFAULTS"] = "0"
    child = run_child(["xla", "--shape", shape] + (["--quick"] if quick else []), env=env)
    return dataclasses.replace(ours, name="ours, XLA's default CPU flags",
                               seconds_per_generation=child["seconds_per_generation"], compile_s=child["compile_s"],
                               extra={"xla_flags": child["xla_flags"], "matmul_gflops": child["matmul_gflops"]},
                               note="child process without our XLA_FLAGS defaults; util vs this run's matmul rate")


# ----------------------------------------------------------------------------- test-pass cost
def bench_eval(h, *, name: str, model: str, num_buckets=(0, 4), prompts: int = 1) -> list[dict]:
    """dev/test scoring as a run does it (fitness.split_metrics over fixed-size eval batches), per 1000
    rows: the first pass (compile + compute) and a second pass (compute only); compile = the difference."""
    from bbt_jax.fitness import split_metrics
    from bbt_jax.tasks import make_eval_batches, padded_tokens, real_tokens

    z_PxK = jax.random.normal(jax.random.PRNGKey(3), (prompts, h.projection.intrinsic_dim))
    prompts_P = jax.vmap(h.projection)(z_PxK)
    out = []
    for nb in num_buckets:
        batches = make_eval_batches(h.encoded["test"], h.model.vocab.pad_id, batch_rows=h.cfg.run.eval_batch,
                                    num_buckets=nb)
        jax.clear_caches()  # every shape compiles in this pass, as in a fresh run
        t = time.perf_counter()
        split_metrics(h.backbone, h.frozen, batches, prompts_P, h.task.metric)
        first = time.perf_counter() - t
        t = time.perf_counter()
        res = split_metrics(h.backbone, h.frozen, batches, prompts_P, h.task.metric)
        second = time.perf_counter() - t
        cache: dict = {}  # a prompt scored on rows already prepared (another seed / method of the task)
        split_metrics(h.backbone, h.frozen, batches, prompts_P, h.task.metric, cache=cache)
        t = time.perf_counter()
        split_metrics(h.backbone, h.frozen, batches, prompts_P, h.task.metric, cache=cache)
        reuse = time.perf_counter() - t
        rows = res[0]["rows"]
        out.append({"name": name, "model": model, "task": h.task.name, "num_buckets": nb, "rows": rows,
                    "batch_rows": h.cfg.run.eval_batch, "prompts": prompts, "batches": len(batches),
                    "shapes": len({b.input_ids_BxL.shape for b in batches}), "tokens_real": real_tokens(batches),
                    "tokens_padded": padded_tokens(batches), "first_pass_s": first, "compute_s": second,
                    "compile_s": max(first - second, 0.0), "compute_s_per_1000_rows": 1000 * second / rows,
                    "compile_s_per_1000_rows": 1000 * max(first - second, 0.0) / rows,
                    "reuse_s": reuse, "reuse_s_per_1000_rows": 1000 * reuse / rows})
    return out


def bench_eval_rows(quick: bool, shapes, data_dir, tok) -> list[dict]:
    """Test-pass cost of sst2 and agnews: tiny RoBERTa (quick), else random-roberta-base and SmolLM2 (demo)."""
    from bbt_jax.harness import build

    out = []
    for task in ("sst2", "agnews"):
        if quick:
            cfgs = [("tiny", C.override(C.tiny(), task=task, data_dir=str(data_dir), test_rows=256))]
        else:
            cfgs = []
            if "random-roberta-base" in shapes:
                cfgs.append(("random-roberta-base", C.override(roberta_base_config("random-roberta-base",
                                                                                   data_dir=data_dir, quick=False),
                                                               task=task, test_rows=1000)))
            if "smollm2" in shapes:
                cfgs.append(("smollm2", C.override(C.demo(), task=task, data_dir=str(data_dir), test_rows=1000)))
        for model, cfg in cfgs:
            h = build(cfg, default_tokenizer=tok, log=quiet)
            out += bench_eval(h, name=f"{model} test pass", model=model)
    return out


# ----------------------------------------------------------------------------- population / sweeps
def pop_scaling_child(pop: int, chunk: int, quick: bool) -> dict:
    """Run in a fresh process (peak RSS is per process): time per member at one population size."""
    from bbt_jax.fitness import make_fitness
    from bbt_jax.models import roberta
    from bbt_jax.models.family import Backbone, Layout, make_frozen
    from bbt_jax.problem import PromptProblem
    from bbt_jax.prompt import make_projection
    from bbt_jax.types import TokenBatch

    cfg = roberta.preset("tiny")
    params = roberta.init_params(cfg, jax.random.PRNGKey(0))
    B, L, N, K = (32, 48, 8, 64) if not quick else (8, 24, 4, 16)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 1000, (B, L)).astype(np.int32)
    batch = TokenBatch(ids, np.ones((B, L), np.int32), np.ones(B, np.int32), np.full(B, L - 2, np.int32),
                       rng.integers(0, 2, B).astype(np.int32), np.ones(B, np.float32))
    frozen = make_frozen(params, np.array([10, 20], np.int32))
    p0 = np.zeros((N, cfg.hidden_size), np.float32)
    bb = Backbone(roberta.FAMILY, cfg, Layout(placement="add", template="", n_prompt=N, p0=p0, splice="add"))
    proj = make_projection(jax.random.PRNGKey(1), intrinsic_dim=K, p0_NxD=p0, embed_std=0.02)
    problem = PromptProblem(make_fitness(bb, frozen, (batch,), chunk=chunk), proj)
    fn = jax.jit(lambda problem, z: problem(z)[0])
    z = jax.random.normal(jax.random.PRNGKey(2), (pop, K))
    rss0 = peak_rss_mb()
    compile_s, sec, _ = timed(fn, problem, z, repeats=3)
    return {"pop": pop, "chunk": chunk, "seconds": sec, "per_member_ms": 1000 * sec / pop, "compile_s": compile_s,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0, "tokens": B * L}


def bench_population(quick: bool) -> list[dict]:
    """Time per member and peak RSS at growing populations, chunked inside the jit; the largest
    population once more unchunked, to show what the chunk bounds. One fresh process per size."""
    chunk = 20 if not quick else 8
    runs = [(20, chunk), (200, chunk), (2000, chunk), (2000, 0)] if not quick else [(8, chunk), (32, chunk), (32, 0)]
    return [run_child(["pop", "--pop", str(pop), "--chunk", str(ch)] + (["--quick"] if quick else []))
            for pop, ch in runs]


def bench_sweep(quick: bool, data_dir, tokenizer_path) -> dict:
    """S=8 searches vmapped into one call vs the same 8 run one after another."""
    from bbt_jax import sweep as sweep_lib
    from bbt_jax.harness import build
    from bbt_jax.problem import PromptProblem
    from bbt_jax.prompt import embedding_std, make_projection

    S = 8
    cfg = C.override(C.tiny(), data_dir=str(data_dir), popsize=8, budget=8 * (4 if quick else 10), eval_every=16)
    h = build(cfg, default_tokenizer=tokenizer_path, log=quiet)
    search = h.search()
    std = embedding_std(np.asarray(h.backbone.word_embeddings(h.model.params)))
    projs = [make_projection(jax.random.PRNGKey(s), intrinsic_dim=cfg.prompt.intrinsic_dim, p0_NxD=h.layout.p0,
                             embed_std=std) for s in range(S)]
    projs_S = sweep_lib.stack(projs)
    train_S = PromptProblem(h.fitness("train"), projs_S)
    dev_S = PromptProblem(h.fitness("dev"), projs_S)
    keys_S = jnp.stack([jax.random.PRNGKey(100 + s) for s in range(S)])
    sweep = sweep_lib.Sweep(search)
    st, p = sweep.init(keys_S, [cfg.search.sigma] * S)
    t = time.perf_counter()
    jax.block_until_ready(sweep.run(train_S, dev_S, st, p))
    first_vmapped = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(sweep.run(train_S, dev_S, st, p))
    vmapped = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(S):
        search.run(h.problem("train", projs[s]), h.problem("dev", projs[s]), search.init(keys_S[s]))
    sequential = time.perf_counter() - t  # the solo interval was compiled by the first member
    return {"S": S, "vmapped_s": vmapped, "vmapped_first_s": first_vmapped, "sequential_s": sequential,
            "speedup": sequential / vmapped, "generations": search.total_generations, "pop": cfg.search.popsize,
            "model": "tiny"}


def bench_seed_sweep(cfg, seeds, *, tokenizer_path=None, model=None) -> dict:
    """`bbt-jax sweep`'s seed groups: the seeds of one config as ONE vmapped search (sweep.train_group, each
    seed on its own split) vs the same runs one after another (train.train), as a user runs them: search time
    with compilation, and the steady time per generation (the intervals after the first)."""
    import tempfile

    from bbt_jax import sweep as sweep_lib
    from bbt_jax.models.registry import load
    from bbt_jax.train import train

    model = model or load(cfg.model.model, cfg.model.tokenizer, default_tokenizer=tokenizer_path)
    out = {"model": cfg.model.model, "task": cfg.run.task, "seeds": list(seeds), "pop": cfg.search.popsize,
           "budget": cfg.search.budget, "eval_every": cfg.search.eval_every}
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [C.override(cfg, seed=s, out=f"{tmp}/solo-{s}") for s in seeds]
        solo = [train(c, default_tokenizer=tokenizer_path, log=quiet, model=model) for c in cfgs]
        cfgs = [C.override(cfg, seed=s, out=f"{tmp}/group-{s}") for s in seeds]
        group = sweep_lib.train_group(cfgs, model=model, default_tokenizer=tokenizer_path, log=quiet)
    gens = solo[0]["generations"]
    first_gens = min(cfg.search.generations_per_eval, gens)

    def steady(search_s, first_s):
        return (search_s - first_s) / max(gens - first_gens, 1)

    out["sequential_search_s"] = sum(r["time"]["search_s"] for r in solo)
    out["vmapped_search_s"] = group[0]["vmapped"]["search_s"]
    out["speedup"] = out["sequential_search_s"] / out["vmapped_search_s"]
    out["sequential_steady_s_per_gen"] = sum(steady(r["time"]["search_s"], r["time"]["first_interval_s"])
                                             for r in solo)
    out["vmapped_steady_s_per_gen"] = steady(group[0]["vmapped"]["search_s"], group[0]["time"]["first_interval_s"])
    out["steady_speedup"] = out["sequential_steady_s_per_gen"] / out["vmapped_steady_s_per_gen"]
    return out


# ----------------------------------------------------------------------------- main
def machine() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "cpus_usable": usable, "backend": jax.default_backend(),
            "devices": [str(d.device_kind) for d in jax.devices()]}
    return info


def header(out: dict) -> str:
    m = out["machine"]
    return (f"CPU: {m['cpu']}, {m['cpus_usable']} cores usable ({m['cpus']} online) | device: {out['device']} "
            f"({m['backend']}) | jax {out['jax']} | matmul fp32 {out['matmul_gflops']:.1f} GFLOP/s, "
            f"bf16 {out['matmul_gflops_bf16']:.1f} GFLOP/s")


def run(args, save=lambda out: None, bench_decoder=None) -> dict:
    """The whole bench; `save(out)` is called after every section (a partial run keeps its results).
    `bench_decoder`: the SmolLM2 section (bench_decoder.bench_smollm2, passed in by __main__: that module
    builds on this one)."""
    data_dir = shared_path("data")
    tok = shared_path("models/roberta-tokenizer/tokenizer.json")
    threads = int(os.environ.get("BBT_BENCH_TORCH_THREADS", str(os.cpu_count() or 1)))
    out: dict = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "jax": jax.__version__,
                 "xla_flags": os.environ.get("XLA_FLAGS", ""), "machine": machine(), "quick": args.quick,
                 "command": getattr(args, "command", "python -m tools.bench"), "dtype": args.dtype,
                 "pops": list(args.pops), "complete": False}
    out["cpu"], out["cores"] = out["machine"]["cpu"], out["machine"]["cpus_usable"]
    mm = matmul_gflops(1024 if args.quick else 2048)
    out["matmul_gflops"] = mm
    out["matmul_gflops_bf16"] = matmul_gflops(1024 if args.quick else 2048, dtype=jnp.bfloat16)
    print(header(out), flush=True)
    rows: list[Row] = []
    out["es_overhead"], out["eval"] = [], []
    out["cpu_steal"] = {}  # share of CPU time the hypervisor took during each section (noise indicator)
    ticks = [cpu_ticks()]

    def section_done(name):
        ticks.append(cpu_ticks())
        out["cpu_steal"][name] = steal_share(ticks[-2], ticks[-1])
        out["rows"] = [dataclasses.asdict(r) for r in rows]
        save(out)

    shapes = ["tiny"] if args.quick else [s for s in ROBERTA_SHAPES if s in args.shapes]
    for shape in shapes:
        big = shape == "random-roberta-large"  # ~3.5x the work of base: ours as shipped only
        for pop in args.pops:
            new, es_rows = bench_roberta(
                shape, tokenizer_path=tok, data_dir=data_dir, quick=args.quick, matmul=mm,
                ref_candidates=1 if args.quick else args.ref_candidates, threads=threads,
                variants=ROBERTA_VARIANTS[:1] if big or args.only_shipped else ROBERTA_VARIANTS,
                xla_defaults=not big and not args.only_shipped, pop=None if args.quick else pop, dtype=args.dtype,
                es=not big and pop == 20 or args.quick)
            rows += new
            out["es_overhead"] += es_rows
            if args.quick:
                break
        section_done(shape)
        print(format_table(rows, header(out)), flush=True)
    if bench_decoder is not None and (args.quick or "smollm2" in args.shapes):
        new, es_rows = bench_decoder(data_dir=data_dir, matmul=mm, threads=threads,
                                     ref_candidates=1 if args.quick else args.ref_candidates, quick=args.quick)
        rows += [r.finish(mm) for r in new]
        out["es_overhead"] += es_rows
        section_done("smollm2")
        print(format_table(rows, header(out)), flush=True)
    if out["es_overhead"]:
        print(format_es_table(out["es_overhead"]), flush=True)
    if not args.no_eval:
        out["eval"] = bench_eval_rows(args.quick, args.shapes, data_dir, tok)
        section_done("eval")
        print(format_eval_table(out["eval"]), flush=True)
    if not args.only_shipped:
        out["population"] = bench_population(args.quick)
        section_done("population")
        print("population scaling:", json.dumps(out["population"]), flush=True)
        out["sweep"] = bench_sweep(args.quick, data_dir, tok)
        if not args.quick and "smollm2" in args.shapes:  # tests/test_grid.py checks train_group's results
            base = C.override(C.demo(), data_dir=str(data_dir), popsize=10, budget=60, eval_every=20, test_rows=32)
            out["seed_sweep"] = bench_seed_sweep(base, [13, 21, 42, 87, 100], tokenizer_path=tok)
            print("seed sweep:", json.dumps(out["seed_sweep"]), flush=True)
    out["complete"] = True
    section_done("sweep")
    return out
