"""Checkpoints of the search, exact resume, and the config a resume must match.

Layout inside `--out/checkpoints` (an orbax `CheckpointManager` directory):

  <generation>/state/       the `SearchState` (evosax state, PRNG key, generation,
                            best-on-dev so far ...), `ocp.args.StandardSave`
  <generation>/meta/        JSON: generation, calls, the curve so far (`history`)
                            and the resolved config
  digests/<generation>.json sha256 of every file of that step, written once the
                            step is committed; checked before orbax reads it

The frozen model is never saved: it is rebuilt from the config. Steps are named
by generation. Saves are synchronous, so a step is either committed (orbax's
atomic rename) or a temporary folder that the next run deletes; a step whose
files no longer match its digest (truncated, overwritten) is dropped with a
one-line warning and the previous step is used. Restoring goes through
`StandardRestore(abstract)` with the abstract state from `Search.init` under
`jax.eval_shape`, so every State class comes back typed (house style 9).

Several processes (distributed.py): orbax's CheckpointManager is a collective, so every
process holds a Checkpointer on the same folder (a filesystem they share) and calls
`restore` and `save` together, with the same (replicated) state. The state is saved as host
arrays, which orbax writes from process 0 alone; process 0 also writes the digests and
removes damaged or unfinished steps. (orbax 0.12 cannot write a checkpoint from one
process other than 0: it refuses process-local jax.Arrays and writes numpy leaves only
on process 0.)

Shape letters: K intrinsic dim.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bbt_jax import config as config_lib
from bbt_jax.errors import UserError
from bbt_jax.io import write_bytes_atomic, write_json_atomic

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
_DIGESTS = "digests"
_KEEP = 3  # committed steps kept; older ones are deleted by orbax

# Settings that change the search trajectory: a resume must match the checkpoint in
# every one of them. `budget` may grow (the search continues); everything else
# (data_dir, tfds_data_dir, test_rows, eval_batch, out, checkpoint_every, pop_chunk) is free:
# pop_chunk only bounds memory, though it may change the last bits of the losses.
SEARCH_FIELDS = (
    "task", "k_shot", "seed", "split", "split_seed", "projection_seed", "es_seed", "data_source", "tfds_name",
    "model", "tokenizer", "dtype", "zero_lm_head_bias",
    "n_prompt_tokens", "intrinsic_dim", "alpha", "proj_sigma", "random_proj", "placement", "init_prompt", "prompt_init",
    "decoder_splice", "overflow", "verbalizer_space", "max_length", "num_buckets", "template", "cue", "label_words",
    "words_per_class", "demos", "demo_draws", "demo_none",
    "strategy", "es_params", "popsize", "sigma", "bound", "bound_handling", "rank_ties", "dev_candidate", "loss",
    "eval_every", "dev_init", "dev_tiebreak_loss", "select_by", "dev_smooth", "start_margin", "method",
    "layer_schedule", "refine_at", "refine_sigma", "cv_folds",
    "optimizer", "lr", "lr_schedule", "warmup_steps", "weight_decay", "clip_norm",
)
# Gradient methods: the learning-rate schedule spans the budget (steps), so it may not change either; nor may
# it under a two-stage search (--refine-at: the switch generation is a share of the budget) or --cv-folds 2.
GRADIENT_FIELDS = ("budget",)


@dataclasses.dataclass
class Restored:
    """A checkpoint read back: `state` is None when only the metadata was asked for."""

    generation: int
    history: list
    config: dict
    state: object = None


def due(checkpoint_every: int, prev_generation: int, generation: int) -> bool:
    """Whether an interval that ended at `generation` crossed a multiple of `checkpoint_every`.

    The state reaches the host only at dev-interval ends, so a save lands on the
    first interval end at or after each multiple (the period is rounded up to
    whole intervals). 0: never (the final save is separate).
    """
    if checkpoint_every <= 0:
        return False
    return generation // checkpoint_every > prev_generation // checkpoint_every


def check_resume_config(saved: dict, cfg: config_lib.Config, generation: int, where: Path) -> None:
    """Refuse to resume with settings that change the search (names every differing field)."""
    current = config_lib.to_dict(cfg)
    # a field added after the checkpoint was written takes its default (a new field's default is the
    # behaviour before it existed, e.g. --data-source jsonl, --select-by metric)
    defaults = config_lib.to_dict(config_lib.Config())
    saved = {g: {**defaults[g], **saved.get(g, {})} for g in config_lib.GROUPS}
    fixed_budget = (cfg.search.method in config_lib.GRADIENT_METHODS or cfg.search.refine_at > 0
                    or cfg.search.cv_folds > 1)
    fields = SEARCH_FIELDS + (GRADIENT_FIELDS if fixed_budget else ())
    differ = config_lib.diff(saved, current, fields)
    if differ:
        flat_saved = {k: v for g in config_lib.GROUPS for k, v in saved.get(g, {}).items()}
        flat_now = {k: v for g in config_lib.GROUPS for k, v in current[g].items()}
        what = ", ".join(f"{k} ({flat_saved.get(k)!r} -> {flat_now.get(k)!r})" for k in differ)
        raise UserError(f"{where} holds a run with other settings: {what}; pass the same settings, "
                        "or another --out to start a new run")
    if cfg.search.method not in config_lib.GRADIENT_METHODS and cfg.search.generations < generation:
        raise UserError(f"--budget {cfg.search.budget}: {where} already holds {generation * cfg.search.popsize} "
                        f"calls (generation {generation}); pass a budget of at least that, or another --out")


def _restore_state(manager, step: int, abstract_state):
    """The state of `step` as `abstract_state`. A checkpoint written before an optional state field existed
    (one that is None when its option is off, e.g. SearchState.dev_window) lacks that field on disk: the
    other fields are restored by name and the state rebuilt with the absent ones None."""
    def restore(target):
        return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state

    try:
        return restore(abstract_state)
    except ValueError:
        fields = dataclasses.fields(abstract_state) if dataclasses.is_dataclass(abstract_state) else ()
        values = {f.name: getattr(abstract_state, f.name) for f in fields}
        present = {name: v for name, v in values.items() if v is not None}
        if len(present) == len(values):  # no optional field to leave out: a damaged or foreign step
            raise
    return abstract_state.replace(**restore(present))


def _files(step_dir: Path) -> dict[str, str]:
    """sha256 of every file under a step folder, by relative path."""
    out = {}
    for p in sorted(step_dir.rglob("*")):
        if p.is_file():
            out[p.relative_to(step_dir).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def save_config(out_dir: Path, cfg: config_lib.Config) -> Path:
    """The resolved config as JSON, beside the checkpoints."""
    path = Path(out_dir) / CONFIG_FILE
    write_json_atomic(path, config_lib.to_dict(cfg))
    return path


class _QuietOrbax:
    """Keep orbax's absl log lines about a damaged step off stderr (we print one line)."""

    def __enter__(self):
        self.logger = logging.getLogger("absl")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


