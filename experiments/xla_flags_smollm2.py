"""CPU defaults on the SmolLM2 path (issue 18, item 1): our XLA flag (xla_flags.CPU_DEFAULTS) against XLA's
own defaults, and the population in one vmap against --pop-chunk 4.

    python experiments/xla_flags_smollm2.py --rounds 3 [--variants ours xla ours-chunk4 xla-chunk4] \
        [--out experiments/bench/xla-flags-smollm2.json]

Each measurement is a fresh process (XLA reads its flags when the backend starts), the variants in turn
for --rounds rounds, so that a slow phase of the machine hits all: "ours" = the shipped default flag,
"xla" = BBT_JAX_XLA_DEFAULTS=0; "-chunk4" = --pop-chunk 4 (it changes only the generation, so those
children time only "gen"). A child builds the demo harness (sst2 seed 13, cue placement,
d = 500, 32 rows) and times, compiled ahead of time, the median of --repeats executions of:
  gen      one fused BBT generation (ask + pop 20 members + tell), the demo workload;
  step     one deep-prompt-tuning step (forward + backward, shared input cache);
  test     one scoring pass of one prompt over the first 256 sst2 test rows.
Prints per-workload median seconds of each flag setting and the ratio xla / ours (> 1: our flag wins),
with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bbt_jax.errors import run_main

REPO = Path(__file__).resolve().parents[1]


def child(repeats: int, chunk: int) -> dict:
    from bbt_jax.xla_flags import apply_cpu_defaults

    apply_cpu_defaults()  # BBT_JAX_XLA_DEFAULTS=0 leaves XLA's own defaults
    import jax
    import numpy as np

    from bbt_jax import config as C
    from bbt_jax.fitness import split_metrics
    from bbt_jax.harness import build
    from bbt_jax.io import shared_path
    from bbt_jax.models.registry import load
    from tools.bench.bench import timed

    quiet = lambda s: None  # noqa: E731
    cfg = C.override(C.demo(), data_dir=str(shared_path("data")), test_rows=256, pop_chunk=chunk)
    model = load(cfg.model.model)
    h = build(cfg, model=model, log=quiet)
    out = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
    search = h.search()
    gen = jax.jit(search._generation)
    out["gen"] = timed(gen, h.problem("train"), search.es_params(), search.init(h.keys[1]), repeats=repeats)[:2]
    if chunk:
        return out
    d = build(C.override(cfg, method="deep-prompt-tuning", budget=20, eval_every=5), model=model, log=quiet)
    ds = d.search()
    step = jax.jit(ds._step)
    out["step"] = timed(step, d.problem("train"), ds.init(d.keys[1]), repeats=repeats)[:2]
    prompt = jax.numpy.asarray(h.layout.p0, jax.numpy.float32)[None]
    cache, ts = {}, []
    for _ in range(repeats + 1):  # the first pass compiles and builds the input cache; no memo of logits
        t = time.perf_counter()
        split_metrics(h.backbone, h.frozen, h.test_batches, prompt, h.task.metric, cache=cache)
        ts.append(time.perf_counter() - t)
    out["test"] = [ts[0] - float(np.median(ts[1:])), float(np.median(ts[1:]))]
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--variants", nargs="+", default=["ours", "xla"],
                   choices=["ours", "xla", "ours-chunk4", "xla-chunk4"])
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.repeats, args.chunk)))
        return 0
    from bbt_jax.provenance import cpu_model

    runs = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for name in args.variants:
            env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
            env["BBT_JAX_XLA_DEFAULTS"] = "1" if name.startswith("ours") else "0"
            env["PYTHONPATH"] = str(REPO)
            chunk = "4" if name.endswith("chunk4") else "0"
            res = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--chunk", chunk],
                                 env=env, cwd=REPO, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            row = json.loads(res.stdout.strip().splitlines()[-1])
            runs[name].append(row)
            print(f"round {r + 1} {name:11s}: " + " | ".join(f"{k} {row[k][1]:.3f} s (compile {row[k][0]:.1f})"
                                                             for k in ("gen", "step", "test") if k in row), flush=True)
    import numpy as np

    summary = {}
    for k in ("gen", "step", "test"):
        med = {n: float(np.median([row[k][1] for row in runs[n]])) for n in runs if k in runs[n][0]}
        ref = med.get("ours")
        summary[k] = {f"{n}_s": v for n, v in med.items()}
        print(f"{k:5s}: " + ", ".join(f"{n} {v:.3f} s" + (f" ({ref / v:.2f}x ours)" if ref and n != "ours" else "")
                                      for n, v in med.items()))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; flags ours: "
          f"{next(iter(runs.values()))[0]['xla_flags']!r} (first variant)")
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_model(), "rounds": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
