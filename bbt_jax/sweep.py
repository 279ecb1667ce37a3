"""S independent searches in ONE compiled call (vmap over the sweep axis).

What may differ between cells: the seed (PRNG key and the projection A), the initial
step size sigma, and anything else carried in the projection (alpha, p0) or the evosax
params. Shapes (d, N, popsize) and the loss are static and shared. The frozen model is a
shared, unbatched argument, so the sweep costs one copy of the model. `Sweep` shares the
rows too; `train_group` runs whole training runs that differ only in seeds, each on its own
few-shot split (the rows carry the sweep axis, padded to one shape), with their own
folders, checkpoints and results. With a mesh, the sweep axis is spread over devices; under several
processes (distributed.py) `train_group` spreads its cells over every process's devices and the
process that computes a cell writes that cell's files.

Shape letters (bbt_jax/types.py): S sweep cells, K intrinsic dim, G generations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax import distributed
from bbt_jax import tasks as tasks_lib
from bbt_jax.fitness import nbytes, prepare_rows
from bbt_jax.problem import PromptProblem
from bbt_jax.search import Search, SearchState, absorb_interval, fold

# Only the projection carries the sweep axis; fitness (frozen model, data) is shared.
_PROBLEM_AXES = PromptProblem(fitness=None, projection=0)

# member x train-row pairs one call of a seed group may score at once, per backend (None: no bound). On
# CPU, SmolLM2 peaked at ~6 GB for 4480 pairs (one dbpedia cell: pop 20 x 224 rows) and ~9 GB for 6400
# (agnews, 5 seeds x 20 x 64); 5 dbpedia seeds in one vmap (22400) went past 24 GB. A gradient row
# counts GRADIENT_ROW_WEIGHT pairs (the backward pass keeps every layer's activations).
GROUP_MEMBER_ROWS = {"cpu": 4096}
GRADIENT_ROW_WEIGHT = 8
# bytes of prepared train + dev rows (the decoder's input caches) one call of a seed group may hold stacked, per
# backend. On CPU (session 20, AMD EPYC, experiments/group_chunk_bench.py, group_plan_bytes.py): dbpedia's 5
# cells (2.12 GiB each) in one call held ~19 GB of the 24 GB VM and ran 1.21x slower per cell-call than one cell
# at a time; the other tasks' cells hold <= 0.4 GiB and keep their 5-cell groups under this bound.
GROUP_ROWS_BYTES = {"cpu": 4 << 30}


def group_plan(cells: int, members: int, rows: int, *, gradient: bool = False,
               budget: int | None = None, cell_bytes: int = 0,
               bytes_budget: int | None = None) -> tuple[int, int]:
    """(cells per call, population chunk) that keep a seed group's call under `budget` member x row pairs:
    all cells in one call with the population in chunks where one member per cell fits, else the cells
    split into calls of as many as fit (gradient searches have one member and always split). Chunk 0:
    the whole population at once. Without a budget: (cells, 0). `cell_bytes` (a cell's prepared train
    and dev rows) under `bytes_budget`: at most that many cells per call, at least one."""
    weight = GRADIENT_ROW_WEIGHT if gradient else 1
    if bytes_budget is not None and cell_bytes > 0:
        cells_fit = max(1, bytes_budget // cell_bytes)
        if cells_fit < cells:
            return group_plan(cells_fit, members, rows, gradient=gradient, budget=budget)
    if budget is None or cells * members * rows * weight <= budget:
        return cells, 0
    per_call = max(1, min(cells, budget // (rows * weight)))
    chunk = max(1, budget // (per_call * rows * weight))
    return per_call, 0 if gradient or chunk >= members else chunk


def stack(trees):
    """Stack pytrees of equal structure along a new leading (sweep) axis."""
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


class Sweep:
    """vmaps `Search`'s interval over S cells; built once."""

    def __init__(self, search: Search, mesh: jax.sharding.Mesh | None = None):
        self.search = search
        self.mesh = mesh
        self.interval = jax.jit(jax.vmap(search._interval, in_axes=(_PROBLEM_AXES, _PROBLEM_AXES, 0, 0)))

    def init(self, keys_S: jax.Array, sigmas_S) -> tuple[SearchState, object]:
        """Stacked initial states and evosax params, one per (key, sigma)."""
        es_params_S = jax.vmap(self.search.es_params)(jnp.asarray(sigmas_S, jnp.float32))
        states_S = jax.vmap(self.search.init)(keys_S, es_params_S)
        return self._shard(states_S), self._shard(es_params_S)

    def _shard(self, tree):
        if self.mesh is None:
            return tree
        axis = self.mesh.axis_names[0]

        def put(x):
            spec = jax.sharding.PartitionSpec(axis, *([None] * (x.ndim - 1)))
            return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

        return jax.tree.map(put, tree)

    def run(self, train_S: PromptProblem, dev_S: PromptProblem, states_S: SearchState, es_params_S):
        """Run every interval; `*_S` carry stacked projections. Returns (states_S, curves_SxG) with
        curves_SxG[s] = best loss per generation."""
        curves: list = []
        for i in range(self.search.num_intervals):
            states_S, out = self.interval(*fold(self.search, train_S, dev_S, i * self.search.generations_per_eval),
                                          es_params_S, states_S)
            curves.append(out["generations"]["best_loss"])
        curves_SxG = jnp.concatenate(curves, axis=1)[:, :self.search.total_generations]
        return states_S, jax.device_get(curves_SxG)


