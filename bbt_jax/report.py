"""Tables and plots over finished runs: one row per (task, method, seed), mean ± std over seeds.

`report(paths, out)` reads every results.json under `paths` (files, or folders searched
recursively) and writes into `out`: results.csv (every row), results.md (methods x tasks,
"mean ± std (n)" of the test metric in %, an avg column; calls and wall time per method),
test_by_task.png and curves.png. `plot_curve(results, path)` draws one run (`train --plot`).

A row's method is a label derived from the run's effective settings (`method_label`), unless
the results dict carries its own "label" (sweeps set one when the grid varies other settings).
Runs with `zero_shot_test` add one "zero-shot" row per (task, seed, model).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from bbt_jax.errors import UserError
from bbt_jax.io import read_json, write_bytes_atomic

TASK_ORDER = ("sst2", "yelpp", "agnews", "dbpedia", "mrpc", "snli", "rte")
METHOD_ORDER = ("zero-shot", "bbt-paper", "bbt", "bbtv2", "bbtv2-seq", "bbtv2-par", "prompt-tuning", "deep-prompt-tuning")
COLUMNS = ("task", "method", "seed", "test", "dev", "calls", "wall_s", "metric", "model", "path")
ZERO_SHOT = "zero-shot"


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """results.json files: each path itself, or every results.json below a folder (sorted)."""
    paths = [Path(p) for p in paths]
    found: list[Path] = []
    for p in paths:
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob("results.json"))
        else:
            raise UserError(f"{p}: no such file or folder")
    if not found:
        raise UserError(f"no results.json found in {', '.join(map(str, paths))}")
    return found


def load_results(path: Path) -> dict:
    """One results.json; unreadable or malformed is a UserError naming the file."""
    results = read_json(path, str(path), "results.json")
    if not isinstance(results, dict):
        raise UserError(f"{path}: malformed results.json (expected an object, got {type(results).__name__})")
    for key in ("task", "test"):
        if key not in results:
            raise UserError(f"{path}: malformed results.json (no {key!r})")
    if not isinstance(results["test"], dict) or "acc" not in results["test"]:
        raise UserError(f"{path}: malformed results.json (test has no 'acc')")
    return results


def method_label(results: dict) -> str:
    """bbt / bbt-paper (PyCMA_ES with the at-eval dev candidate) / bbtv2-seq / bbtv2-par / prompt-tuning /
    deep-prompt-tuning, from the effective settings; a string "label" in the results wins."""
    if isinstance(results.get("label"), str) and results["label"]:
        return results["label"]
    eff = _settings(results)
    method = eff.get("method") or "bbt"
    if method == "bbtv2":
        return {"sequential": "bbtv2-seq", "parallel": "bbtv2-par"}.get(eff.get("layer_schedule"), "bbtv2")
    if method == "bbt":
        strategy = str(eff.get("strategy") or "").replace("-", "_").lower()
        if strategy == "pycma_es" and eff.get("dev_candidate") == "at-eval":
            return "bbt-paper"
    return method


def _settings(results: dict) -> dict:
    """Flat settings: the config's groups, overridden by `effective` where present."""
    flat = {k: v for group in (results.get("config") or {}).values() if isinstance(group, dict)
            for k, v in group.items()}
    return {**flat, **{k: v for k, v in (results.get("effective") or {}).items() if v is not None}}


def _seed(results: dict):
    eff = _settings(results)
    split_seed = eff.get("split_seed")
    return split_seed if isinstance(split_seed, int) and split_seed >= 0 else eff.get("seed")


def test_metric(results: dict) -> str:
    """The task's metric: f1 for mrpc where the test scores carry it, else acc."""
    return "f1" if results.get("task") == "mrpc" and "f1" in results["test"] else "acc"


def _pct(x) -> float | None:
    return None if x is None else 100.0 * float(x)


def run_rows(results: dict, path: str | Path = "") -> list[dict]:
    """The run's row, and a zero-shot row when it scored the initial prompt."""
    metric, task, seed = test_metric(results), results["task"], _seed(results)
    dev = results.get("dev") or {}
    row = {"task": task, "method": method_label(results), "seed": seed, "test": _pct(results["test"][metric]),
           "dev": _pct(dev.get("best_perf")), "calls": results.get("calls"),
           "wall_s": (results.get("time") or {}).get("wall_s"), "metric": metric,
           "model": results.get("model", ""), "path": str(path)}
    rows = [row]
    zs = results.get("zero_shot_test")
    if isinstance(zs, dict) and metric in zs:
        rows.append({**row, "method": ZERO_SHOT, "test": _pct(zs[metric]), "dev": None, "calls": 0, "wall_s": None})
    return rows


