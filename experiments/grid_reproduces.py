"""Would a grid file rerun these runs? Each cell's config against the config a finished run recorded.

Usage (from the repo root):
    python experiments/grid_reproduces.py --preset demo --grid-file G --set test_rows=1000 --runs 'DIR/task=*' ...
For every cell of the grid file (bbt_jax/grid.py: the preset, then --set, then the cell's variant and its
per-task settings, then the cell's values) the run folder among --runs with the same task and seed is found
(exactly one must match) and the two configs (results.json "config", as the sweep wrote it) are compared,
every setting but `out` (a setting the run's config lacks, added since, counts as its default). Exit 0
when every cell equals its run: the grid file's one sweep would run those runs again (a vmapped group
equals its solo runs up to float rounding, tests/test_grid.py). Nothing runs, no model loads.
"""

import argparse
import glob
import json
from pathlib import Path

from bbt_jax import config as C
from bbt_jax import grid
from bbt_jax.errors import UserError, run_main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(C.PRESETS))
    p.add_argument("--grid-file", required=True)
    p.add_argument("--set", nargs="*", default=[], help="key=value overrides as the sweep's flags")
    p.add_argument("--runs", nargs="+", required=True, help="globs of run folders holding results.json")
    args = p.parse_args()
    sets = {}
    for item in args.set:
        key, _, value = item.partition("=")
        name = grid._key(key, f"--set {item}")
        sets[name] = grid.parse_value(name, value, f"--set {item}")
    base = C.override(C.PRESETS[args.preset](), **sets)
    cells, variants = grid.cells(grid.parse([], args.grid_file)), grid.read_variants(args.grid_file)
    runs = [Path(d) for pattern in args.runs for d in sorted(glob.glob(pattern))
            if (Path(d) / "results.json").is_file()]
    recorded = {d: json.loads((d / "results.json").read_text())["config"] for d in runs}
    defaults = C.to_dict(C.Config())  # a setting newer than a run: the run had its default's behaviour
    bad = 0
    print("| cell | run | differing settings (grid vs run) |\n|---|---|---|")
    for cell in cells:
        cfg = C.to_dict(grid.cell_config(base, cell, variants, "."))
        task, seed = cfg["run"]["task"], cfg["run"]["seed"]
        match = [d for d, rc in recorded.items() if rc["run"]["task"] == task and rc["run"]["seed"] == seed]
        if len(match) != 1:
            raise UserError(f"--runs: {len(match)} runs of task {task} seed {seed} (need exactly one)")
        rc = recorded[match[0]]
        diffs = [f"{k}: {v!r} vs {rc[g].get(k, '(absent)')!r}" for g, fields in cfg.items() for k, v in fields.items()
                 if k != "out" and rc[g].get(k, defaults[g][k]) != v]
        bad += bool(diffs)
        print(f"| {grid.cell_name(cell)} | {match[0]} | {'; '.join(diffs) or 'none'} |")
    print(f"\n{len(cells) - bad} of {len(cells)} cells equal their run")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
