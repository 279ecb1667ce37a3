"""Minutes per task and method of a sweep, from its logs (the `| N s |` of each cell's progress line: its
group's wall time split over the group's cells, so a task's sum is its wall time without the model load).

    python experiments/sweep_time.py LOG [LOG ...] [--out FILE.md]

A cell logged twice (a resumed sweep) counts once, its last line. Prints (and writes) a markdown table.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bbt_jax.errors import UserError, run_main

LINE = re.compile(r"^\[\d+/\d+\] (?P<cell>\S+): .*\| (?P<s>\d+) s \| ETA")


def cell_seconds(paths: list[str]) -> dict[str, int]:
    """{cell name: seconds} over the logs, in order (a later line of a cell replaces an earlier one)."""
    out: dict[str, int] = {}
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such log")
        for line in Path(path).read_text().splitlines():
            if m := LINE.match(line):
                out[m["cell"]] = int(m["s"])
    if not out:
        raise UserError(f"{', '.join(paths)}: no finished cell's progress line")
    return out


def table(seconds: dict[str, int]) -> str:
    """Minutes per task (rows) and method (columns), a task's total and its cells, and the sum."""
    minutes: dict[str, dict[str, float]] = {}
    cells: dict[str, int] = {}
    methods: list[str] = []
    for cell, s in seconds.items():
        kv = dict(item.split("=", 1) for item in cell.split(","))
        task, method = kv.get("task", "-"), kv.get("variant", kv.get("method", "-"))
        minutes.setdefault(task, {}).setdefault(method, 0.0)
        minutes[task][method] += s / 60
        cells[task] = cells.get(task, 0) + 1
        methods += [method] if method not in methods else []
    rows = ["| task | " + " | ".join(methods) + " | task (min) | cells |", "|---" * (len(methods) + 3) + "|"]
    for task, m in minutes.items():
        rows.append(f"| {task} | " + " | ".join(f"{m[k]:.1f}" if k in m else "" for k in methods)
                    + f" | {sum(m.values()):.1f} | {cells[task]} |")
    total = sum(sum(m.values()) for m in minutes.values())
    rows.append("| all | " + " | ".join(f"{sum(m.get(k, 0) for m in minutes.values()):.1f}" for k in methods)
                + f" | **{total:.1f}** ({total / 60:.2f} h) | {len(seconds)} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    text = table(cell_seconds(args.logs))
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
