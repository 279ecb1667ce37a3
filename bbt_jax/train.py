"""One run end to end: restore-or-init, search, select, test, write.

`train(cfg)` builds the harness (harness.py: rows -> tokens -> fitness), restores the search
from --out/checkpoints or starts it, runs it (the method's search: search.py for BBT/BBTv2,
gradient.py for prompt tuning; both select on dev the same way), scores the
best-on-dev prompt on test through the same fitness (fitness.split_metrics), and returns the
results dict written to results.json (README, "results.json").

Shape letters: see bbt_jax/types.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from bbt_jax import artifact as artifact_lib
from bbt_jax import checkpoint as checkpoint_lib
from bbt_jax import distributed
from bbt_jax.cma import pycma_stops
from bbt_jax.config import Config, to_dict
from bbt_jax.harness import Harness, build
from bbt_jax.verbalizer import word_texts


def format_progress(record: dict, budget: int, metric: str, rate: float) -> str:
    return (f"calls {record['calls']:>6}/{budget} | best train loss {record['best_train_loss']:.4f} | "
            f"dev {metric} {record['dev_perf']:.4f} (best {record['best_dev_perf']:.4f}) | {rate:.1f} calls/s")


def pycma_stop_generations(history: list, num_dims: int, popsize: int) -> dict:
    """The first generation at which pycma's tolfun / tolflatfitness would have ended bbt.py's run (null: never);
    our search runs the whole budget either way."""
    if not history:
        return {"tolfun": None, "tolflatfitness": None}
    stats_Gx3 = np.asarray([[r["best_loss"], r["worst_loss"], r["flat_ref_loss"]] for r in history], np.float32)
    stop, _, _ = jax.device_get(pycma_stops(stats_Gx3, num_dims, popsize))
    return {"tolfun": int(stop.tolfun_gen) or None, "tolflatfitness": int(stop.tolflatfitness_gen) or None}


def passes(h: Harness, history: list) -> dict:
    """Model passes over the training split: one forward per call (ES), forward + backward per step (gradient);
    dev passes not counted."""
    n = history[-1]["calls"] if history else 0
    return {"forward": n, "backward": n if h.gradient else 0}


def candidate_prompts(h: Harness, candidates):
    """The prompts of P candidates (stacked on a leading axis), as every test pass computes them."""
    return jax.vmap(h.projection)(jax.tree.map(lambda x: np.asarray(x, np.float32), candidates))


def score_candidates(h: Harness, candidates) -> list[dict]:
    """Test metrics of P candidates (stacked on a leading axis) in one pass over the test batches."""
    return h.test_metrics(candidate_prompts(h, candidates))


def test_candidates(run: Run, zero_shot: bool):
    """What `finish` scores on test: the selected candidate, and with `zero_shot` the start."""
    best_z = jax.device_get(run.state.best_dev_z)
    return _stack(best_z, jax.device_get(run.h.start)) if zero_shot else _stack(best_z)


def _stack(*trees):
    return jax.tree.map(lambda *x: np.stack(x), *trees)


def train(cfg: Config, *, default_tokenizer: str | Path | None = None, log: Callable = print,
          zero_shot: bool = False, out: str | Path | None = None, model=None) -> dict:
    """Run BBT end to end; returns the results dict (see README).

    `model`: an already loaded model (harness.build), for several runs in one process.
    With `out`, the search state is checkpointed in out/checkpoints (see checkpoint.py)
    and resumed from there, the config goes to out/config.json and the tuned prompt to
    out/prompt.safetensors + out/prompt.json (see artifact.py). Under several processes
    (distributed.py) every process runs it, the population sharded over all their devices;
    process 0 logs and writes the files.
    """
    writer = distributed.is_main()  # several processes (distributed.py): all search, process 0 writes
    log = log if writer else (lambda s: None)
    ckpt = checkpoint_lib.Checkpointer(Path(out) / checkpoint_lib.CHECKPOINT_DIR, warn=log) if out else None
    try:
        return _train(cfg, ckpt, default_tokenizer=default_tokenizer, log=log, zero_shot=zero_shot, out=out,
                      model=model, writer=writer)
    finally:
        if ckpt is not None:
            ckpt.close()  # also on errors: orbax's threads must stop before the interpreter does


def _train(cfg: Config, ckpt, *, default_tokenizer, log, zero_shot, out, model, writer):
    run = begin(cfg, ckpt, default_tokenizer=default_tokenizer, log=log, out=out, model=model,
                mesh=distributed.mesh(), writer=writer)
    run.state, run.history = run.search.run(run.train_problem, run.dev_problem, run.state, history=run.history,
                                            on_interval=run.on_interval)
    return finish(run, zero_shot=zero_shot)


@dataclasses.dataclass
class Run:
    """One run between `begin` and `finish`: its harness, search, state and curve, and the clock.
    sweep.train_group drives several of them through one vmapped search."""

    cfg: Config
    h: Harness
    search: object  # search.Search or gradient.GradientSearch
    train_problem: object
    dev_problem: object
    state: object
    history: list
    results: dict
    resumed: object  # checkpoint.Restored or None
    ckpt: object  # checkpoint.Checkpointer or None
    out: Path | None
    log: Callable
    clock: dict  # perf_counter marks: start, built, search (its start), first (the first interval's s)
    marks: dict = dataclasses.field(default_factory=dict)
    writer: bool = True  # this process writes the run's files (config, prompt); checkpoints: every process

    def on_interval(self, state, history, record) -> None:
        """After each interval (host values): the progress line and due checkpoints."""
        now, m = time.perf_counter(), self.marks
        if self.clock.get("first") is None:
            self.clock["first"] = now - self.clock["search"]  # includes compilation
        rate = (record["calls"] - m["calls"]) / max(now - m["last"], 1e-9)
        m.update(last=now, calls=record["calls"])
        self.log(format_progress(record, self.cfg.search.budget, self.h.task.metric, rate))
        if self.ckpt is not None and checkpoint_lib.due(self.cfg.run.checkpoint_every, m["generation"], len(history)):
            self.ckpt.save(state, history, self.cfg)
        m["generation"] = len(history)

    def start_clock(self) -> None:
        self.clock["search"] = now = time.perf_counter()
        self.marks = {"last": now, "calls": self.history[-1]["calls"] if self.history else 0,
                      "generation": len(self.history)}


def begin(cfg: Config, ckpt, *, default_tokenizer=None, log: Callable = print, out=None, model=None,
          h: Harness | None = None, lengths: dict | None = None, dev_init: bool = True,
          mesh=None, writer: bool = True, prepare: bool = True) -> Run:
    """Build the harness (or take `h`, built from `cfg`), restore the search from `ckpt` or init it (and
    score z = 0 on dev), write out/config.json; the search itself is the caller's. `lengths`: {"train": ...,
    "dev": ...} bucket lengths (one shape for several seeds); `dev_init` False: the caller scores z = 0;
    `mesh`: shard the population over it; `writer` False: another process writes this run's files; `prepare`
    False: no train/dev problems (None; a seed group searches on its cells' stacked rows, sweep.py)."""
    t0 = time.perf_counter()
    if ckpt is not None:
        ckpt.restore(cfg)  # settings checked against the checkpoint before the model is loaded
    h = h or build(cfg, default_tokenizer=default_tokenizer, log=log, model=model)
    lengths = lengths or {}
    search = h.search(mesh=mesh)
    train_problem, dev_problem = (h.problem(split, lengths=lengths.get(split)) if prepare else None
                                  for split in ("train", "dev"))
    t_built = time.perf_counter()
    what = (f"{cfg.gradient.optimizer} lr={cfg.gradient.lr} steps={cfg.search.budget}" if h.gradient else
            f"d={cfg.prompt.intrinsic_dim} pop={cfg.search.popsize} budget={cfg.search.budget}")
    layers = f" x {h.backbone.num_layers} layers" if h.deep else ""
    log(f"task {h.task.name} | model {h.model.source} | {h.method} | N={h.layout.n_prompt}{layers} {what} | "
        f"train {h.rows('train')} dev {h.rows('dev')} test {h.rows('test')}")
    if note := h.overflow_note():
        log(note)
    if h.model.random_weights:
        log(f"warning: {cfg.model.model} has RANDOM weights (a shape for timing, not a trained model); "
            "its accuracies mean nothing")
    tok = h.model.vocab.tokenizer
    results: dict = {"config": to_dict(cfg), "effective": h.effective(), "task": h.task.name, "model": h.model.source,
                     "random_weights": h.model.random_weights, "template": h.layout.template,
                     "n_prompt_tokens": h.layout.n_prompt,
                     "verbalizer": {"ids": np.asarray(h.verbalizer_C).tolist(),
                                    "words": word_texts(tok, h.verbalizer_C)},
                     "rows": {k: {"used": h.rows(k), **v} for k, v in h.overflow.items()}}
    if h.model.random_weights:
        results["warning"] = "random weights: accuracies mean nothing"

    # restore or init
    k_search = h.keys[1]
    state, history = search.init(k_search), []
    resumed = ckpt.restore(cfg, jax.eval_shape(search.init, k_search)) if ckpt is not None else None
    if resumed is not None:
        state, history = resumed.state, resumed.history
        done = "; the search is complete" if resumed.generation >= search.total_generations else ""
        log(f"resuming from {ckpt.directory / str(resumed.generation)} (generation {resumed.generation}, "
            f"{resumed.generation * h.calls_per_generation} calls){done}")
    elif cfg.search.dev_init and dev_init:
        state, z0 = search.dev_init(dev_problem, state)
        record_dev_z0(results, jax.device_get(z0))
    if out and writer:
        Path(out).mkdir(parents=True, exist_ok=True)
        checkpoint_lib.save_config(Path(out), cfg)
    run = Run(cfg, h, search, train_problem, dev_problem, state, history, results, resumed, ckpt,
              Path(out) if out else None, log, {"start": t0, "built": t_built}, writer=writer)
    run.start_clock()
    return run


def record_dev_z0(results: dict, z0: dict) -> None:
    """results["dev_z0"]: the dev score of the starting prompt (host values of search.dev_init)."""
    results["dev_z0"] = {"perf": float(z0["dev_perf"]), "loss": float(z0["dev_loss"])}


def finish(run: Run, *, zero_shot: bool = False, search_s: float | None = None, test_s: float = 0.0) -> dict:
    """After the search: save the final checkpoint, select the best-on-dev candidate, score it (and with
    `zero_shot` the start) on test, write the prompt artifact; returns the results dict. `search_s`: the
    run's share of a shared (vmapped) search, where its own clock would count the whole group's; `test_s`: its
    share of a test pass shared with other runs before this call (sweep._score_group_on_test)."""
    cfg, h, state, history, log, results = run.cfg, run.h, run.state, run.history, run.log, run.results
    if run.ckpt is not None:
        run.ckpt.save(state, history, cfg)  # the final state (no-op if just saved)
    t_done = time.perf_counter()
    shared = search_s is not None
    search_s = t_done - run.clock["search"] if search_s is None else search_s

    # select and test
    best = jax.device_get({"z": state.best_dev_z, "perf": state.best_dev_perf,
                           "gen": state.best_dev_generation, "nonfinite": state.nonfinite})
    if int(best["nonfinite"]):
        log(f"warning: {int(best['nonfinite'])} candidate losses were NaN/inf; they were ranked last")
    if int(best["gen"]) < 0:  # nothing finite was ever scored on dev: the prompt stays z = 0
        log("warning: no candidate had a finite dev loss; the selected prompt is z = 0")
    if zero_shot:  # the start (z = 0 or p0: the hand-written / initial prompt) scored in the same test pass
        test, results["zero_shot_test"] = score_candidates(h, test_candidates(run, zero_shot))
        log(f"zero-shot (the initial prompt) test: {results['zero_shot_test']}")
    else:
        test = score_candidates(h, test_candidates(run, zero_shot))[0]
    t_end = time.perf_counter()
    log(f"best dev {h.task.metric} {float(best['perf']):.4f} (generation {int(best['gen'])}) | test {test}")

    # write
    setup_s = run.clock["built"] - run.clock["start"]
    results.update({
        "calls": history[-1]["calls"] if history else 0, "generations": len(history),
        "passes": passes(h, history),
        "pycma_stops": (None if h.gradient else
                        pycma_stop_generations(history, cfg.prompt.intrinsic_dim, cfg.search.popsize)),
        "dev": {"best_perf": float(best["perf"]) if int(best["gen"]) >= 0 else None,  # None: none selected
                "best_generation": int(best["gen"]), "metric": h.task.metric},
        "test": test, "nonfinite_losses": int(best["nonfinite"]), "curve": history,
        "best_z": None if h.gradient else np.asarray(best["z"]).tolist(),  # gradient methods: prompt.safetensors
        "resumed_from_generation": run.resumed.generation if run.resumed is not None else None,
        "time": {"wall_s": setup_s + search_s + test_s + (t_end - t_done) if shared else t_end - run.clock["start"],
                 "setup_s": setup_s, "search_s": search_s,
                 "first_interval_s": run.clock.get("first"), "test_s": test_s + t_end - t_done},
    })
    if run.out and run.writer:
        metrics = {"dev": results["dev"], "test": test, "calls": results["calls"]}
        paths = artifact_lib.save_prompt(run.out, h, best["z"], metrics)
        results["prompt"] = {k: p.name for k, p in paths.items()}
    return results
