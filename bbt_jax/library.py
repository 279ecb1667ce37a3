"""A prompt library with retrieval (RoSPr: Ye et al. 2022, "Retrieval of Soft Prompt Enhances Zero-Shot Task
Generalization"): tuned prompts stored with keys that embed their training instances; a new task's few-shot
rows vote for the prompts whose instances look like theirs.

A library is a folder: `index.json` (format, model, pooling, one entry per added run: its folder, task,
seeds, method, placement, prompt shape, dev/test metric, config) and `arrays-<generation>.safetensors`
(`keys_MxD`: one key per training instance of every entry, `key_entry_M`: the entry id of each key,
`prompt_NxD.<id>` and `layers_YxNxD.<id>` per entry). A save writes a new arrays file, then the index
that names it (both atomically), then removes the old arrays file: an interrupted save leaves the
previous library intact.

Key of an instance (`embed_rows`, pooling "mean-last-layer-input/1"): the frozen model runs the task's
templated row with the prompt slots at the placement's own p0 (z = 0; `--init-prompt` / `--prompt-init`
of the run are ignored, so that every entry of one task and placement embeds its rows alike); the key is
the mean, over the row's real tokens (attention mask; the N prompt slots and the padding excluded), of
the hidden states entering the last transformer layer (`Backbone.layer_inputs(...)[-1]`, i.e. the
output of the last-but-one layer: family-agnostic, and clear of the last layer's specialisation to
the LM head). Computed in float32, jitted, in fixed-shape batches of `EMBED_BATCH` rows.

Query (`query`, RoSPr's instance vote): every query instance (a few-shot train row of the new task,
embedded as above with the query's own layout) takes its top-m library keys by cosine similarity
(ties: the key seen first); each hit is one vote for the hit's entry (so one instance may vote several
times for one entry). Identical keys are one instance: the entries tuned on one few-shot split (every
method and seed of a split and layout embeds the same rows alike) share their keys, and a hit on a shared
key votes for each of them. Entries rank by votes, then by summed similarity of their hits, then by
their own dev score (what separates the entries that share keys), then by id; the top k with at least
one vote are returned. `interpolate` averages their prompts weighted by vote share.
`--exclude-task` drops the query task's own entries first (leave-one-task-out, as in RoSPr's held-out
tasks); by default they stay and usually win.

Which entries mix: a prompt is used as p0 of the query's layout, so only entries of the same placement,
splice, N, D and depth (layers of a deep prompt; none for bbt / prompt-tuning) take part; others are
skipped before the vote with a note, and a query where none fits is an error. RoBERTa `add` / `cat` and
decoder `prefix` / `suffix` prompts have a task-independent shape (N is a flag), so entries of every task
mix. Decoder `cue` prompts ARE the task's answer cue (N = its token count, p0 = its embeddings): their
shape depends on the task, so only tasks whose cues have the same length mix. All entries share the model
(and so D): adding a run tuned on another model is refused.

Shape letters: M keys, Q query instances, E entries, B rows, L length, D hidden, N prompt tokens, Y layers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax import tasks as tasks_lib
from bbt_jax.errors import UserError
from bbt_jax.io import read_json, read_verified, safetensors_bytes, write_bytes_atomic, write_json_atomic
from bbt_jax.models import splice

FORMAT = "bbt-jax-library/1"
POOLING = "mean-last-layer-input/1"
INDEX_FILE = "index.json"
EMBED_BATCH = 16  # rows per embedding call (the last batch padded with weight-0 rows)
LENGTH_MULTIPLE = 16  # every batch of one split is padded to its longest row, rounded up to this
# Settings every harness that embeds rows (library add, query) is built with: slots at the placement's own p0,
# float32, and the test split cut to one row (never scored here).
EMBED_SETTINGS = {"init_prompt": "", "prompt_init": "placement", "dtype": "float32", "test_rows": 1}


# ----------------------------------------------------------------------------- keys
@functools.partial(jax.jit, static_argnums=0)
def _pooled(backbone, frozen, batch, prompt_NxD):
    """B x D: mean over real, non-slot tokens of the hidden states entering the last layer."""
    h_BxLxD = backbone.layer_inputs(frozen, batch, prompt_NxD)[-1].astype(jnp.float32)
    slots_BxL = splice.slots(batch.prompt_start_B, prompt_NxD.shape[0], h_BxLxD.shape[1])
    w_BxL = ((batch.attention_mask_BxL > 0) & ~slots_BxL).astype(jnp.float32)
    return jnp.einsum("bl,bld->bd", w_BxL, h_BxLxD) / jnp.maximum(w_BxL.sum(1), 1.0)[:, None]


def embed_rows(h, split: str = "train", *, batch_rows: int = EMBED_BATCH) -> np.ndarray:
    """keys_MxD (float32), one per encoded row of `split` in input order, with the slots at h's p0 (see the
    module docstring). `h`: a harness (harness.build) whose p0 is the placement's own."""
    rows = h.encoded[split]
    length = -(-max(len(r.ids) for r in rows) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    pad = h.model.vocab.pad_id
    p0_NxD = jnp.asarray(h.layout.p0, jnp.float32)
    out = [_pooled(h.backbone, h.frozen, tasks_lib.pad_batch(rows[i:i + batch_rows], length, pad, batch_rows), p0_NxD)
           for i in range(0, len(rows), batch_rows)]
    return np.concatenate(jax.device_get(out))[:len(rows)]


# ----------------------------------------------------------------------------- layouts
def layout_of(h) -> dict:
    """The layout a prompt must have to be this harness's p0: placement, splice, N, D, layers (deep) or None."""
    n, d = h.layout.p0.shape
    return {"placement": h.layout.placement, "splice": h.layout.splice, "n_prompt": int(n), "hidden": int(d),
            "layers": h.backbone.num_layers if h.deep else None}


LAYOUT_FIELDS = ("placement", "splice", "n_prompt", "hidden", "layers")


def layout_str(x: dict) -> str:
    s = f"{x['placement']}/{x['splice']} {x['n_prompt']}x{x['hidden']}"
    return s + (f" {x['layers']} layers" if x.get("layers") else "")


def fits(entry: dict, target: dict) -> bool:
    return all(entry[k] == target[k] for k in LAYOUT_FIELDS)


# ----------------------------------------------------------------------------- the library
@dataclasses.dataclass
class Library:
    """A library folder in memory: its index (dict) and arrays (name -> numpy)."""

    path: Path
    index: dict
    arrays: dict

    @property
    def entries(self) -> list[dict]:
        return self.index["entries"]

    def entry(self, entry_id: int) -> dict:
        return next(e for e in self.entries if e["id"] == entry_id)

    def prompt(self, entry_id: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(prompt_NxD, layers_YxNxD or None) of an entry."""
        return self.arrays[f"prompt_NxD.{entry_id}"], self.arrays.get(f"layers_YxNxD.{entry_id}")

    @property
    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys_MxD, key_entry_M)."""
        return self.arrays["keys_MxD"], self.arrays["key_entry_M"]


def new_library(path: str | Path, model: str, family: str) -> Library:
    """An empty library (nothing written until `save`)."""
    index = {"format": FORMAT, "model": model, "family": family, "pooling": POOLING, "generation": 0,
             "next_id": 0, "arrays": None, "entries": []}
    return Library(Path(path), index, {"keys_MxD": np.zeros((0, 0), np.float32),
                                       "key_entry_M": np.zeros((0,), np.int32)})


def open_library(path: str | Path) -> Library:
    """Read a library folder; a missing or damaged one is a UserError."""
    from safetensors.numpy import load

    path = Path(path)
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        raise UserError(f"--library {path}: no prompt library here ({INDEX_FILE} not found; "
                        f"`bbt-jax library add --library {path} RUN` creates one)")
    index = read_json(index_path, f"--library {path}", INDEX_FILE)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"--library {path}: {INDEX_FILE} is not a bbt-jax prompt library ({FORMAT!r})")
    if index.get("pooling") != POOLING:
        raise UserError(f"--library {path}: keys pooled as {index.get('pooling')!r}, this version pools as "
                        f"{POOLING!r}; rebuild the library")
    lib = new_library(path, index["model"], index["family"])
    lib.index = index
    if index["arrays"] is None:
        return lib
    blob = read_verified(path / index["arrays"]["file"], index["arrays"]["sha256"], f"--library {path}", INDEX_FILE)
    lib.arrays = dict(load(blob))
    return lib


def save(lib: Library) -> None:
    """Write the arrays under a new generation's name, then the index naming them, then drop old arrays."""
    lib.path.mkdir(parents=True, exist_ok=True)
    gen = lib.index["generation"] + 1
    name = f"arrays-{gen:06d}.safetensors"
    blob = safetensors_bytes({k: np.ascontiguousarray(v) for k, v in lib.arrays.items()},
                             metadata={"format": FORMAT})
    write_bytes_atomic(lib.path / name, blob)
    lib.index.update(generation=gen, arrays={"file": name, "sha256": hashlib.sha256(blob).hexdigest()})
    write_json_atomic(lib.path / INDEX_FILE, lib.index)
    for old in lib.path.glob("arrays-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def add_entry(lib: Library, entry: dict, keys_MxD, prompt_NxD, layers_YxNxD=None) -> int:
    """Add (or, for a run already in the library, replace) an entry in memory; returns its id. `entry`:
    run, task, ..., and the layout fields (placement, splice, n_prompt, hidden, layers)."""
    old = next((e for e in lib.entries if e["run"] == entry["run"]), None)
    if old is None:
        entry_id = lib.index["next_id"]
        lib.index["next_id"] += 1
    else:
        entry_id = old["id"]
        lib.index["entries"].remove(old)
        for name in (f"prompt_NxD.{entry_id}", f"layers_YxNxD.{entry_id}"):
            lib.arrays.pop(name, None)
    keys_MxD = np.asarray(keys_MxD, np.float32)
    lib.index["entries"].append({"id": entry_id, **entry, "keys": int(keys_MxD.shape[0])})
    lib.index["entries"].sort(key=lambda e: e["id"])
    old_keys, old_entry = lib.keys
    keep_M = old_entry != entry_id
    old_keys = old_keys[keep_M] if old_keys.size else old_keys.reshape(0, keys_MxD.shape[1])
    if old_keys.shape[1] != keys_MxD.shape[1]:
        raise UserError(f"{entry['run']}: keys of width {keys_MxD.shape[1]}, the library's are {old_keys.shape[1]}")
    lib.arrays["keys_MxD"] = np.concatenate([old_keys, keys_MxD])
    lib.arrays["key_entry_M"] = np.concatenate([old_entry[keep_M], np.full(len(keys_MxD), entry_id, np.int32)])
    lib.arrays[f"prompt_NxD.{entry_id}"] = np.asarray(prompt_NxD, np.float32)
    if layers_YxNxD is not None:
        lib.arrays[f"layers_YxNxD.{entry_id}"] = np.asarray(layers_YxNxD, np.float32)
    return entry_id


def entry_of(saved, h, results: dict | None) -> dict:
    """The index record of a saved prompt (artifact.SavedPrompt) rebuilt as harness `h`; metrics from the
    run's results.json (`results`), else from the prompt card."""
    metrics = results if results is not None else saved.card.get("metrics", {})
    r = h.cfg.run
    layout = {**layout_of(h), "layers": None if saved.layers_YxNxD is None else int(saved.layers_YxNxD.shape[0])}
    return {"run": str(saved.path.parent.resolve()), "task": h.task.name, "seed": r.seed,
            "split_seed": r.seed_of("split"), "k_shot": r.k_shot, "method": saved.card["method"],
            "metric": h.task.metric, "test": metrics.get("test"), "dev": (metrics.get("dev") or {}).get("best_perf"),
            **layout, "config": saved.card["config"]}


# ----------------------------------------------------------------------------- retrieval
def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def instance_vote(queries_QxD, keys_MxD, key_entry_M, top_m: int, dev_E: dict | None = None):
    """RoSPr's instance vote. Identical keys (the same training row embedded alike: the entries of one
    split and layout) are one instance shared by their entries. Each query takes its `top_m` distinct keys
    by cosine similarity (ties: the key seen first); each hit votes once for every entry holding that key.
    Returns (entry ids, votes, summed similarity), each E, for the entries with >= 1 vote, ranked by votes,
    then summed similarity, then `dev_E[id]` (the entry's own dev score, higher first: it separates the
    entries that share their keys), then id."""
    keys_MxD, key_entry_M = np.asarray(keys_MxD, np.float32), np.asarray(key_entry_M)
    _, first_U, inverse_M = np.unique(keys_MxD, axis=0, return_index=True, return_inverse=True)
    order_U = np.argsort(first_U, kind="stable")  # distinct keys in order of first appearance
    rank_U = np.empty_like(order_U)
    rank_U[order_U] = np.arange(len(order_U))
    key_of_M = rank_U[np.asarray(inverse_M).ravel()]
    pairs = np.unique(np.stack([key_of_M, key_entry_M], axis=1), axis=0)  # (key, entry), sorted by key
    holders_U = np.split(pairs[:, 1], np.flatnonzero(np.diff(pairs[:, 0])) + 1)  # every key has >= 1 holder
    sim_QxU = _unit(queries_QxD) @ _unit(keys_MxD[first_U[order_U]]).T
    m = min(top_m, sim_QxU.shape[1])
    top_QxT = np.argsort(-sim_QxU, axis=1, kind="stable")[:, :m]
    votes, sims = {}, {}
    for q, row in enumerate(top_QxT):
        for u in row:
            for e in holders_U[u].tolist():
                votes[e] = votes.get(e, 0) + 1
                sims[e] = sims.get(e, 0.0) + float(sim_QxU[q, u])
    ids_E = np.array(sorted(votes), np.int64)
    votes_E = np.array([votes[i] for i in ids_E], np.int64)
    sim_E = np.array([sims[i] for i in ids_E], np.float64)
    dev = np.array([-np.inf if (d := (dev_E or {}).get(int(i))) is None else float(d) for i in ids_E], np.float64)
    order = np.lexsort((ids_E, -dev, -sim_E, -votes_E))
    return ids_E[order], votes_E[order], sim_E[order]


def query(lib: Library, queries_QxD, target: dict, *, task: str, k: int = 3, top_m: int = 5,
          exclude_task: bool = False) -> dict:
    """Rank the library's entries for a new task (module docstring). `target`: the query's layout
    (`layout_of`). Returns {"ranking": [...], "skipped": [...], "keys", "queries", ...}."""
    skipped, fitting = [], []
    for e in lib.entries:
        if exclude_task and e["task"] == task:
            skipped.append({"id": e["id"], "task": e["task"], "reason": "--exclude-task"})
        elif not fits(e, target):
            skipped.append({"id": e["id"], "task": e["task"], "reason": f"layout {layout_str(e)}"})
        else:
            fitting.append(e["id"])
    if not fitting:
        why = "; ".join(f"{s['id']} ({s['task']}): {s['reason']}" for s in skipped) or "the library is empty"
        raise UserError(f"--library {lib.path}: no entry fits the query's layout {layout_str(target)} ({why})")
    keys_MxD, entry_M = lib.keys
    use_M = np.isin(entry_M, fitting)
    ids, votes, sims = instance_vote(queries_QxD, keys_MxD[use_M], entry_M[use_M], top_m,
                                     dev_E={e["id"]: e.get("dev") for e in lib.entries})
    ranking = []
    for rank, (i, v, s) in enumerate(zip(ids[:k], votes[:k], sims[:k]), start=1):
        e = lib.entry(int(i))
        ranking.append({"rank": rank, "id": int(i), "task": e["task"], "seed": e["seed"], "method": e["method"],
                        "run": e["run"], "votes": int(v), "similarity": float(s), "mean_similarity": float(s / v),
                        "test": e["test"]})
    return {"library": str(lib.path), "task": task, "layout": target, "queries": int(len(queries_QxD)),
            "entries": len(fitting), "keys": int(use_M.sum()), "top_m": top_m, "k": k,
            "exclude_task": exclude_task, "skipped": skipped, "ranking": ranking}


def interpolate(lib: Library, ranking: list[dict]) -> tuple[np.ndarray, np.ndarray | None, list[float]]:
    """The vote-share-weighted average of the ranked entries' prompts: (prompt_NxD, layers_YxNxD or None,
    weights). Every prompt must have the same shape (and all or none layers)."""
    votes = np.array([r["votes"] for r in ranking], np.float64)
    w_E = votes / votes.sum()
    parts = [lib.prompt(r["id"]) for r in ranking]
    shapes = {(p.shape, None if y is None else y.shape) for p, y in parts}
    if len(shapes) > 1:
        raise UserError("--interpolate: the retrieved prompts differ in shape "
                        f"({', '.join(str(r['id']) + ': ' + str(p.shape) for r, (p, _) in zip(ranking, parts))})")
    prompt_NxD = sum(w * p.astype(np.float64) for w, (p, _) in zip(w_E, parts)).astype(np.float32)
    layers = None
    if parts[0][1] is not None:
        layers = sum(w * y.astype(np.float64) for w, (_, y) in zip(w_E, parts)).astype(np.float32)
    return prompt_NxD, layers, [float(w) for w in w_E]


def write_prompt(path: str | Path, prompt_NxD, layers_YxNxD=None, metadata: dict | None = None) -> Path:
    """A .safetensors that `train --init-prompt` reads (key "prompt", N x D; "layers" kept for the record:
    --init-prompt sets the input p0 only)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"--write {path}: must end in .safetensors (the file --init-prompt reads)")
    if not path.parent.is_dir():
        raise UserError(f"--write {path}: no such folder {path.parent}")
    tensors = {"prompt": np.asarray(prompt_NxD, np.float32)}
    if layers_YxNxD is not None:
        tensors["layers"] = np.asarray(layers_YxNxD, np.float32)
    write_bytes_atomic(path, safetensors_bytes(tensors, metadata={"format": "bbt-jax-retrieved-prompt/1",
                                                                  "retrieval": json.dumps(metadata or {})}))
    return path


# ----------------------------------------------------------------------------- printing
def _metric(x) -> str:
    if isinstance(x, dict):
        v = x.get("f1", x.get("acc"))
        return "-" if v is None else f"{v:.3f}"
    return "-"


def format_list(lib: Library) -> str:
    lines = [f"{lib.path}: {len(lib.entries)} entries, {lib.keys[0].shape[0]} keys, model {lib.index['model']}",
             f"{'id':<4} {'task':<8} {'seed':<5} {'method':<19} {'layout':<22} {'keys':<5} {'test':<6} run"]
    for e in lib.entries:
        lines.append(f"{e['id']:<4} {e['task']:<8} {e['seed']:<5} {e['method']:<19} {layout_str(e):<22} "
                     f"{e['keys']:<5} {_metric(e['test']):<6} {e['run']}")
    return "\n".join(lines)


def format_query(result: dict) -> str:
    r = result
    seed = f" seed {r['seed']}, {r['k_shot']}-shot" if "seed" in r else ""
    lines = [f"query {r['task']}{seed}: {r['queries']} rows, layout {layout_str(r['layout'])}; {r['entries']} "
             f"entries ({r['keys']} keys), top-m {r['top_m']}"]
    if r["skipped"]:
        lines.append(f"note: skipped {len(r['skipped'])} entries: "
                     + ", ".join(f"{s['id']} ({s['task']}, {s['reason']})" for s in r["skipped"]))
    lines.append(f"{'rank':<5} {'entry':<6} {'task':<8} {'seed':<5} {'method':<19} {'votes':<6} {'similarity':<11} "
                 f"{'mean':<7} {'weight':<7} test")
    for x in r["ranking"]:
        w = "-" if "weight" not in x else f"{x['weight']:.3f}"
        lines.append(f"{x['rank']:<5} {x['id']:<6} {x['task']:<8} {x['seed']:<5} {x['method']:<19} {x['votes']:<6} "
                     f"{x['similarity']:<11.3f} {x['mean_similarity']:<7.3f} {w:<7} {_metric(x['test'])}")
    return "\n".join(lines)
