"""Side-by-side costs of the methods on SmolLM2 (sst2, 32 training rows, demo layout):

* one gradient step (forward + backward over the training rows) of prompt tuning and deep prompt tuning,
  with and without the decoder's shared input cache, and one forward of a single prompt for scale;
* one generation (ask + fused population evaluation + tell, pop 10, state carried over so the
  covariance is no longer the identity) of BBT, BBTv2 sequential and BBTv2 parallel, and the share of
  the strategy alone (ask + tell on a stand-in fitness) in it (tools/bench's steady-state timers).

Usage (from the repo root, after `make setup`):
    python experiments/method_costs.py [--placement cue|suffix] [--repeats 3]
Prints markdown tables (median seconds of `--repeats` timed calls after a compiling call) and the CPU.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from bbt_jax import config as C
from bbt_jax.deep import zero_layers
from bbt_jax.errors import run_main
from bbt_jax.fitness import make_fitness
from bbt_jax.harness import build
from bbt_jax.io import shared_path
from bbt_jax.models.family import Backbone
from bbt_jax.models.registry import load
from bbt_jax.provenance import environment


def seconds(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--placement", default="cue")
    p.add_argument("--n-prompt-tokens", type=int, default=10, help="suffix placement only")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = load("smollm2", "")
    cfg = C.override(C.demo(), data_dir=str(shared_path("data")), placement=args.placement,
                     n_prompt_tokens=args.n_prompt_tokens, popsize=10)
    h = build(cfg, model=model, log=lambda s: None)
    buckets = h.buckets("train")
    cached = h.fitness("train")
    uncached = make_fitness(Backbone(h.backbone.family, h.backbone.config,
                                     dataclasses.replace(h.layout, suffix_len=0)), h.frozen, buckets)
    p0 = np.asarray(h.layout.p0, np.float32)
    x = {"prompt tuning": p0, "deep prompt tuning": zero_layers(p0, h.backbone.num_layers)}
    step = jax.jit(lambda f, prompt: jax.value_and_grad(lambda q: f.member(q)[0])(prompt))
    fwd = jax.jit(lambda f, prompt: f.member(prompt)[0])
    rows = []
    for name, fit in (("shared input cache", cached), ("uncached", uncached)):
        for what, prompt in x.items():
            rows.append((f"{what} step (fwd+bwd)", name, seconds(step, fit, prompt, repeats=args.repeats)))
        rows.append(("forward of one prompt", name, seconds(fwd, fit, p0, repeats=args.repeats)))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tools/ (run as a script)
    from tools.bench.bench import es_overhead

    es_rows = []
    for name, over in (("BBT", {}), ("BBTv2 sequential", {"method": "bbtv2", "layer_schedule": "sequential"}),
                       ("BBTv2 parallel", {"method": "bbtv2", "layer_schedule": "parallel"})):
        hm = build(C.override(cfg, budget=600, **over), model=model, log=lambda s: None)
        es = es_overhead(hm, float("nan"), name, "smollm2", generations=5, timed_calls=args.repeats)
        es_rows.append((name, es["generation_ms"] / 1e3, es["es_ms"] / 1e3, es["es_share"]))
    env = environment(os.environ)
    print(f"SmolLM2-135M-Instruct, sst2 train {h.rows('train')} rows, placement {args.placement} "
          f"(N={h.layout.n_prompt}, suffix {h.layout.suffix_len} tokens), {h.backbone.num_layers} layers; "
          f"CPU {env['cpu_model']} x{env['cpu_count']}, jax {env['versions']['jax']}\n")
    print("| what | input | s (median) |\n|---|---|---|")
    for what, name, s in rows:
        print(f"| {what} | {name} | {s:.3f} |")
    print("\n| generation (pop 10, steady state) | s/generation | ask+tell s | strategy share |\n|---|---|---|---|")
    for name, gen_s, es_s, share in es_rows:
        print(f"| {name} | {gen_s:.3f} | {es_s:.3f} | {100 * share:.1f} % |")
    base = {(w, n): s for w, n, s in rows}
    for what in x:
        k = f"{what} step (fwd+bwd)"
        print(f"\n{what}: uncached / cached = {base[(k, 'uncached')] / base[(k, 'shared input cache')]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