def _order(value, order: tuple) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _sort_key(row: dict) -> tuple:
    seed = row["seed"] if isinstance(row["seed"], int) else math.inf
    return (_order(row["task"], TASK_ORDER), _order(row["method"], METHOD_ORDER), seed, row["path"])


def collect(paths: Iterable[str | Path]) -> tuple[list[dict], list[tuple[str, dict]]]:
    """(rows sorted by task, method, seed; [(method label, results)] of every run, for the curves)."""
    rows, runs, zero_shot_seen = [], [], set()
    for path in find_results(paths):
        results = load_results(path)
        for row in run_rows(results, path):
            if row["method"] == ZERO_SHOT:
                key = (row["task"], row["seed"], row["model"])  # the same initial prompt, scored by several runs
                if key in zero_shot_seen:
                    continue
                zero_shot_seen.add(key)
            rows.append(row)
        runs.append((method_label(results), results))
    return sorted(rows, key=_sort_key), runs


def _tasks(rows: list[dict]) -> list[str]:
    return sorted({r["task"] for r in rows}, key=lambda t: _order(t, TASK_ORDER))


def _methods(rows: list[dict]) -> list[str]:
    return sorted({r["method"] for r in rows}, key=lambda m: _order(m, METHOD_ORDER))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values) -> str:
    """"mean ± std" of the values that are not None, one decimal; "—" if none."""
    values = [v for v in values if v is not None]
    return "{:.1f} ± {:.1f}".format(*mean_std(values)) if values else "—"


def _cell(rows: list[dict], task: str, method: str) -> list[float]:
    return [r["test"] for r in rows if r["task"] == task and r["method"] == method and r["test"] is not None]


