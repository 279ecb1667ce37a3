"""python -m tools.bench [--quick] [--shapes ...] [--json PATH] [--device auto|cpu|gpu] ..."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_JSON = "experiments/bench/bench-cpu.json"


class BenchError(Exception):
    """A bad flag: printed as one `error:` line, exit 2."""


def parser() -> argparse.ArgumentParser:
    from tools.bench.bench import SHAPES

    p = argparse.ArgumentParser(prog="python -m tools.bench",
                                description="measure throughput side by side (ours vs PyTorch references vs the "
                                "machine's matmul rate); writes --json",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes only (about a minute; what the tests run)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="workloads to run")
    p.add_argument("--ref-candidates", type=int, default=3,
                   help="candidates timed per PyTorch reference (scaled to the population)")
    p.add_argument("--pops", type=int, nargs="+", default=[20], help="population sizes of the RoBERTa rows")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype of ours as shipped and of the PyTorch references")
    p.add_argument("--only-shipped", action="store_true",
                   help="RoBERTa: ours as shipped and the references only (no variants, population, sweep)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-pass cost rows")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                   help="JAX backend (auto: JAX's default, a GPU when one is visible); the torch references "
                   "follow (CUDA when JAX runs on a GPU)")
    p.add_argument("--json", default=None, help=f"where to write the results (default {DEFAULT_JSON}, "
                   "or bench-gpu.json beside it on a GPU)")
    return p


def check(args) -> None:
    if args.ref_candidates < 1:
        raise BenchError(f"--ref-candidates {args.ref_candidates}: must be >= 1")
    for pop in args.pops:
        if pop < 2:
            raise BenchError(f"--pops {pop}: must be >= 2")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)  # argparse itself exits 2 with a usage line for unknown flags
    try:
        check(args)
        if args.device == "cpu":
            os.environ["JAX_PLATFORMS"] = "cpu"
        elif args.device == "gpu":
            os.environ["JAX_PLATFORMS"] = "cuda"
        from bbt_jax.xla_flags import apply_cpu_defaults

        apply_cpu_defaults()  # as the CLI: before JAX starts its backend (CPU-only flags; ignored on GPU)
        import jax

        from tools.bench import bench
        from tools.bench.bench_decoder import bench_smollm2

        if args.device == "gpu" and jax.default_backend() != "gpu":
            raise BenchError("--device gpu: JAX sees no GPU")
        path = Path(args.json or (DEFAULT_JSON if jax.default_backend() == "cpu"
                                  else str(Path(DEFAULT_JSON).with_name("bench-gpu.json"))))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BenchError(f"--json {path}: {e.strerror}") from None
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from bbt_jax.io import write_json_atomic

    args.command = "python -m tools.bench " + " ".join(argv)
    out = bench.run(args, save=lambda out: write_json_atomic(path, out), bench_decoder=bench_smollm2)
    print(bench.format_table([bench.Row(**r) for r in out["rows"]], bench.header(out)))
    if out["es_overhead"]:
        print(bench.format_es_table(out["es_overhead"]))
    if out["eval"]:
        print(bench.format_eval_table(out["eval"]))
    if "population" in out:
        print("population scaling:", json.dumps(out["population"]))
        print("sweep:", json.dumps(out["sweep"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
