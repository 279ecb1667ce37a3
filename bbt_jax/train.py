"""One BBT run: load model and data, search, select on dev, evaluate on test.

`build(cfg)` assembles everything that stays fixed during a run (an `Experiment`);
`train(cfg)` runs the search and returns the results dict written to
results.json. Shape letters: B rows, C classes, K intrinsic dim, N prompt, D hidden.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax import artifact as artifact_lib
from bbt_jax import checkpoint as checkpoint_lib
from bbt_jax import data as data_lib
from bbt_jax import tasks as tasks_lib
from bbt_jax.backbone import Backbone, LoadedModel, backbone_for, load_model, make_frozen, token_embeddings
from bbt_jax.config import Config, to_dict
from bbt_jax.evaluate import EvalData, make_eval_data, make_logits_fn
from bbt_jax.objective import accuracy, f1_binary
from bbt_jax.prompt import Projection, embedding_std, make_projection
from bbt_jax.search import Search
from bbt_jax.types import TokenBatch


@dataclasses.dataclass
class Experiment:
    cfg: Config
    task: tasks_lib.Task
    model: LoadedModel
    backbone: Backbone
    template: str
    n_prompt: int
    verbalizer_C: np.ndarray
    frozen: dict
    proj: Projection
    train: EvalData
    dev: EvalData
    test_batches: list[TokenBatch]
    train_encoded: list  # the encoded train rows (any other bucketing of them, e.g. for the bench)
    search: Search
    key: jax.Array
    logits_fn: Callable


def _concat_targets(buckets) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([np.asarray(b.labels_B) for b in buckets]),
            np.concatenate([np.asarray(b.weight_B) for b in buckets]))


def encoded_split(task, vocab, template, n_prompt, max_length, rows):
    return [tasks_lib.encode_example(r, task, vocab, template, n_prompt, max_length) for r in rows]


def build(cfg: Config, *, default_tokenizer: str | Path | None = None, model: LoadedModel | None = None,
          log: Callable = print) -> Experiment:
    """Everything a run needs, validated before any search starts."""
    task = tasks_lib.get_task(cfg.run.task)
    paths = data_lib.split_paths(Path(cfg.run.data_dir), task.name, cfg.run.k_shot, cfg.run.seed)
    splits = {k: data_lib.read_jsonl(p, task.num_labels, pair=task.pair) for k, p in paths.items()}
    data_lib.check_train_split(splits["train"], paths["train"], task.num_labels)
    if not splits["dev"]:
        raise data_lib.UserError(f"{paths['dev']}: the dev split is empty")
    if cfg.run.test_rows:
        splits["test"] = splits["test"][:cfg.run.test_rows]

    model = model or load_model(cfg.model, default_tokenizer=default_tokenizer)
    vocab = model.vocab
    template = tasks_lib.template_for(task, vocab, cfg.prompt.placement)
    verbalizer_C = tasks_lib.verbalizer_ids(task, vocab, leading_space=cfg.prompt.verbalizer_space)
    if model.family == "llama" and cfg.prompt.placement == "cue":
        cue_ids = vocab.encode(task.decoder_cue)
        n_prompt = len(cue_ids)
        p0_NxD = token_embeddings(model, cue_ids)  # z = 0 is the hand-written prompt
    else:
        n_prompt = cfg.prompt.n_prompt_tokens
        p0_NxD = np.zeros((n_prompt, model.config.hidden_size), np.float32)
    suffix_len = n_prompt
    if model.family == "llama" and cfg.prompt.placement == "suffix":
        suffix_len += len(vocab.encode(task.decoder_cue))
    backbone = backbone_for(model, cfg.prompt.placement, suffix_len)
    word_VxD = np.asarray(backbone.word_embeddings(model.params))

    enc = {k: encoded_split(task, vocab, template, n_prompt, cfg.prompt.max_length, v) for k, v in splits.items()}
    train_buckets = tasks_lib.make_buckets(enc["train"], vocab.pad_id, num_buckets=cfg.prompt.num_buckets)
    dev_buckets = tasks_lib.make_buckets(enc["dev"], vocab.pad_id, num_buckets=cfg.prompt.num_buckets)
    test_batches = tasks_lib.make_eval_batches(enc["test"], vocab.pad_id, batch_rows=cfg.run.eval_batch)

    params = model.params
    if model.family == "roberta" and cfg.model.zero_lm_head_bias:
        # bbt.py: self.model.lm_head.bias = zeros(vocab_size)
        params = {**params, "lm_head": {**params["lm_head"], "bias": jnp.zeros_like(params["lm_head"]["bias"])}}
    frozen = make_frozen(params, verbalizer_C, cfg.model.dtype)

    key = jax.random.PRNGKey(cfg.run.seed)
    k_proj, k_search = jax.random.split(key)
    proj_sigma = cfg.prompt.proj_sigma or cfg.search.sigma
    proj = make_projection(k_proj, intrinsic_dim=cfg.prompt.intrinsic_dim, p0_NxD=p0_NxD,
                           embed_std=embedding_std(word_VxD), alpha=cfg.prompt.alpha, sigma=proj_sigma,
                           kind=cfg.prompt.random_proj)
    prepare = jax.jit(backbone.prepare)  # e.g. the decoder's input cache: once per run, not per candidate
    train = make_eval_data(prepare(frozen, tuple(train_buckets)), *_concat_targets(train_buckets))
    dev = make_eval_data(prepare(frozen, tuple(dev_buckets)), *_concat_targets(dev_buckets))
    search = Search(backbone.score, metric=task.metric, config=cfg.search, intrinsic_dim=cfg.prompt.intrinsic_dim)
    return Experiment(cfg, task, model, backbone, template, n_prompt, verbalizer_C, frozen, proj, train, dev,
                      test_batches, enc["train"], search, k_search, make_logits_fn(backbone.score_batches))


def score_split_many(exp: Experiment, z_PxK, batches) -> list[dict]:
    """Metrics of P candidates in one pass over fixed-shape batches (the decoder's input
    cache is computed once per batch and shared by the P candidates; one host pull)."""
    z_PxK = jnp.asarray(z_PxK, jnp.float32)
    logits = [exp.logits_fn(exp.frozen, exp.proj, z_PxK, (b,)) for b in batches]
    logits_PxBxC = np.concatenate(jax.device_get(logits), axis=1)
    labels_B = np.concatenate([np.asarray(b.labels_B) for b in batches])
    weight_B = np.concatenate([np.asarray(b.weight_B) for b in batches])
    outs = []
    for logits_BxC in logits_PxBxC:
        out = {"acc": float(accuracy(logits_BxC, labels_B, weight_B)), "rows": int(weight_B.sum())}
        if exp.task.metric == "f1":
            out["f1"] = float(f1_binary(logits_BxC, labels_B, weight_B))
        outs.append(out)
    return outs


def score_split(exp: Experiment, z_K, batches) -> dict:
    """Metrics of one candidate on a list of fixed-shape batches."""
    return score_split_many(exp, jnp.asarray(z_K, jnp.float32)[None], batches)[0]


def format_progress(record: dict, budget: int, metric: str, rate: float) -> str:
    return (f"calls {record['calls']:>6}/{budget} | best train loss {record['best_train_loss']:.4f} | "
            f"dev {metric} {record['dev_perf']:.4f} (best {record['best_dev_perf']:.4f}) | {rate:.1f} calls/s")


def train(cfg: Config, *, default_tokenizer: str | Path | None = None, log: Callable = print,
          zero_shot: bool = False, out: str | Path | None = None) -> dict:
    """Run BBT end to end; returns the results dict (see README).

    With `out`, the search state is checkpointed in out/checkpoints (see checkpoint.py)
    and resumed from there, the config goes to out/config.json and the tuned prompt to
    out/prompt.safetensors + out/prompt.json (see artifact.py).
    """
    ckpt = checkpoint_lib.Checkpointer(Path(out) / checkpoint_lib.CHECKPOINT_DIR, warn=log) if out else None
    try:
        return _train(cfg, ckpt, default_tokenizer=default_tokenizer, log=log, zero_shot=zero_shot, out=out)
    finally:
        if ckpt is not None:
            ckpt.close()  # also on errors: orbax's threads must stop before the interpreter does


def _train(cfg: Config, ckpt: checkpoint_lib.Checkpointer | None, *, default_tokenizer, log, zero_shot, out):
    t0 = time.perf_counter()
    if ckpt is not None:
        ckpt.restore(cfg)  # settings checked against the checkpoint before the model is loaded
    exp = build(cfg, default_tokenizer=default_tokenizer, log=log)
    t_built = time.perf_counter()
    log(f"task {exp.task.name} | model {exp.model.source} | N={exp.n_prompt} d={cfg.prompt.intrinsic_dim} "
        f"pop={cfg.search.popsize} budget={cfg.search.budget} | train {int(exp.train.weight_B.sum())} "
        f"dev {int(exp.dev.weight_B.sum())} test {sum(int(np.asarray(b.weight_B).sum()) for b in exp.test_batches)}")
    results: dict = {"config": to_dict(cfg), "task": exp.task.name, "model": exp.model.source,
                     "template": exp.template, "n_prompt_tokens": exp.n_prompt,
                     "verbalizer": {"ids": exp.verbalizer_C.tolist()}}

    state, history = exp.search.init(exp.key), []
    resumed = ckpt.restore(cfg, jax.eval_shape(exp.search.init, exp.key)) if ckpt is not None else None
    if resumed is not None:
        state, history = resumed.state, resumed.history
        done = "; the search is complete" if resumed.generation >= exp.search.total_generations else ""
        log(f"resuming from {ckpt.directory / str(resumed.generation)} (generation {resumed.generation}, "
            f"{resumed.generation * cfg.search.popsize} calls){done}")
    elif cfg.search.dev_init:
        state, _ = exp.search.dev_init(exp.frozen, exp.proj, exp.dev, state)
    if out:
        checkpoint_lib.save_config(Path(out), cfg)
    t_search = time.perf_counter()
    marks = {"last": t_search, "calls": len(history) * cfg.search.popsize, "first": None,
             "generation": len(history)}

    def on_interval(state, history, record):
        now = time.perf_counter()
        if marks["first"] is None:
            marks["first"] = now - t_search  # includes compilation
        rate = (record["calls"] - marks["calls"]) / max(now - marks["last"], 1e-9)
        marks.update(last=now, calls=record["calls"])
        log(format_progress(record, cfg.search.budget, exp.task.metric, rate))
        if ckpt is not None and checkpoint_lib.due(cfg.run.checkpoint_every, marks["generation"], len(history)):
            ckpt.save(state, history, cfg)
        marks["generation"] = len(history)

    state, history = exp.search.run(exp.frozen, exp.proj, exp.train, exp.dev, state, history=history,
                                    on_interval=on_interval)
    if ckpt is not None:
        ckpt.save(state, history, cfg)  # the final state (no-op if just saved)
    t_done = time.perf_counter()
    best = jax.device_get({"z": state.best_dev_z_K, "perf": state.best_dev_perf,
                           "gen": state.best_dev_generation, "nonfinite": state.nonfinite})
    if int(best["nonfinite"]):
        log(f"warning: {int(best['nonfinite'])} candidate losses were NaN/inf; they were ranked last")
    if int(best["gen"]) < 0:  # nothing finite was ever scored on dev: the prompt stays z = 0
        log("warning: no candidate had a finite dev loss; the selected prompt is z = 0")
    if zero_shot:  # z = 0 (the hand-written / initial prompt) scored in the same test pass
        test, results["zero_shot_test"] = score_split_many(
            exp, np.stack([best["z"], np.zeros_like(best["z"])]), exp.test_batches)
        log(f"zero-shot (z = 0) test: {results['zero_shot_test']}")
    else:
        test = score_split(exp, best["z"], exp.test_batches)
    t_end = time.perf_counter()
    log(f"best dev {exp.task.metric} {float(best['perf']):.4f} (generation {int(best['gen'])}) | test {test}")
    results.update({
        "calls": history[-1]["calls"] if history else 0, "generations": len(history),
        "dev": {"best_perf": float(best["perf"]) if int(best["gen"]) >= 0 else None,  # None: none selected
                "best_generation": int(best["gen"]), "metric": exp.task.metric},
        "test": test, "nonfinite_losses": int(best["nonfinite"]), "curve": history,
        "best_z": np.asarray(best["z"]).tolist(),
        "resumed_from_generation": resumed.generation if resumed is not None else None,
        "time": {"wall_s": t_end - t0, "setup_s": t_built - t0, "search_s": t_done - t_search,
                 "first_interval_s": marks["first"], "test_s": t_end - t_done},
    })
    if out:
        metrics = {"dev": results["dev"], "test": test, "calls": results["calls"]}
        paths = artifact_lib.save_prompt(Path(out), exp, best["z"], metrics)
        results["prompt"] = {k: p.name for k, p in paths.items()}
    return results
