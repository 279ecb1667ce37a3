"""`bbt-jax` command line: flags generated from the config dataclasses.

Pick a preset (`--preset paper|paper-bbtv2|tiny|demo`), then override any field with its flag. `sweep` runs
a grid of such runs (grid.py), `report` tabulates and plots finished runs (report.py), `inspect` reads a
saved prompt as tokens (reading.py), `export` writes it as a PEFT adapter (export.py), `library` stores
prompts and retrieves them for a new task (library.py).
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
from bbt_jax.errors import UserError, run_main
from bbt_jax.io import read_json, shared_path, write_json_atomic
from bbt_jax.provenance import environment


def _add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    paper = config_lib.paper()
    for group in config_lib.GROUPS:
        g = p.add_argument_group(f"{group} settings")
        for f in dataclasses.fields(getattr(paper, group)):
            if f.name in skip:
                continue
            default = getattr(getattr(paper, group), f.name)
            flag = "--" + f.name.replace("_", "-")
            help_ = f"{f.metadata['help']} (paper: {default!r})".replace("%", "%%")  # argparse formats help with %
            if isinstance(default, bool):
                g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)
            else:
                g.add_argument(flag, dest=f.name, type=type(default), default=argparse.SUPPRESS,
                               metavar=type(default).__name__.upper(), help=help_)


def _add_process_flags(p: argparse.ArgumentParser) -> None:
    """Several processes on JAX's multi-controller runtime (distributed.py); not part of the config: they
    change where the work runs, not its results."""
    g = p.add_argument_group("multi-process / multi-host (README): one such process per host or device group")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0, where the processes meet (env BBT_COORDINATOR)")
    g.add_argument("--num-processes", metavar="N", help="how many processes run this command (env BBT_NUM_PROCESSES)")
    g.add_argument("--process-id", metavar="I", help="this process, 0 .. N-1; 0 writes (env BBT_PROCESS_ID)")
    g.add_argument("--distributed", action="store_true",
                   help="join the processes that the cluster started (JAX's own detection: SLURM, Open MPI, "
                   "Cloud TPU, ...) instead of the three flags above")


def _join(argv: list[str] | None) -> None:
    """`train` and `sweep`: join the other processes (distributed.py) before anything starts JAX (building
    the parser already does: the presets import evosax); one process: nothing happens."""
    from bbt_jax import distributed

    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("command", nargs="?")
    _add_process_flags(pre)
    known, _ = pre.parse_known_args(argv)
    if known.command not in ("train", "sweep") or {"-h", "--help", "--print-config"} & set(argv):
        return
    distributed.initialize(distributed.parse(known.coordinator, known.num_processes, known.process_id,
                                             auto=known.distributed, environ=os.environ))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bbt-jax", description="Black-Box Tuning of soft prompts in JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="tune a soft prompt (--method: bbt, bbtv2, prompt-tuning, ...); "
                       "writes --out/results.json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--preset", choices=sorted(config_lib.PRESETS), default="paper",
                   help="starting configuration; flags override its fields")
    t.add_argument("--zero-shot", action="store_true",
                   help="also score z = 0 (the hand-written / initial prompt) on test")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--plot", action="store_true",
                   help="also save --out/curve.png (training loss and dev metric vs calls)")
    _add_config_flags(t)
    _add_process_flags(t)
    e = sub.add_parser("eval", help="score a saved prompt (--out/prompt.json of a train run) on a test split",
                       description="Rebuild the experiment from the prompt's saved config, with any flag below "
                       "overriding it (e.g. --task, --model, --test-rows), and score the saved prompt embeddings.")
    e.add_argument("--prompt", required=True, metavar="PATH",
                   help="prompt.json, prompt.safetensors, or the train --out folder holding them")
    _add_config_flags(e)
    s = sub.add_parser("sweep", help="train every cell of a grid of settings, one folder per cell, then report",
                       description="Run the product of --grid values (e.g. --grid task=sst2,agnews --grid seed=13,21), "
                       "each cell as `train --zero-shot` in --out/<key>=<value>,...; every other flag below is fixed "
                       "for all cells. Rerun the same command to resume: finished cells are skipped. Ends with "
                       "`report --out`.")
    s.add_argument("--preset", choices=sorted(config_lib.PRESETS), default="paper",
                   help="starting configuration; flags and grid values override its fields")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a setting to vary (a train flag's name, '-' or '_') and its values; repeat for a product")
    s.add_argument("--grid-file", metavar="JSON", help='a grid as JSON: {"task": ["sst2", "rte"], "seed": [13, 21]}')
    s.add_argument("--out", dest="sweep_out", default="runs/sweep", metavar="DIR",
                   help="the sweep's folder: one subfolder per cell, sweep.json, the report (default: runs/sweep)")
    s.add_argument("--no-vmap-seeds", dest="vmap_seeds", action="store_false",
                   help="run cells that differ only in seeds one by one (default: as one vmapped search per group, "
                   "ES methods)")
    _add_config_flags(s, skip=("out",))
    _add_process_flags(s)
    r = sub.add_parser("report", help="tables (csv, markdown) and plots over results.json files",
                       description="One row per (task, method, seed) of every results.json found (files, or folders "
                       "searched recursively); writes results.csv, results.md, test_by_task.png and curves.png and "
                       "prints the markdown table.")
    r.add_argument("runs", nargs="+", metavar="RUNS", help="results.json files or folders holding them")
    r.add_argument("--out", metavar="DIR", help="where to write (default: the first RUNS folder)")
    add_inspect_export_parsers(sub)
    add_library_parsers(sub)
    return p


def add_inspect_export_parsers(sub) -> None:
    i = sub.add_parser("inspect", help="read a saved prompt as tokens: nearest vocabulary entries, norms",
                       description="For each prompt position (and deep-prompt layer): the k nearest tokens by "
                       "cosine and by L2, the norm against the word-embedding norms, the distance from p0 "
                       "(bbt_jax/reading.py).")
    i.add_argument("--prompt", required=True, metavar="PATH", help="prompt.json, prompt.safetensors or their folder")
    i.add_argument("--k", type=int, default=5, help="tokens listed per position")
    i.add_argument("--json", metavar="OUT", help="also write the full result as JSON to OUT")
    i.add_argument("--score", action="store_true",
                   help="also score on test the soft prompt and its nearest-token (hard) reading")
    _add_config_flags(i)
    x = sub.add_parser("export", help="write a saved prompt as a Hugging Face PEFT prompt-tuning adapter",
                       description="Decoder prompts in placement prefix only (bbt_jax/export.py says why).")
    x.add_argument("--prompt", required=True, metavar="PATH", help="prompt.json, prompt.safetensors or their folder")
    x.add_argument("--peft", required=True, metavar="DIR", help="folder for adapter_config.json + "
                   "adapter_model.safetensors")
    x.add_argument("--base-model", metavar="NAME", help="base_model_name_or_path (default: the card's model)")


DEFAULT_LIBRARY = "runs/library"


def add_library_parsers(sub) -> None:
    lp = sub.add_parser("library", help="a prompt library with retrieval (RoSPr): add runs, list, query",
                        description="Store tuned prompts with keys = frozen-model embeddings of their training rows; "
                        "retrieve the prompts whose rows look like a new task's (bbt_jax/library.py).")
    lsub = lp.add_subparsers(dest="library_command", required=True)
    a = lsub.add_parser("add", help="add train runs to the library (re-adding a run replaces its entry)",
                        description="Each RUN's training rows are embedded with its own template and placement, the "
                        "prompt slots at the placement's p0; the prompt, the keys and the run's metrics are stored.")
    a.add_argument("runs", nargs="+", metavar="RUN", help="train --out folders (or their prompt.json)")
    a.add_argument("--library", default=DEFAULT_LIBRARY, metavar="DIR", help="the library folder (created if needed)")
    a.add_argument("--data-dir", dest="data_dir", default=argparse.SUPPRESS, metavar="DIR",
                   help="where the runs' data lives (default: each run's own, else ../shared/data)")
    ls = lsub.add_parser("list", help="the library's entries")
    ls.add_argument("--library", default=DEFAULT_LIBRARY, metavar="DIR")
    ls.add_argument("--json", action="store_true", help="print the index as JSON")
    q = lsub.add_parser("query", help="retrieve prompts for a task by instance vote; optionally interpolate and "
                        "write one for train --init-prompt",
                        description="Embed the task's few-shot train rows (--task, --seed, --k-shot, --data-dir and "
                        "the layout flags below; unset ones come from --preset, else from the library's first entry), "
                        "let each row vote for the entries of its --top-m nearest keys, print the top --k entries. "
                        "Entries whose prompt does not fit the query's layout are skipped (library.py says which). "
                        "Rows are always embedded at the placement's own p0 in float32 (--init-prompt, --prompt-init "
                        "and --dtype do not apply).")
    q.add_argument("--library", default=DEFAULT_LIBRARY, metavar="DIR")
    q.add_argument("--preset", choices=sorted(config_lib.PRESETS), default=None,
                   help="starting configuration (default: the config of the library's first entry)")
    q.add_argument("--k", type=int, default=3, help="entries retrieved")
    q.add_argument("--top-m", dest="top_m", type=int, default=5, help="nearest keys per query row (its votes)")
    q.add_argument("--exclude-task", action="store_true",
                   help="leave the query task's own entries out (leave-one-task-out)")
    q.add_argument("--interpolate", action="store_true",
                   help="average the retrieved prompts weighted by vote share (else the top entry's prompt)")
    q.add_argument("--write", metavar="FILE", help="write the prompt as FILE.safetensors, for train --init-prompt")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_config_flags(q)


def resolve_config(args: argparse.Namespace) -> config_lib.Config:
    cfg = config_lib.PRESETS[args.preset]()
    fields = config_lib.flat_fields()
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    cfg = config_lib.override(cfg, **overrides)
    if "data_dir" not in overrides:
        cfg = config_lib.with_shared_data(cfg)
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


def cmd_train(args: argparse.Namespace) -> int:
    from bbt_jax import distributed
    from bbt_jax.train import train

    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(config_lib.to_dict(cfg), indent=1))
        return 0
    main = distributed.is_main()  # several processes: all run it, process 0 writes and prints
    out = check_out_dir(cfg.run.out) if main else Path(cfg.run.out)
    if main:
        print("config: " + json.dumps(config_lib.to_dict(cfg)), flush=True)
    results = train(cfg, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"),
                    log=lambda s: print(s, flush=True), zero_shot=args.zero_shot, out=out)
    if not main:
        return 0
    results["environment"] = environment(os.environ)
    write_json_atomic(out / "results.json", results)
    print(f"wrote {out / 'results.json'}")
    if args.plot:
        from bbt_jax.report import plot_curve

        plot_curve(results, out / "curve.png")
        print(f"wrote {out / 'curve.png'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from bbt_jax import distributed
    from bbt_jax import grid as grid_lib

    grid = grid_lib.parse(args.grid, args.grid_file)
    overrides = {k: v for k, v in vars(args).items() if k in config_lib.flat_fields()}
    both = [k for k in grid if k in overrides]
    if both:
        raise UserError(f"--grid {both[0]}=...: also given as --{both[0].replace('_', '-')}; give it once")
    cfg = resolve_config(args)
    main = distributed.is_main()  # several processes: each prints its own cells, process 0 the rest
    out = check_out_dir(args.sweep_out) if main else Path(args.sweep_out)
    prefix = "" if main else f"[process {distributed.process_index()}] "
    if main:
        print("base config (before the grid): " + json.dumps(config_lib.to_dict(cfg)), flush=True)
        print(f"grid: {json.dumps(grid)} ({len(grid_lib.cells(grid))} cells)", flush=True)
    variants = grid_lib.read_variants(args.grid_file)
    spec = {"preset": args.preset, "grid": grid, "overrides": overrides, **({"variants": variants} if variants else {})}
    grid_lib.run(cfg, grid, out, spec=spec, environment=environment(os.environ), variants=variants,
                 default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"),
                 log=lambda s: print(prefix + s, flush=True), vmap_seeds=args.vmap_seeds)
    return _report([out], out) if main else 0


def cmd_report(args: argparse.Namespace) -> int:
    return _report(args.runs, args.out)


def _report(runs, out) -> int:
    from bbt_jax.report import report

    text, files = report(runs, out)
    print(text, end="")
    print("wrote " + ", ".join(map(str, files)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bbt_jax import artifact

    log = lambda s: print(s, flush=True)  # noqa: E731
    saved, h = _saved_harness(args, log=log)
    result = artifact.evaluate_prompt(h, saved, warn=log)
    reported = result["reported"].get("test")
    log(f"test {result['test']} (reported by train: {reported})")
    print(json.dumps(result), flush=True)
    return 0


def _saved_harness(args: argparse.Namespace, log=lambda s: None):
    """(saved prompt, its harness rebuilt as cmd_eval does: the card's config with the flags' overrides)."""
    from bbt_jax import artifact

    saved = artifact.load_prompt(args.prompt)
    return saved, _harness_of(saved, args, log=log)


def _harness_of(saved, args: argparse.Namespace, log=lambda s: None, model=None, **fixed):
    """The harness of a saved prompt: its card's config, the flags' overrides, then `fixed` settings; `model`:
    an already loaded model to reuse."""
    from bbt_jax import artifact
    from bbt_jax.harness import build

    fields = config_lib.flat_fields()
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    cfg = artifact.config_for(saved, **{**overrides, **fixed})
    if "data_dir" not in overrides:
        cfg = config_lib.with_shared_data(cfg)
    return build(cfg, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"), model=model, log=log)


def cmd_inspect(args: argparse.Namespace) -> int:
    from bbt_jax import reading

    if args.k < 1:
        raise UserError(f"--k {args.k}: must be >= 1")
    saved, h = _saved_harness(args)
    result = reading.inspect(h, saved, k=args.k, score=args.score)
    print(reading.format_table(result), flush=True)
    if args.json:
        try:
            write_json_atomic(args.json, result)
        except OSError as e:
            raise UserError(f"--json {args.json}: cannot write ({e.strerror})") from None
        print(f"wrote {args.json}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bbt_jax import artifact, export
    from bbt_jax.models.registry import load

    saved = artifact.load_prompt(args.prompt)
    export.check_exportable(saved)  # before loading the model
    m = artifact.config_for(saved).model
    model = load(m.model, m.tokenizer, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"))
    paths = export.export_peft(saved, args.peft, model, base_model=args.base_model)
    print(f"wrote {paths['config']} and {paths['weights']}")
    return 0


def _run_folder_prompt(run: str):
    from bbt_jax import artifact

    path = Path(run)
    if not path.exists():
        raise UserError(f"library add {run}: no such folder")
    if path.is_dir() and not (path / artifact.CARD_FILE).is_file():
        raise UserError(f"library add {run}: no {artifact.CARD_FILE} here (expected a `bbt-jax train --out` folder)")
    return artifact.load_prompt(path)


def _run_results(saved) -> dict | None:
    path = saved.path.parent / "results.json"
    if not path.is_file():
        return None
    return read_json(path, f"library add {path}", "results.json")


def cmd_library(args: argparse.Namespace) -> int:
    from bbt_jax import library

    lib_dir = Path(args.library)
    if lib_dir.exists() and not lib_dir.is_dir():
        raise UserError(f"--library {lib_dir}: is a file, expected a folder")
    if args.library_command == "add":
        lib = library.open_library(lib_dir) if (lib_dir / library.INDEX_FILE).exists() else None
        saved = [_run_folder_prompt(r) for r in args.runs]
        model_src = lib.index["model"] if lib else saved[0].card["model"]
        for s in saved:
            if s.card["model"] != model_src:
                raise UserError(f"library add {s.path.parent}: a prompt of {s.card['model']}, but the library "
                                f"holds prompts of {model_src}")
        model, built = None, []
        for s in saved:  # everything is embedded before anything is written
            h = _harness_of(s, args, model=model, **library.EMBED_SETTINGS)
            model = h.model
            built.append((s, library.entry_of(s, h, _run_results(s)), library.embed_rows(h)))
        lib = lib or library.new_library(lib_dir, model_src, model.family.name)
        for s, entry, keys_MxD in built:
            i = library.add_entry(lib, entry, keys_MxD, s.prompt_NxD, s.layers_YxNxD)
            print(f"entry {i}: {entry['task']} seed {entry['seed']} {entry['method']} "
                  f"{library.layout_str(entry)}, {len(keys_MxD)} keys ({entry['run']})")
        library.save(lib)
        print(f"wrote {lib_dir / library.INDEX_FILE} ({len(lib.entries)} entries)")
        return 0
    lib = library.open_library(lib_dir)
    if args.library_command == "list":
        print(json.dumps(lib.index, indent=1) if args.json else library.format_list(lib))
        return 0
    return _library_query(args, lib)


def _library_query(args: argparse.Namespace, lib) -> int:
    from bbt_jax import library
    from bbt_jax.harness import build

    if args.k < 1 or args.top_m < 1:
        raise UserError(f"--{'k' if args.k < 1 else 'top-m'} {min(args.k, args.top_m)}: must be >= 1")
    if args.write and Path(args.write).suffix != ".safetensors":
        raise UserError(f"--write {args.write}: must end in .safetensors (the file --init-prompt reads)")
    if not lib.entries:
        raise UserError(f"--library {lib.path}: the library is empty")
    base = config_lib.PRESETS[args.preset]() if args.preset else config_lib.from_dict(lib.entries[0]["config"])
    overrides = {k: v for k, v in vars(args).items() if k in config_lib.flat_fields()}
    cfg = config_lib.override(base, **{**overrides, **library.EMBED_SETTINGS})  # keys: always at p0, fp32
    if "data_dir" not in overrides:
        cfg = config_lib.with_shared_data(cfg)
    h = build(cfg, default_tokenizer=shared_path("models/roberta-tokenizer/tokenizer.json"), log=lambda s: None)
    if h.model.source != lib.index["model"]:
        raise UserError(f"--model {cfg.model.model}: the library holds prompts of {lib.index['model']}, "
                        f"not of {h.model.source}")
    result = library.query(lib, library.embed_rows(h), library.layout_of(h), task=h.task.name, k=args.k,
                           top_m=args.top_m, exclude_task=args.exclude_task)
    result.update(seed=cfg.run.seed, k_shot=cfg.run.k_shot, interpolated=args.interpolate, written=None)
    ranking = result["ranking"]
    if args.interpolate:
        prompt_NxD, layers, weights = library.interpolate(lib, ranking)
        for x, w in zip(ranking, weights):
            x["weight"] = w
    else:
        prompt_NxD, layers = lib.prompt(ranking[0]["id"])
    if args.write:
        meta = {"library": str(lib.path), "task": h.task.name, "seed": cfg.run.seed,
                "entries": [x["id"] for x in (ranking if args.interpolate else ranking[:1])],
                "weights": [x.get("weight", 1.0) for x in (ranking if args.interpolate else ranking[:1])]}
        result["written"] = str(library.write_prompt(args.write, prompt_NxD, layers, meta))
    if args.json:
        print(json.dumps(result))
        return 0
    print(library.format_query(result))
    if result["written"]:
        what = "vote-weighted average of entries " + ", ".join(str(i) for i in meta["entries"]) \
            if args.interpolate else f"the prompt of entry {ranking[0]['id']}"
        print(f"wrote {args.write} ({what}); start from it with: bbt-jax train --task {h.task.name} "
              f"--seed {cfg.run.seed} --placement {h.layout.placement} --init-prompt {args.write} ...")
    return 0


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from bbt_jax.xla_flags import apply_cpu_defaults

    apply_cpu_defaults()  # before JAX starts its backend; the user's XLA_FLAGS win
    warnings.showwarning = _one_line_warnings

    def command() -> int:
        _join(argv)
        args = build_parser().parse_args(argv)
        commands = {"train": cmd_train, "eval": cmd_eval, "sweep": cmd_sweep, "report": cmd_report,
                    "inspect": cmd_inspect, "export": cmd_export, "library": cmd_library}
        return commands[args.command](args)

    try:
        return run_main(command)  # a UserError: one `error:` line and its exit code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