class Checkpointer:
    """Saves and restores the search state in one folder; see the module docstring."""

    def __init__(self, directory: str | Path, *, warn: Callable[[str], None] = print):
        self.directory = Path(directory)
        self.warn = warn
        self.primary = jax.process_index() == 0  # several processes: the one that writes (module docstring)
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"{self.directory}: is a file, expected a checkpoint folder")
        # Saves that were cut short (killed) leave orbax temporary folders: delete them here,
        # synchronously (orbax's own cleanup runs in a thread that may outlive a failing run).
        if self.directory.is_dir() and self.primary:
            for p in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(p, ignore_errors=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=_KEEP, create=True,
            enable_async_checkpointing=False)  # the digest is taken once the step is committed
        try:
            with _QuietOrbax():
                self.manager = ocp.CheckpointManager(self.directory.resolve(), options=options,
                                                     item_names=("state", "meta"))
        except OSError as e:
            raise UserError(f"{self.directory}: cannot use as a checkpoint folder ({e})") from None
        self.last_saved = self.manager.latest_step()

    # -- reading -----------------------------------------------------------
    def _problem(self, step: int) -> str | None:
        """Why a committed step cannot be trusted, or None."""
        digest = self.directory / _DIGESTS / f"{step}.json"
        if not digest.is_file():
            return None  # killed between commit and digest: orbax's own checks decide
        try:
            expected = json.loads(digest.read_text())
        except (OSError, ValueError):
            return "unreadable digest"
        found = _files(self.directory / str(step))
        for name, sha in expected.items():
            if name not in found:
                return f"missing {name}"
            if found[name] != sha:
                return f"{name} does not match its digest"
        return None

    def _drop(self, step: int, why: str, used: int) -> None:
        self.warn(f"warning: checkpoint {self.directory / str(step)} is damaged ({why}); removed it and "
                  f"resumed from generation {used}")
        if self.primary:
            shutil.rmtree(self.directory / str(step), ignore_errors=True)
            (self.directory / _DIGESTS / f"{step}.json").unlink(missing_ok=True)
        self.manager.reload()
        self.last_saved = self.manager.latest_step()

    def _read(self, step: int, cfg: config_lib.Config, abstract_state) -> Restored:
        """One step; raises on any damage (UserError only for a config mismatch)."""
        why = self._problem(step)
        if why is not None:
            raise ValueError(why)
        with _QuietOrbax():
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        generation, history, saved_cfg = int(meta["generation"]), list(meta["history"]), meta["config"]
        check_resume_config(saved_cfg, cfg, generation, self.directory)
        if abstract_state is None:
            return Restored(generation, history, saved_cfg)
        with _QuietOrbax():
            state = _restore_state(self.manager, step, abstract_state)
        if int(state.generation) != generation or len(history) != generation:
            raise ValueError(f"state at generation {int(state.generation)}, curve of {len(history)}")
        # orbax returns arrays committed to a device, for which the jitted interval would
        # compile again; uncommitted copies (the same bits) reuse the first compilation.
        state = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state)
        return Restored(generation, history, saved_cfg, state)

    def restore(self, cfg: config_lib.Config, abstract_state=None) -> Restored | None:
        """The newest good checkpoint (None: start afresh).

        Damaged steps newer than the good one are removed with one warning line each.
        If steps exist but none is readable, nothing is removed and a UserError says
        so. The config must match the checkpoint's (`check_resume_config`).
        `abstract_state` (e.g. `jax.eval_shape(search.init, key)`): also restore the
        state; None reads only the metadata (a cheap check before the model is loaded).
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged: list[tuple[int, str]] = []
        for step in steps:
            try:
                restored = self._read(step, cfg, abstract_state)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read means a damaged step
                msg = str(e).splitlines()[0] if str(e) else ""
                damaged.append((step, f"{type(e).__name__}: {msg}"[:160] if not isinstance(e, ValueError)
                                else msg[:160]))
                continue
            for bad, why in damaged:
                self._drop(bad, why, restored.generation)
            return restored
        if steps:
            step, why = damaged[0]
            raise UserError(f"{self.directory}: no readable checkpoint ({len(steps)} damaged; step {step}: {why}); "
                            "delete the folder to start over")
        return None

    # -- writing -----------------------------------------------------------
    def save(self, state, history: list, cfg: config_lib.Config) -> None:
        """Save the state and the curve at the state's generation (no-op if already saved)."""
        generation = len(history)
        if generation == self.last_saved:
            return
        meta = {"generation": generation, "calls": history[-1]["calls"] if history else 0, "history": history,
                "config": config_lib.to_dict(cfg)}
        if jax.process_count() > 1:  # host arrays: orbax writes them from process 0 alone (module docstring)
            state = jax.device_get(state)
        with _QuietOrbax():
            self.manager.save(generation, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                  meta=ocp.args.JsonSave(meta)), force=True)
            self.manager.wait_until_finished()
        self.last_saved = generation
        if not self.primary:
            return
        digests = self.directory / _DIGESTS
        digests.mkdir(exist_ok=True)
        write_bytes_atomic(digests / f"{generation}.json",
                           json.dumps(_files(self.directory / str(generation))).encode())
        kept = {str(s) for s in self.manager.all_steps()}
        for f in digests.glob("*.json"):
            if f.stem not in kept:
                f.unlink(missing_ok=True)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