GROUP_ROWS_KEPT_BYTES = 10 << 30  # a seed group's stacked train/dev rows kept for the task's next method up to this


def _group_problems(runs: list, chunk: int, lengths: dict) -> tuple[PromptProblem, PromptProblem]:
    """The group's train and dev problems: its cells' prepared rows stacked on a leading axis, and their
    projections. The stacked rows are kept on the loaded model (LoadedModel.stacked, one group's at a time,
    up to GROUP_ROWS_KEPT_BYTES) and serve the next group of the same cells' rows, i.e. the task's other
    methods on the same seeds: a decoder's input caches of a task's train and dev rows are computed once per
    seed, not once per method. Otherwise each cell's rows are prepared and consumed into the stack leaf by
    leaf, so that the group holds them about once (GBs for dbpedia's 448 rows per cell)."""
    model, out = runs[0].h.model, []
    projection_S = stack([r.h.projection for r in runs])  # one stack serves both splits
    keys = {split: (split, tuple(r.h.rows_key(split, lengths[split]) for r in runs)) for split in ("train", "dev")}
    for key in [k for k in model.stacked if k not in keys.values()]:
        del model.stacked[key]  # another group's rows go before this group's are prepared
    for split, key in keys.items():
        data_S = model.stacked.pop(key, None)
        if data_S is None:
            data_S = stack_consuming([r.h.prepared_rows(split, lengths[split]) for r in runs])
        if nbytes(data_S) + sum(nbytes(d) for d in model.stacked.values()) <= GROUP_ROWS_KEPT_BYTES:
            model.stacked[key] = data_S
        fitness = runs[0].h.bind(split, data_S)
        out.append(PromptProblem(fitness.replace(chunk=chunk) if split == "train" else fitness, projection_S))
    return tuple(out)


def stack_consuming(trees: list):
    """`stack(trees)` that empties `trees` and drops each input leaf once its stack exists: with no other
    reference to the inputs, the peak is the result plus one leaf's inputs, not inputs plus result."""
    treedef = jax.tree.structure(trees[0])
    leaves = [jax.tree.leaves(t) for t in trees]
    trees.clear()
    stacked = []
    for j in range(len(leaves[0])):
        stacked.append(jnp.stack([cell[j] for cell in leaves]))
        for cell in leaves:
            cell[j] = None
    return jax.tree.unflatten(treedef, stacked)


