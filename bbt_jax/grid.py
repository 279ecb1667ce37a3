"""Grid sweeps: every cell of a product of settings, one `train()` per cell, resumable, then the report.

`bbt-jax sweep --grid task=sst2,agnews --grid seed=13,21 ...` (or `--grid-file grid.json`):
grid keys are flat config field names (`-` or `_`), values are parsed with the field's type.
Cells are the product in the order given (the last key varies fastest); each runs in
`<out>/<k1>=<v1>,<k2>=<v2>` with zero-shot scoring, and writes its results.json there.
A cell whose results.json exists is skipped; an interrupted cell resumes from its own
checkpoints (train.py resumes from the same out). One loaded model serves every cell while
the model and tokenizer settings stay the same (put `model` first in a grid over models).
`<out>/sweep.json` records the grid and the fixed overrides; an `<out>` holding another sweep
is refused. At the end, report.py tabulates `<out>`. A grid file may name bundles of settings,
"variants" (e.g. {"bbt-paper": {"strategy": "pycma_es", ...}, "bbtv2": {"method": "bbtv2", "sigma": 0.2}}),
that the grid key "variant" ranges over; the variant's name is the report's method label. A variant's
"tasks" object gives settings for some tasks only, on top of the variant's own (a method's per-task
choices: {"best": {"method": "bbtv2", "tasks": {"yelpp": {"cue": "..."}}}}).

Cells that differ only in their seeds (few-shot split, projection, ES noise) run as ONE vmapped
search (sweep.train_group: one compiled call per interval for all of them, each cell still with its
own folder, checkpoints, artifact and results.json), gradient methods too; `--no-vmap-seeds` runs cell
by cell. A vmapped cell equals its solo run up to float rounding (tests/test_grid.py).

Under several processes (distributed.py) every process runs `run` with the same arguments: a seed
group's cells are sharded over every process's devices and each process writes the cells it computed
(sweep.train_group); a cell run alone shards its population over them and process 0 writes it.
Process 0 writes sweep.json, and returns once every process is done (then the report).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from bbt_jax import config as config_lib
from bbt_jax import distributed
from bbt_jax.errors import UserError
from bbt_jax.io import read_json, write_json_atomic

SWEEP_FILE = "sweep.json"
# Settings the report already tells apart (task, seed columns; the method label); any other grid key
# goes into the cell's "label" so that cells differing in it are not averaged together.
_REPORTED = ("task", "seed", "split_seed", "projection_seed", "es_seed", "method", "layer_schedule")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")
_MAX_NAME = 200


def _field_type(name: str) -> type:
    group, _ = config_lib.flat_fields()[name]
    return type(getattr(getattr(config_lib.Config(), group), name))


def _key(raw: str, where: str) -> str:
    name = raw.strip().replace("-", "_")
    if name not in config_lib.flat_fields():
        raise UserError(f"{where}: unknown setting {raw.strip()!r} (any train flag's name, e.g. task, seed, method)")
    if name == "out":
        raise UserError(f"{where}: 'out' cannot vary (each cell gets its own folder under the sweep's --out)")
    return name


def parse_value(name: str, value, where: str):
    """A grid value as the field's type (bool: true/false); UserError naming `where` and the value. A string
    setting is taken verbatim (a cue's leading newline or a label word's space is part of it)."""
    kind = _field_type(name)
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
        elif kind is str:
            return value
        else:
            try:
                return kind(text)
            except ValueError:
                pass
    elif kind is bool and isinstance(value, bool):
        return value
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
    raise UserError(f"{where}: {name} takes {expected}, got {value!r}")


def parse_items(items: list[str]) -> dict[str, list]:
    """--grid items `key=v1,v2,...` -> {field name: [values]}, in the order given."""
    grid: dict[str, list] = {}
    for item in items:
        where = f"--grid {item}"
        raw, sep, values = item.partition("=")
        if not sep or not raw.strip() or not values.strip():
            raise UserError(f"{where}: expected key=value,value,... (e.g. --grid seed=13,21)")
        name = _key(raw, where)
        if name in grid:
            raise UserError(f"{where}: {name} is already in the grid")
        grid[name] = [parse_value(name, v.strip(), where) for v in values.split(",")]  # "a, b" = "a,b"
    return grid


def read_grid_file(path: str | Path) -> dict[str, list]:
    """--grid-file: a JSON object {key: [values]} (a single value counts as a list of one). Its optional
    "variants" object (see `read_variants`) adds the grid key "variant" = every variant, in order, unless the
    file gives "variant" itself."""
    where = f"--grid-file {path}"
    obj = read_json(path, where, "JSON")
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected an object {{\"key\": [values], ...}}")
    grid: dict[str, list] = {}
    variants = read_variants(path)
    for raw, values in obj.items():
        if raw == "variants":
            continue
        if raw == VARIANT:
            values = values if isinstance(values, list) else [values]
            unknown = [v for v in values if v not in variants]
            if not values or unknown:
                raise UserError(f"{where}: variant {unknown[0] if unknown else '(none)'!r} is not defined in "
                                "its \"variants\"")
            grid[VARIANT] = values
            continue
        name = _key(raw, where)
        if name in grid:
            raise UserError(f"{where}: {name} appears twice")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"{where}: {raw} has no values")
        grid[name] = [parse_value(name, v, f"{where} ({raw})") for v in values]
    if variants and VARIANT not in grid:
        grid = {VARIANT: list(variants), **grid}
    return grid


VARIANT = "variant"
PER_TASK = "tasks"  # a variant's settings for some tasks only


def read_variants(path: str | Path | None) -> dict[str, dict]:
    """The grid file's "variants": {name: {setting: value}}, named bundles of settings (a method with its own
    budget, sigma, ...) that one grid key "variant" ranges over; the name becomes the report's method label.
    A variant's "tasks" ({task: {setting: value}}) adds settings for those tasks (`variant_settings`). A
    setting may be in a variant or in the grid, not both."""
    if path is None:
        return {}
    where = f"--grid-file {path}"
    obj = read_json(path, where, "JSON")
    raw = obj.get("variants", {}) if isinstance(obj, dict) else {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise UserError(f"{where}: \"variants\" must be an object {{\"name\": {{\"setting\": value}}}}")
    grid_keys = {_key(k, where) for k in obj if k not in ("variants", VARIANT)}
    out = {}
    for name, settings in raw.items():
        if not name or _UNSAFE.search(name):
            raise UserError(f"{where}: variant name {name!r}: use letters, digits and . _ + -")
        parsed = _settings({k: v for k, v in settings.items() if k != PER_TASK}, grid_keys, where, f"variant {name}")
        if PER_TASK in settings:
            parsed[PER_TASK] = _per_task(settings[PER_TASK], grid_keys, where, f"variant {name}")
        out[name] = parsed
    return out


def _settings(raw: dict, grid_keys: set[str], where: str, scope: str) -> dict:
    """{setting: value} of a variant or of one task in it (`scope`), parsed."""
    parsed = {}
    for k, v in raw.items():
        key = _key(k, f"{where} ({scope})")
        if key in grid_keys:
            raise UserError(f"{where}: {key} is both in {scope} and in the grid")
        parsed[key] = parse_value(key, v, f"{where} ({scope}, {k})")
    return parsed


def _per_task(raw, grid_keys: set[str], where: str, scope: str) -> dict[str, dict]:
    """A variant's "tasks": {task: {setting: value}}, settings for those tasks only."""
    from bbt_jax.tasks import TASKS

    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise UserError(f"{where} ({scope}): \"{PER_TASK}\" must be an object {{\"task\": {{\"setting\": value}}}}")
    out = {}
    for task, settings in raw.items():
        if task not in TASKS:
            raise UserError(f"{where} ({scope}): unknown task {task!r} in \"{PER_TASK}\" (choose from "
                            f"{', '.join(TASKS)})")
        out[task] = _settings(settings, grid_keys, where, f"{scope}, task {task}")
        if "task" in out[task]:
            raise UserError(f"{where} ({scope}, task {task}): a task's settings cannot set the task")
    return out