def markdown(rows: list[dict]) -> str:
    """The test table (methods x tasks, "mean ± std (n)" in %, avg of the task means over the tasks that
    every method has, so that the averages compare) and the cost table."""
    tasks, methods = _tasks(rows), _methods(rows)
    metrics = sorted({f"{r['task']}: {r['metric']}" for r in rows if r["metric"] != "acc"})
    others = "".join(f", {m}" for m in metrics)
    common = [t for t in tasks if all(_cell(rows, t, m) for m in methods)]  # the avg's tasks: every method has them
    head = "avg" if common == tasks else f"avg ({len(common)} of {len(tasks)} tasks)"
    lines = [f"Test metric (%), mean ± std over seeds (n runs); accuracy{others}."
             + ("" if common == tasks else f" avg: mean over the tasks every method has ({', '.join(common)})."),
             "", "| method | " + " | ".join(tasks) + f" | {head} |", "|---|" + "---|" * (len(tasks) + 1)]
    for m in methods:
        cells, means = [], []
        for t in tasks:
            v = _cell(rows, t, m)
            if v:
                if t in common:
                    means.append(mean_std(v)[0])
                cells.append(f"{format_mean_std(v)} ({len(v)})")
            else:
                cells.append("—")
        avg = f"{statistics.mean(means):.1f}" if means else "—"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {avg} |")
    lines += ["", "| method | calls | wall s (mean) | runs |", "|---|---|---|---|"]
    for m in methods:
        if m == ZERO_SHOT:
            continue
        mine = [r for r in rows if r["method"] == m]
        calls = sorted({r["calls"] for r in mine if r["calls"] is not None})
        walls = [r["wall_s"] for r in mine if r["wall_s"] is not None]
        calls_s = "—" if not calls else str(calls[0]) if len(calls) == 1 else f"{calls[0]}–{calls[-1]}"
        wall_s = f"{statistics.mean(walls):.1f}" if walls else "—"
        lines.append(f"| {m} | {calls_s} | {wall_s} | {len(mine)} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})
    write_bytes_atomic(path, buf.getvalue().encode())


def _figure(ncols: int, width: float = 5.5):
    from matplotlib.figure import Figure  # Agg canvas; pyplot (and its global backend) is never touched

    fig = Figure(figsize=(width * ncols, 4.0), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())


def plot_tests(rows: list[dict], path: Path) -> None:
    """Grouped bars: test metric per task (groups) and method (bars), seed std as error bars."""
    import numpy as np

    tasks, methods = _tasks(rows), _methods(rows)
    fig, (ax,) = _figure(1, width=max(6.0, 1.2 * len(tasks) * max(1, len(methods)) / 3))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        stats = [mean_std(v) if (v := _cell(rows, t, m)) else (np.nan, 0.0) for t in tasks]
        x = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(x, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=3, label=m)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("test metric (%)")
    ax.legend(fontsize="small")
    _save(fig, path)


def _curve_points(results: dict) -> tuple[list, list, list, list]:
    """(calls, best train loss) per generation/step and (calls, dev metric in %) per dev record."""
    curve = results.get("curve") or []
    train = [(r["calls"], r["best_loss"]) for r in curve if "calls" in r and "best_loss" in r]
    dev = [(r["calls"], 100.0 * r["dev"].get("dev_perf", r["dev"].get("dev_acc")))
           for r in curve if isinstance(r.get("dev"), dict) and "calls" in r
           and r["dev"].get("dev_perf", r["dev"].get("dev_acc")) is not None]
    return [c for c, _ in train], [v for _, v in train], [c for c, _ in dev], [v for _, v in dev]


def _mean_curve(xys: list[tuple[list, list]]):
    """The mean of several curves on the union of their x values, up to the shortest curve's end."""
    import numpy as np

    xys = [(np.asarray(x, float), np.asarray(y, float)) for x, y in xys if len(x)]
    if not xys:
        return None
    end = min(x[-1] for x, _ in xys)
    grid = np.unique(np.concatenate([x[x <= end] for x, _ in xys]))
    return grid, np.mean([np.interp(grid, x, y) for x, y in xys], axis=0)


def plot_curves(runs: list[tuple[str, dict]], path: Path) -> None:
    """Per method, the mean over its runs of the best training loss and of the dev metric vs calls."""
    fig, (ax_loss, ax_dev) = _figure(2)
    for m in sorted({m for m, _ in runs}, key=lambda m: _order(m, METHOD_ORDER)):
        points = [_curve_points(r) for label, r in runs if label == m]
        for ax, mean in ((ax_loss, _mean_curve([(p[0], p[1]) for p in points])),
                         (ax_dev, _mean_curve([(p[2], p[3]) for p in points]))):
            if mean is not None:
                ax.plot(*mean, label=f"{m} ({len(points)})", marker="." if len(mean[0]) < 30 else None)
    _label_axes(ax_loss, ax_dev)
    _save(fig, path)


def plot_curve(results: dict, path: str | Path) -> None:
    """One run: best training loss and the dev metric vs calls (steps for gradient methods)."""
    calls, loss, dev_calls, dev = _curve_points(results)
    fig, (ax_loss, ax_dev) = _figure(2)
    ax_loss.plot(calls, loss, marker="." if len(calls) < 30 else None, label="best train loss")
    ax_dev.plot(dev_calls, dev, marker=".", label=f"dev {(results.get('dev') or {}).get('metric', 'metric')}")
    fig.suptitle(f"{results.get('task', '')} {method_label(results)}")
    _label_axes(ax_loss, ax_dev)
    _save(fig, Path(path))


def _label_axes(ax_loss, ax_dev) -> None:
    ax_loss.set(xlabel="calls (gradient methods: steps)", ylabel="best training loss")
    ax_dev.set(xlabel="calls (gradient methods: steps)", ylabel="dev metric (%)")
    for ax in (ax_loss, ax_dev):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")


def default_out(paths: list[str | Path]) -> Path:
    """The first folder among `paths`, else the first file's folder."""
    for p in map(Path, paths):
        if p.is_dir():
            return p
    return Path(paths[0]).parent


def report(paths: list[str | Path], out: str | Path | None = None) -> tuple[str, list[Path]]:
    """Read the runs under `paths` and write results.csv, results.md, test_by_task.png and curves.png
    into `out` (default: the first folder among `paths`). Returns (the markdown, the files written)."""
    rows, runs = collect(paths)
    out = Path(out) if out is not None else default_out(paths)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    text = markdown(rows)
    files = [out / "results.csv", out / "results.md", out / "test_by_task.png", out / "curves.png"]
    write_csv(rows, files[0])
    write_bytes_atomic(files[1], text.encode())
    plot_tests(rows, files[2])
    plot_curves(runs, files[3])
    return text, files