def _cell(tree, s: int):
    return jax.tree.map(lambda x: x[s], tree)


def problem_axes(problem: PromptProblem, per_cell_rows: bool) -> PromptProblem:
    """vmap axes of a stacked problem: the projection always carries the sweep axis; the prepared rows
    too where the cells have their own rows (other few-shot splits); the frozen model never."""
    fitness = problem.fitness.replace(frozen=None, data=0) if per_cell_rows else None
    return PromptProblem(fitness=fitness, projection=0)


def train_group(cfgs: list, *, model, default_tokenizer=None, log: Callable = print,
                zero_shot: bool = False) -> list[dict | None] | None:
    """Runs whose configs differ only in seeds (few-shot split, projection A, ES noise) as ONE vmapped
    search: one compiled call per interval for all of them; returns each run's results dict as
    train.train gives it (time.search_s: its share of the group's search, which includes preparing its
    train/dev rows and scoring z = 0 on dev; "vmapped": the group).

    The splits are padded to common bucket lengths (the loss does not depend on padding, up to float
    rounding). Each run keeps its own folder, checkpoints (its slice of the stacked state) and prompt
    artifact; the runs resume together when their checkpoints stand at the same generation. Returns None
    (the caller runs them one by one) for splits of different row counts or different verbalizer words
    (--words-per-class chooses them on each seed's training rows). ES cells may also differ in
    their initial prompt p0 (--init-prompt: it lives in each cell's projection). Gradient methods group
    when their p0 is the same (the template's, whatever the seed: only the rows differ per cell; their
    search holds x0 = p0), which gives one compilation of the forward+backward interval for the group.

    Memory (--pop-chunk -1, one process): a call scores at most GROUP_MEMBER_ROWS[backend] member x
    train-row pairs and holds at most GROUP_ROWS_BYTES[backend] of stacked train/dev rows (`group_plan`):
    the population goes in chunks, or the cells in smaller groups of one shape; results' vmapped (runs,
    pop_chunk) says what ran.

    Under several processes (distributed.py) every process calls it with the same configs: the cells
    are sharded in contiguous blocks over every process's devices (`distributed.block_owners`), the
    process that computes a cell logs it, writes its config, prompt and results (the caller writes
    results.json from the returned dict) and gets its dict; the other processes get None in its
    place. Checkpoints are saved by all processes together (checkpoint.py).
    """
    from bbt_jax.harness import build

    first = distributed.process_index() == 0  # build logs only what it chose (e.g. --demo-draws' draw)
    hs = [build(c, default_tokenizer=default_tokenizer, model=model,
                log=(lambda s, c=c: log(f"[seed {c.run.seed}] {s}")) if first else (lambda s: None)) for c in cfgs]
    if any(h.method != hs[0].method for h in hs):
        return None
    if hs[0].gradient and any(not np.array_equal(h.layout.p0, hs[0].layout.p0) for h in hs):
        return None  # a gradient search holds its start x0 = p0: one search serves only cells of one p0
    if any(not np.array_equal(h.verbalizer_C, hs[0].verbalizer_C) for h in hs):
        return None  # the group scores with one frozen verbalizer: --words-per-class chooses words per seed
    lengths = {}
    for split in ("train", "dev"):
        shapes = [[int(b.input_ids_BxL.shape[0]) for b in h.buckets(split)] for h in hs]
        if any(s != shapes[0] for s in shapes):
            return None
        lengths[split] = tuple(max(ls) for ls in zip(*(tasks_lib.bucket_lengths(h.buckets(split)) for h in hs)))
    chunk, per_call = 0 if hs[0].gradient else hs[0].pop_chunk, len(cfgs)  # a gradient search scores one member
    if cfgs[0].search.pop_chunk == -1 and distributed.process_count() == 1:  # auto: bounded by the backend's budget
        members = 1 if hs[0].gradient else (chunk or cfgs[0].search.popsize)
        rows = sum(int(b.input_ids_BxL.shape[0]) for b in hs[0].buckets("train"))  # one cell's train rows
        backend = jax.default_backend()
        bytes_budget = GROUP_ROWS_BYTES.get(backend)  # the cells' bytes are traced only where a bound applies
        cell_bytes = prepared_bytes(hs[0], lengths) if bytes_budget is not None and len(cfgs) > 1 else 0
        per_call, bounded = group_plan(len(cfgs), members, rows, gradient=hs[0].gradient,
                                       budget=GROUP_MEMBER_ROWS.get(backend), cell_bytes=cell_bytes,
                                       bytes_budget=bytes_budget)
        chunk = bounded or chunk
    if per_call < len(cfgs):
        log(f"{len(cfgs)} seeds in groups of {per_call} (memory bounds: sweep.GROUP_MEMBER_ROWS, GROUP_ROWS_BYTES)")
    return [r for i in range(0, len(cfgs), per_call)
            for r in _train_cells(cfgs[i:i + per_call], hs[i:i + per_call], lengths, chunk, log=log,
                                  zero_shot=zero_shot)]