def variant_settings(variant: dict, task: str) -> dict:
    """The settings a variant gives a cell of `task`: its own, then its "tasks" entry for that task."""
    return {**{k: v for k, v in variant.items() if k != PER_TASK}, **variant.get(PER_TASK, {}).get(task, {})}


def parse(items: list[str], grid_file: str | Path | None = None) -> dict[str, list]:
    """The grid from --grid-file (first) and --grid items; a key in both is an error."""
    grid = read_grid_file(grid_file) if grid_file else {}
    for name, values in parse_items(items).items():
        if name in grid:
            raise UserError(f"--grid {name}=...: {name} is already in --grid-file {grid_file}")
        grid[name] = values
    if not grid:
        raise UserError("--grid: no grid given (e.g. --grid seed=13,21 or --grid-file grid.json)")
    return grid


def cells(grid: dict[str, list]) -> list[dict]:
    """The product of the grid's values, in the order given (the last key varies fastest)."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _text(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def cell_name(cell: dict) -> str:
    """`k1=v1,k2=v2`, a valid file name: other characters become `_` and an edited or overlong name gets a
    short hash of the exact cell, so that distinct cells never share a folder."""
    exact = ",".join(f"{k}={_text(v)}" for k, v in cell.items())
    name = _UNSAFE.sub("_", exact)
    if name != exact or len(name) > _MAX_NAME or name.startswith((".", "-")):
        digest = hashlib.sha256(exact.encode()).hexdigest()[:8]
        name = f"{name.lstrip('.-')[:_MAX_NAME]}~{digest}"
    return name


def cell_label(results: dict, cell: dict) -> str | None:
    """The report's method label plus the grid settings the report does not show (None: none)."""
    from bbt_jax.report import method_label

    extra = {k: v for k, v in cell.items() if k not in _REPORTED and k != VARIANT}
    name = cell.get(VARIANT) or (method_label(results) if extra else None)
    if name is None:
        return None
    return " ".join([name] + ([",".join(f"{k}={_text(v)}" for k, v in extra.items())] if extra else []))


