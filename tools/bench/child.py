"""The bench's child processes (one fresh process per measurement; prints one JSON line):

  python -m tools.bench.child pop --pop N --chunk C [--quick]   population scaling (peak RSS is per process)
  python -m tools.bench.child xla --shape S [--quick]           ours as shipped under the environment's XLA flags

Started by tools/bench/bench.py, not by users.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.child")
    sub = p.add_subparsers(dest="what", required=True)
    pop = sub.add_parser("pop")
    pop.add_argument("--pop", type=int, required=True)
    pop.add_argument("--chunk", type=int, default=0)
    pop.add_argument("--quick", action="store_true")
    xla = sub.add_parser("xla")
    xla.add_argument("--shape", required=True)
    xla.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)

    from bbt_jax.xla_flags import apply_cpu_defaults

    apply_cpu_defaults()  # as the parent; BBT_JAX_XLA_DEFAULTS=0 (the xla child) leaves XLA's own defaults
    from tools.bench import bench

    if args.what == "pop":
        out = bench.pop_scaling_child(args.pop, args.chunk, args.quick)
    else:
        out = bench.xla_defaults_child(args.shape, args.quick)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
