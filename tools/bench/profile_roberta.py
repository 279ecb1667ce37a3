"""Side measurements behind BENCHMARKS.md's reading of the roberta-base rows.

  python -m tools.bench.profile_roberta [--calls 2] [--chunks 0 4]

1. The spread of the fused population evaluation (roberta-base shape, random weights, sst2 16-shot seed 13,
   pop 20, N=50, d=500, 4 buckets) over repeated calls, unchunked and in chunks (`--pop-chunk`).
2. Attention-shaped batched matmuls (1,920 x 88x64 @ 64x88, pop 20 x 8 rows x 12 heads) in XLA vs torch
   bmm and SDPA, side by side in this process.
Prints one line per measurement; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

from bbt_jax import xla_flags

xla_flags.apply_cpu_defaults()  # as the CLI: before JAX starts

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bbt_jax import config as C  # noqa: E402
from bbt_jax.harness import build  # noqa: E402
from bbt_jax.io import shared_path  # noqa: E402
from bbt_jax.problem import PromptProblem  # noqa: E402


def population_spread(chunks, calls: int) -> None:
    cfg = C.override(C.paper(), model="random-roberta-base", task="sst2", seed=13, data_dir=str(shared_path("data")),
                     popsize=20, budget=200)
    h = build(cfg, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"), log=lambda s: None)
    z_PxK = jax.random.normal(jax.random.PRNGKey(1), (20, cfg.prompt.intrinsic_dim))
    fitness = h.fitness("train")
    fn = jax.jit(lambda problem, z: problem(z)[0])
    for chunk in chunks:
        problem = PromptProblem(fitness.replace(chunk=chunk), h.projection)
        compiled = fn.lower(problem, z_PxK).compile()
        ts = []
        for _ in range(calls):
            t = time.perf_counter()
            jax.block_until_ready(compiled(problem, z_PxK))
            ts.append(time.perf_counter() - t)
        print(f"population evaluation, pop 20, chunk {chunk or 'none'}: " + " ".join(f"{x:.1f}" for x in ts) + " s",
              flush=True)


def _median_s(fn, *args, repeats: int = 5) -> float:
    fn(*args)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def attention_matmuls() -> None:
    import torch

    n, L, E = 1920, 88, 64
    flops = 2 * n * L * L * E
    q = jax.random.normal(jax.random.PRNGKey(2), (n, L, E))
    kT = jax.random.normal(jax.random.PRNGKey(3), (n, E, L))
    s = _median_s(jax.jit(lambda a, b: a @ b), q, kT)
    print(f"XLA batched matmul {n}x{L}x{E}@{E}x{L}: {1e3 * s:.1f} ms, {flops / s / 1e9:.0f} GFLOP/s", flush=True)
    qt, kt = torch.randn(n, L, E), torch.randn(n, E, L)
    s = _median_s(torch.bmm, qt, kt)
    print(f"torch bmm same shape: {1e3 * s:.1f} ms, {flops / s / 1e9:.0f} GFLOP/s", flush=True)
    x = torch.randn(160, 12, L, E)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    s = _median_s(sdpa, x, x, x)
    print(f"torch SDPA (scores + weighted values): {1e3 * s:.1f} ms, {2 * flops / s / 1e9:.0f} GFLOP/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 4])
    args = p.parse_args()
    attention_matmuls()
    population_spread(args.chunks, args.calls)


if __name__ == "__main__":
    main()