def _differs(key: str, old, new) -> bool:
    """Unequal as JSON, except that a sweep may grow. In the grid, key order counts (it names the cells'
    folders), a key may gain values and the order of its values does not count (the same cells, in another
    order); in "variants" new names may be added, but a variant's settings may not change."""
    new = json.loads(json.dumps(new))
    if key == "grid" and isinstance(old, dict) and isinstance(new, dict):
        def values(v):
            return {json.dumps(x) for x in (v if isinstance(v, list) else [v])}

        return list(old) != list(new) or any(not values(old[k]) <= values(new[k]) for k in old)
    if key == "variants" and isinstance(old, dict) and isinstance(new, dict):
        return any(name not in new or new[name] != settings for name, settings in old.items())
    return old != new


def check_spec(out: Path, spec: dict) -> None:
    """Write out/sweep.json, or check that the one there describes the same sweep or one it grows into
    (`_differs`; the file then takes the new spec, and only the new cells run)."""
    path = out / SWEEP_FILE
    if path.is_file():
        old = read_json(path, str(path), "sweep file")
        diffs = [f"{k} {json.dumps(old.get(k))} -> {json.dumps(spec[k])}"
                 for k in spec if _differs(k, old.get(k), spec[k])]
        if diffs:
            raise UserError(f"--out {out}: holds another sweep ({'; '.join(diffs)}); a sweep may gain values and "
                            "variants, not lose or change them: use a new --out")
        if old == json.loads(json.dumps(spec)) or not distributed.is_main():
            return  # (else more cells or another order: the file takes the new grid)
    if distributed.is_main():
        write_json_atomic(path, spec)


SEED_FIELDS = ("seed", "split_seed", "projection_seed", "es_seed")


