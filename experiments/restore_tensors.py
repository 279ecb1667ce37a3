"""Rebuild a finished cell's lost prompt.safetensors (from results.json, the library or a rerun).

Usage (from the repo root):
    python experiments/restore_tensors.py experiments/table7/runs/task=dbpedia,variant=bbt,seed=*

The table's cells commit results.json, config.json and prompt.json but not the tensors (.gitignore), so a fresh
checkout cannot read their prompts (library, inspect, eval). For BBT-style cells the prompt is a function of the
kept candidate: results.json's best_z, the seed's projection and p0 (artifact.save_prompt). This script rebuilds
the tensors and records their new sha256 on the card, keeping the old one as tensors.restored.sha256_at_run: the
old file's bytes cannot be reproduced (safetensors ordered its metadata by a per-process hash seed until
io.safetensors_bytes), only its tensors. With --library, a cell whose prompt the library holds is checked against
it (its arrays were read from the lost file): restored only if bitwise equal. Gradient cells (best_z null) keep no
candidate: a shallow one the library holds is rebuilt from the library's copy (the candidate IS the prompt);
the others: rerun them into another folder (e.g. `bbt-jax sweep` with the same grid restricted to them, --out DIR)
and pass --from-rerun DIR: a rerun cell of the same name gives its tensors if its dev and test metrics equal the
cell's and its training curve agrees within 1e-4 relative. Cells with tensors already present are left alone.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bbt_jax import artifact, library
from bbt_jax import config as C
from bbt_jax.errors import run_main
from bbt_jax.harness import build
from bbt_jax.io import write_json_atomic
from bbt_jax.models.registry import load


def _curves_agree(a: list, b: list) -> bool:
    return len(a) == len(b) and all(abs(x[k] - y[k]) <= 1e-4 * max(1.0, abs(y[k]))
                                    for x, y in zip(a, b) for k in y if isinstance(y[k], float))


def from_rerun(folder: Path, card: dict, results: dict, rerun_root: str | None) -> bool:
    """Take a gradient cell's tensors from its rerun when the rerun reproduced it; False otherwise."""
    rerun = Path(rerun_root or "") / folder.name
    if not rerun_root or not (rerun / "results.json").is_file():
        print(f"{folder.name}: a gradient cell keeps no candidate; rerun it and pass --from-rerun", file=sys.stderr)
        return False
    again = json.loads((rerun / "results.json").read_text())
    if again["test"] != results["test"] or again["dev"] != results["dev"] or not _curves_agree(again["curve"],
                                                                                                results["curve"]):
        print(f"{folder.name}: the rerun in {rerun} did not reproduce the cell (test {again['test']} vs "
              f"{results['test']}); left missing", file=sys.stderr)
        return False
    rebuilt = json.loads((rerun / artifact.CARD_FILE).read_text())
    shutil.copy(rerun / rebuilt["tensors"]["file"], folder / card["tensors"]["file"])
    card["tensors"] = {**rebuilt["tensors"], "restored": {
        "from": "a rerun of the cell (experiments/restore_tensors.py --from-rerun): dev and test metrics equal, "
                "training curve within 1e-4 relative", "sha256_at_run": card["tensors"]["sha256"]}}
    write_json_atomic(folder / artifact.CARD_FILE, card)
    print(f"{folder.name}: tensors restored from the rerun {rerun}")
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cells", nargs="+", help="cell folders (results.json + prompt.json)")
    p.add_argument("--library", default=None, help="a library folder holding some of these cells' prompts")
    p.add_argument("--from-rerun", default=None, help="a sweep folder rerunning some of these (gradient) cells")
    args = p.parse_args()
    lib = library.open_library(Path(args.library)) if args.library else None
    held = {Path(e["run"]).name: e["id"] for e in lib.entries} if lib else {}
    model, failed = None, 0
    for folder in map(Path, args.cells):
        card_path, res_path = folder / artifact.CARD_FILE, folder / "results.json"
        if not card_path.is_file() or not res_path.is_file():
            print(f"{folder}: no {artifact.CARD_FILE} or results.json, skipped", file=sys.stderr)
            failed += 1
            continue
        card, results = json.loads(card_path.read_text()), json.loads(res_path.read_text())
        if (folder / card["tensors"]["file"]).is_file():
            print(f"{folder.name}: tensors present")
            continue
        if results.get("best_z") is None and folder.name not in held:
            failed += not from_rerun(folder, card, results, args.from_rerun)
            continue
        cfg = C.from_dict(card["config"])
        cfg = C.with_shared_data(cfg)
        model = model or load(cfg.model.model, cfg.model.tokenizer)
        h = build(cfg, model=model, log=lambda s: None)
        kept_NxD = lib.prompt(held[folder.name])[0] if folder.name in held else None  # read from the lost file
        if results.get("best_z") is not None:
            source, z = "results.json best_z", np.asarray(results["best_z"], np.float32)
        else:  # a gradient method's candidate is its prompt itself (harness.projection: Identity)
            source, z = "the library's copy", np.asarray(kept_NxD, np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            paths = artifact.save_prompt(tmp, h, z, card["metrics"])
            rebuilt = json.loads(Path(paths["card"]).read_text())
            check = "not in the library"
            if kept_NxD is not None:
                if not np.array_equal(artifact.load_prompt(tmp).prompt_NxD, kept_NxD):
                    print(f"{folder.name}: rebuilt prompt differs from the library's copy; left missing",
                          file=sys.stderr)
                    failed += 1
                    continue
                check = "bitwise equal to the library's copy"
            shutil.move(paths["tensors"], folder / card["tensors"]["file"])
        card["tensors"] = {**rebuilt["tensors"], "restored": {
            "from": f"{source} (experiments/restore_tensors.py)",
            "sha256_at_run": card["tensors"]["sha256"]}}
        write_json_atomic(card_path, card)
        print(f"{folder.name}: tensors restored from {source} ({check})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