def prepared_bytes(h, lengths: dict) -> int:
    """Bytes of a cell's prepared train and dev rows at the group's bucket `lengths` (shapes only: nothing is
    computed)."""
    return sum(nbytes(jax.eval_shape(lambda s=split: prepare_rows(h.backbone, h.frozen, h.buckets(s, lengths[s]))))
               for split in ("train", "dev"))


def _train_cells(cfgs, hs, lengths, chunk, *, log, zero_shot):
    from bbt_jax import checkpoint as checkpoint_lib
    from bbt_jax import train as train_lib

    names = [f"seed {c.run.seed}" for c in cfgs]
    mesh = distributed.mesh()
    owners = distributed.block_owners(len(cfgs), mesh)
    runs = []
    try:
        for c, h, name, owner in zip(cfgs, hs, names, owners, strict=True):
            mine = owner == distributed.process_index()
            clog = (lambda s, name=name: log(f"[{name}] {s}")) if mine else (lambda s: None)
            ckpt = checkpoint_lib.Checkpointer(Path(c.run.out) / checkpoint_lib.CHECKPOINT_DIR, warn=clog)
            runs.append(train_lib.begin(c, ckpt, log=clog, out=c.run.out, h=h, lengths=lengths, dev_init=False,
                                        writer=mine, prepare=False))
        return _run_group(runs, lengths, log=log, zero_shot=zero_shot, mesh=mesh, chunk=chunk)
    finally:
        for r in runs:
            r.ckpt.close()


def _cells_interval(search: Search, axes: tuple, mesh: jax.sharding.Mesh | None):
    """The jitted interval of S cells; with a mesh the cell axis is sharded over it (every process's
    devices) and the outputs are replicated, so that every process pulls every cell's metrics."""
    vmapped = jax.vmap(search._interval, in_axes=(*axes, 0, 0))
    if mesh is None:
        return jax.jit(vmapped)
    cells = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))

    def sharded(train_S, dev_S, es_params_S, states_S):
        es_params_S, states_S = jax.lax.with_sharding_constraint((es_params_S, states_S), cells)
        return vmapped(train_S, dev_S, es_params_S, states_S)

    return jax.jit(sharded, out_shardings=distributed.replicated(mesh))


def _save_all(runs: list) -> None:
    """Every run's final checkpoint, on every process together (orbax saves are collective)."""
    for r in runs:
        if r.ckpt is not None:
            r.ckpt.save(r.state, r.history, r.cfg)