def seed_groups(configs: list[config_lib.Config]) -> list[list[int]]:
    """Indices of the cells whose configs differ only in their seeds (and out), in grid order: each group
    can run as one vmapped search (sweep.train_group)."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        rest = config_lib.to_dict(config_lib.override(cfg, out="", **{k: 0 for k in SEED_FIELDS}))
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(i)
    return list(groups.values())


def cell_config(base: config_lib.Config, cell: dict, variants: dict[str, dict], out: str | Path) -> config_lib.Config:
    """A cell's config: the base, its variant's settings for the cell's task, then the cell's own values."""
    variant = variants.get(cell.get(VARIANT), {})
    task = cell.get("task", variant.get("task", base.run.task))
    return config_lib.override(base, **variant_settings(variant, task),
                               **{k: v for k, v in cell.items() if k != VARIANT}, out=str(Path(out) / cell_name(cell)))


def run(base: config_lib.Config, grid: dict[str, list], out: str | Path, *, spec: dict, environment: dict,
        default_tokenizer: str | Path | None = None, log: Callable = print, vmap_seeds: bool = True,
        variants: dict[str, dict] | None = None) -> list[Path]:
    """Run every cell of `grid` on top of `base` under `out`; returns the cells' folders.

    Args:
      base: the config every cell starts from (preset + fixed overrides).
      grid: {flat field name: [values]} (see `parse`).
      out: the sweep's folder.
      spec: what identifies the sweep (grid, overrides, preset), kept in out/sweep.json.
      environment: provenance.environment(...) stored in each new results.json.
      default_tokenizer: as train().
      log: one line at a time.
      vmap_seeds: run the unfinished cells that differ only in seeds as one vmapped search (ES methods;
        sweep.train_group), else one by one.
      variants: {name: settings} for the grid key "variant" (read_variants).
    """
    from bbt_jax import sweep
    from bbt_jax.models.registry import load
    from bbt_jax.train import train

    out = Path(out)
    todo = cells(grid)
    variants = variants or {}
    configs = [cell_config(base, cell, variants, out) for cell in todo]  # validated
    check_spec(out, spec)
    loaded, spent, n = {"key": None, "model": None}, [], len(todo)

    def model_for(cfg):
        key = (cfg.model.model, cfg.model.tokenizer)
        if key != loaded["key"]:
            loaded.update(key=key, model=None)  # release the previous model first
            loaded["model"] = load(cfg.model.model, cfg.model.tokenizer, default_tokenizer=default_tokenizer)
        elif loaded.get("task") != cfg.run.task:
            # the sweep moved on to another task: the previous task's prepared test batches and its last seed
            # group's train/dev rows (the decoder's input caches, GBs for long rows) are not needed again in
            # task-major order
            loaded["model"].prepared.clear()
            loaded["model"].stacked.clear()
        loaded["task"] = cfg.run.task
        return loaded["model"]

    def write(i, results, seconds):
        cell, cfg = todo[i], configs[i]
        results["environment"] = environment
        if (label := cell_label(results, cell)) is not None:
            results["label"] = label
        write_json_atomic(Path(cfg.run.out) / "results.json", results)
        spent.append(seconds)
        left = sum(not (Path(c.run.out) / "results.json").is_file() for c in configs)
        log(f"[{i + 1}/{n}] {cell_name(cell)}: {progress(results)} | {seconds:.0f} s | "
            f"ETA {left * sum(spent) / len(spent):.0f} s")

    for group in seed_groups(configs) if vmap_seeds else [[i] for i in range(n)]:
        pending = []
        for i in group:
            if (Path(configs[i].run.out) / "results.json").is_file():
                log(f"[{i + 1}/{n}] {cell_name(todo[i])}: done ({_done(Path(configs[i].run.out) / 'results.json')})")
            else:
                pending.append(i)
                if distributed.is_main():
                    Path(configs[i].run.out).mkdir(parents=True, exist_ok=True)
        if len(pending) > 1:
            t0 = time.perf_counter()
            results = sweep.train_group([configs[i] for i in pending], model=model_for(configs[pending[0]]),
                                        default_tokenizer=default_tokenizer, zero_shot=True,
                                        log=lambda s, g=pending: log(f"  [{cell_name(todo[g[0]])} +{len(g) - 1} "
                                                                     f"seeds vmapped] {s}"))
            if results is not None:
                seconds = (time.perf_counter() - t0) / len(pending)
                for i, res in zip(pending, results, strict=True):
                    if res is not None:  # None: another process's cell
                        write(i, res, seconds)
                continue
        for i in pending:  # one by one
            cfg, name = configs[i], cell_name(todo[i])
            model_for(cfg).stacked.clear()  # a seed group's rows (sweep) serve groups only
            t0 = time.perf_counter()
            results = train(cfg, default_tokenizer=default_tokenizer, log=lambda s, name=name: log(f"  [{name}] {s}"),
                            zero_shot=True, out=Path(cfg.run.out), model=model_for(cfg))
            if distributed.is_main():
                write(i, results, time.perf_counter() - t0)
    distributed.barrier("bbt_jax sweep done")  # every cell written before anyone reports
    return [Path(c.run.out) for c in configs]


def _done(path: Path) -> str:
    from bbt_jax.report import load_results

    try:
        return progress(load_results(path))
    except UserError as e:
        return str(e)


def progress(results: dict) -> str:
    """`test acc 0.8125 (zero-shot 0.7500) | dev acc 0.8750`."""
    from bbt_jax.report import test_metric

    m = test_metric(results)
    zs = results.get("zero_shot_test") or {}
    line = f"test {m} {results['test'][m]:.4f}" + (f" (zero-shot {zs[m]:.4f})" if m in zs else "")
    dev = results.get("dev") or {}
    if dev.get("best_perf") is not None:
        line += f" | dev {dev.get('metric', m)} {dev['best_perf']:.4f}"
    return line
