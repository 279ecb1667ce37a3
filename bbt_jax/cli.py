"""`bbt-jax` command line: flags generated from the config dataclasses.

Pick a preset (`--preset paper|tiny|demo`), then override any field with its flag.
User mistakes print one line `error: ...` and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from bbt_jax import config as config_lib
from bbt_jax.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIRS = (Path("../shared"), REPO_ROOT.parent / "shared")


def shared_path(rel: str) -> Path:
    """A path under ../shared, relative to the working directory or to the repo."""
    for base in SHARED_DIRS:
        if (base / rel).exists():
            return base / rel
    return SHARED_DIRS[0] / rel


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    paper = config_lib.paper()
    for group in config_lib.GROUPS:
        g = p.add_argument_group(f"{group} settings")
        for f in dataclasses.fields(getattr(paper, group)):
            default = getattr(getattr(paper, group), f.name)
            flag = "--" + f.name.replace("_", "-")
            help_ = f"{f.metadata['help']} (paper: {default!r})"
            if isinstance(default, bool):
                g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)
            else:
                g.add_argument(flag, dest=f.name, type=type(default), default=argparse.SUPPRESS,
                               metavar=type(default).__name__.upper(), help=help_)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bbt-jax", description="Black-Box Tuning of soft prompts in JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="search a soft prompt with CMA-ES; writes --out/results.json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--preset", choices=sorted(config_lib.PRESETS), default="paper",
                   help="starting configuration; flags override its fields")
    t.add_argument("--zero-shot", action="store_true",
                   help="also score z = 0 (the hand-written / initial prompt) on test")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_config_flags(t)
    e = sub.add_parser("eval", help="score a saved prompt (--out/prompt.json of a train run) on a test split",
                       description="Rebuild the experiment from the prompt's saved config, with any flag below "
                       "overriding it (e.g. --task, --model, --test-rows), and score the saved prompt embeddings.")
    e.add_argument("--prompt", required=True, metavar="PATH",
                   help="prompt.json, prompt.safetensors, or the train --out folder holding them")
    _add_config_flags(e)
    b = sub.add_parser("bench", help="measure throughput side by side (ours vs PyTorch references vs the "
                       "machine's matmul rate); writes --json", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--quick", action="store_true", help="tiny shapes only (seconds; what the test suite runs)")
    b.add_argument("--shapes", nargs="+", default=["roberta-base", "roberta-large", "smollm2"],
                   choices=["roberta-base", "roberta-large", "smollm2"], help="workloads to run")
    b.add_argument("--ref-candidates", type=int, default=3,
                   help="candidates timed per PyTorch reference (scaled to the population)")
    b.add_argument("--json", default="experiments/bench/bench-cpu.json", help="where to write the results")
    b.add_argument("--pop-child", type=int, default=0, help=argparse.SUPPRESS)  # internal: one population size
    b.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    b.add_argument("--xla-child", default="", help=argparse.SUPPRESS)  # internal: ours with XLA's default flags
    return p


def resolve_config(args: argparse.Namespace) -> config_lib.Config:
    cfg = config_lib.PRESETS[args.preset]()
    fields = config_lib.flat_fields()
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    cfg = config_lib.override(cfg, **overrides)
    if "data_dir" not in overrides and not Path(cfg.run.data_dir).is_dir():
        cfg = config_lib.override(cfg, data_dir=str(shared_path("data")))
    return cfg


def check_out_dir(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    return path


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file in the same folder, then rename (no half files)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def cmd_train(args: argparse.Namespace) -> int:
    from bbt_jax.train import train

    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(config_lib.to_dict(cfg), indent=1))
        return 0
    out = check_out_dir(cfg.run.out)
    print("config: " + json.dumps(config_lib.to_dict(cfg)), flush=True)
    results = train(cfg, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"),
                    log=lambda s: print(s, flush=True), zero_shot=args.zero_shot, out=out)
    write_json_atomic(out / "results.json", results)
    print(f"wrote {out / 'results.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bbt_jax import artifact
    from bbt_jax.train import build

    saved = artifact.load_prompt(args.prompt)
    fields = config_lib.flat_fields()
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    cfg = artifact.config_for(saved, **overrides)
    if "data_dir" not in overrides and not Path(cfg.run.data_dir).is_dir():
        cfg = config_lib.override(cfg, data_dir=str(shared_path("data")))
    log = lambda s: print(s, flush=True)  # noqa: E731
    exp = build(cfg, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"), log=log)
    result = artifact.evaluate_prompt(exp, saved, warn=log)
    reported = result["reported"].get("test")
    log(f"test {result['test']} (reported by train: {reported})")
    print(json.dumps(result), flush=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bbt_jax import bench

    if args.pop_child:
        print(json.dumps(bench.pop_scaling_child(args.pop_child, args.chunk, args.quick)))
        return 0
    if args.xla_child:
        print(json.dumps(bench.xla_defaults_child(args.xla_child, args.quick)))
        return 0
    if args.ref_candidates < 1:
        raise UserError(f"--ref-candidates {args.ref_candidates}: must be >= 1")
    path = Path(args.json)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--json {path}: cannot create its folder ({e.strerror})") from None
    out = bench.run(args, save=lambda out: write_json_atomic(path, out))
    print(bench.format_table([bench.Row(**r) for r in out["rows"]]))
    print("population scaling:", json.dumps(out["population"]))
    print("sweep:", json.dumps(out["sweep"]))
    print(f"wrote {path}")
    return 0


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from bbt_jax.xla_flags import apply_cpu_defaults

    apply_cpu_defaults()  # before JAX starts its backend; the user's XLA_FLAGS win
    warnings.showwarning = _one_line_warnings
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