def _score_group_on_test(runs: list, zero_shot: bool) -> None:
    """The test prompts of every cell this process writes, in ONE batched pass (on CPU a batch of prompts
    costs less per prompt than one at a time): each cell's `finish` then finds its scores in the loaded
    model's memo (fitness.split_metrics' `scored`: same function, same rows, same prompt bytes). Cells whose
    test rows differ (each seed's own --demos in the template) score their own in `finish`."""
    from bbt_jax import train as train_lib

    mine = [r for r in runs if r.writer]
    if len(mine) > 1 and len({r.h.layout.template for r in mine}) == 1:
        prompts = [train_lib.candidate_prompts(r.h, train_lib.test_candidates(r, zero_shot)) for r in mine]
        mine[0].h.test_metrics(jax.tree.map(lambda *x: jnp.concatenate(x), *prompts))


def _run_group(runs: list, lengths: dict, *, log: Callable, zero_shot: bool, mesh=None,
               chunk: int = 0) -> list[dict | None]:
    from bbt_jax import train as train_lib

    search, S = runs[0].search, len(runs)
    done = {len(r.history) for r in runs}
    if len(done) > 1:  # killed between two cells' checkpoints: each continues alone from its own
        if distributed.is_main():
            log(f"the runs' checkpoints stand at generations {sorted(done)}: running them one by one")
        results = []
        for r in runs:
            r.start_clock()
            r.state, r.history = r.search.run(r.h.problem("train", lengths=lengths["train"]),
                                              r.h.problem("dev", lengths=lengths["dev"]), r.state,
                                              history=r.history, on_interval=r.on_interval)
            r.h.release_fitness()
            _save_all([r])
            results.append(train_lib.finish(r, zero_shot=zero_shot) if r.writer else None)
        return results
    t0 = time.perf_counter()  # the group's search_s counts its rows' preparation and z = 0's dev score too
    train_S, dev_S = _group_problems(runs, chunk, lengths)
    axes = (problem_axes(train_S, True), problem_axes(dev_S, True))
    interval = _cells_interval(search, axes, mesh)
    states_S, es_params_S = stack([r.state for r in runs]), stack([search.es_params() for _ in runs])
    if not runs[0].history and runs[0].cfg.search.dev_init:  # fresh: z = 0 scored on dev, as train() does
        states_S, z0_S = jax.jit(jax.vmap(search._dev_init, in_axes=(axes[1], 0)))(dev_S, states_S)
        z0_S = jax.device_get(z0_S)
        for s, r in enumerate(runs):
            train_lib.record_dev_z0(r.results, _cell(z0_S, s))
    for r in runs:
        r.start_clock()
    swapped = None  # the interval with the problems' axes swapped (cross-validation's second fold)
    while len(runs[0].history) < search.total_generations:
        problems = fold(search, train_S, dev_S, len(runs[0].history))
        if problems[0] is dev_S:
            swapped = swapped or _cells_interval(search, axes[::-1], mesh)
            states_S, out = swapped(*problems, es_params_S, states_S)
        else:
            states_S, out = interval(*problems, es_params_S, states_S)
        out = jax.device_get(out)  # the one host sync of this interval, for every run
        for s, r in enumerate(runs):
            record = absorb_interval(search, r.history, _cell(out, s))
            r.on_interval(_cell(states_S, s), r.history, record)
    group_s = time.perf_counter() - t0
    for s, r in enumerate(runs):
        r.state = _cell(states_S, s)
    del train_S, dev_S, interval, swapped  # the stacked rows (unless kept), before the test rows are prepared
    _save_all(runs)
    t0 = time.perf_counter()
    _score_group_on_test(runs, zero_shot)
    test_s = time.perf_counter() - t0
    results = []
    for r in runs:
        if not r.writer:  # another process's cell
            results.append(None)
            continue
        res = train_lib.finish(r, zero_shot=zero_shot, search_s=group_s / S, test_s=test_s / S)
        res["vmapped"] = {"runs": S, "search_s": group_s, "seeds": [x.cfg.run.seed for x in runs], "pop_chunk": chunk}
        results.append(res)
    return results
