"""Checkpoints: typed round trip, exact in-process resume, damaged steps, config checks.

A toy linear scorer stands in for the model (fast); the end-to-end SIGKILL test
through the CLI lives in tests/test_cli.py.
"""

import dataclasses
import functools
import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax import config as config_lib
from bbt_jax.checkpoint import Checkpointer, due
from bbt_jax.errors import UserError
from bbt_jax.fitness import Fitness, make_eval_data
from bbt_jax.problem import PromptProblem
from bbt_jax.prompt import make_projection
from bbt_jax.search import Search, SearchState
from bbt_jax.strategy import make_strategy

K, C, D, B = 5, 3, 4, 20


def toy_score(frozen, inputs, prompt_CxD):
    return jnp.concatenate([x_BxD @ prompt_CxD.T for x_BxD in inputs], axis=0)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, D)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(C, D)).T, -1).astype(np.int32)
    data = make_eval_data((jnp.asarray(x),), y, np.ones(B, np.float32))
    proj = make_projection(jax.random.PRNGKey(1), intrinsic_dim=K, p0_NxD=np.zeros((C, D)), embed_std=1.0)
    return PromptProblem(Fitness({}, data, toy_score), proj)


def make_cfg(**search):
    return config_lib.Config(
        prompt=config_lib.PromptConfig(intrinsic_dim=K, n_prompt_tokens=C),
        search=config_lib.SearchConfig(**{"popsize": 4, "budget": 4 * 9, "eval_every": 8, **search}),
        run=config_lib.RunConfig(seed=3))


@functools.lru_cache
def make_search(cfg):
    """One Search (one compilation) per config."""
    s = cfg.search
    return Search(make_strategy(s.strategy, popsize=s.popsize, num_dims=K, sigma=s.sigma), config=s)


def abstract(cfg):
    return jax.eval_shape(make_search(cfg).init, jax.random.PRNGKey(0))


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def straight(problem, tmp_path_factory):
    """An uninterrupted run (9 generations, intervals of 2) saved at every interval: steps 6, 8, 9 kept."""
    cfg = make_cfg()
    s = make_search(cfg)
    folder = tmp_path_factory.mktemp("ckpt")
    ck = Checkpointer(folder)
    state, history = s.run(problem, problem, s.init(jax.random.PRNGKey(0)),
                           on_interval=lambda st, h, rec: ck.save(st, h, cfg))
    ck.close()
    return {"cfg": cfg, "state": state, "history": history, "folder": folder}


@pytest.fixture
def saved(straight, tmp_path):
    """A private copy of the straight run's checkpoint folder."""
    shutil.copytree(straight["folder"], tmp_path / "ck")
    return tmp_path / "ck"


def test_due_rounds_up_to_interval_ends():
    assert [g for g in range(2, 21, 2) if due(3, g - 2, g)] == [4, 6, 10, 12, 16, 18]
    assert not any(due(0, g - 2, g) for g in range(2, 21, 2))


def test_round_trip_is_typed_and_bitwise(straight, saved):
    cfg = straight["cfg"]
    assert sorted(int(p.name) for p in saved.iterdir() if p.name.isdigit()) == [6, 8, 9]
    assert Checkpointer(saved).restore(cfg).state is None  # metadata only
    r = Checkpointer(saved).restore(cfg, abstract(cfg))
    state = straight["state"]
    assert isinstance(r.state, SearchState) and type(r.state.es_state) is type(state.es_state)
    assert leaves_equal(r.state, state) and r.history == straight["history"] and r.generation == 9
    assert r.config == config_lib.to_dict(cfg)


def stop_and_resume(cfg, problem, folder, stop_at=4):
    """Run `cfg` from scratch saving every interval, stop after generation `stop_at`, restore in a new
    Checkpointer and finish; returns (the restored checkpoint, final state, curve, search)."""
    s = make_search(cfg)
    ck = Checkpointer(folder)

    class Stop(Exception):  # noqa: N818 - a signal, not an error
        pass

    def on_interval(state, history, record):
        ck.save(state, history, cfg)
        if len(history) >= stop_at:
            raise Stop

    with pytest.raises(Stop):
        s.run(problem, problem, s.init(jax.random.PRNGKey(0)), on_interval=on_interval)
    ck.close()
    r = Checkpointer(folder).restore(cfg, abstract(cfg))
    resumed, hist = s.run(problem, problem, r.state, history=r.history)
    return r, resumed, hist, s


def test_resume_mid_run_equals_straight_run(straight, problem, tmp_path):
    """Stop after generation 4 of 9, restore in a new Checkpointer, finish: the same state and curve."""
    r, resumed, hist, s = stop_and_resume(straight["cfg"], problem, tmp_path)
    assert r.generation == 4
    assert leaves_equal(resumed, straight["state"])
    assert hist == straight["history"]
    assert s.interval._cache_size() == 1  # the restored state does not recompile the interval


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "meta", "remove"])
def test_damaged_latest_falls_back_with_one_warning(straight, saved, damage):
    cfg = straight["cfg"]
    files = [f for f in glob.glob(str(saved / "9" / "state" / "**"), recursive=True) if os.path.isfile(f)]
    big = max(files, key=os.path.getsize)
    if damage == "truncate":
        os.truncate(big, os.path.getsize(big) // 2)
    elif damage == "overwrite":
        with open(big, "r+b") as f:
            f.seek(os.path.getsize(big) // 2)
            f.write(b"\x00\x01\x02\x03")
    elif damage == "meta":
        (saved / "9" / "meta" / "metadata").write_text("{")
    else:
        os.remove(big)
    lines = []
    r = Checkpointer(saved, warn=lines.append).restore(cfg, abstract(cfg))
    assert r.generation == 8 and int(r.state.generation) == 8
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "damaged" in lines[0]
    assert not (saved / "9").exists()


def test_no_good_checkpoint_is_a_user_error(straight, saved):
    for f in glob.glob(str(saved / "*" / "meta" / "metadata")):
        open(f, "w").close()
    lines = []
    with pytest.raises(UserError, match="no readable checkpoint .3 damaged"):
        Checkpointer(saved, warn=lines.append).restore(straight["cfg"])
    assert lines == [] and (saved / "9").is_dir()  # nothing removed: the user decides


def test_other_settings_are_refused_by_name(straight, saved):
    cfg = straight["cfg"]
    other = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, popsize=6, sigma=0.5),
                                run=dataclasses.replace(cfg.run, seed=4))
    with pytest.raises(UserError) as e:
        Checkpointer(saved).restore(other)
    msg = str(e.value)
    assert "seed (3 -> 4)" in msg and "popsize (4 -> 6)" in msg and "sigma (1.0 -> 0.5)" in msg
    assert "\n" not in msg
    # free settings: evaluation batch, test rows, checkpoint period, memory chunking, a larger budget
    free = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, eval_batch=8, test_rows=5, checkpoint_every=3),
                               search=dataclasses.replace(cfg.search, pop_chunk=2, budget=400))
    assert Checkpointer(saved).restore(free).generation == 9


def test_budget_below_the_checkpoint_is_refused(straight, saved):
    small = dataclasses.replace(straight["cfg"], search=dataclasses.replace(straight["cfg"].search, budget=20))
    with pytest.raises(UserError, match="--budget 20: .* 36 calls"):
        Checkpointer(saved).restore(small)


def test_kill_during_save_leaves_no_step(straight, saved):
    """A temporary orbax folder (a save cut short) is ignored and cleaned up."""
    cfg = straight["cfg"]
    tmp = saved / "10.orbax-checkpoint-tmp-123"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"half")
    r = Checkpointer(saved).restore(cfg, abstract(cfg))
    assert r.generation == 9 and not tmp.exists()


def test_a_checkpoint_older_than_a_setting_resumes_at_its_default(tmp_path):
    """Fields added after a checkpoint was written (--data-source, --select-by) take their defaults, the
    behaviour before they existed; a run that sets them otherwise is refused, naming the field."""
    from bbt_jax.checkpoint import check_resume_config

    cfg = config_lib.tiny()
    saved = config_lib.to_dict(cfg)
    del saved["search"]["select_by"], saved["run"]["data_source"], saved["run"]["tfds_name"]
    check_resume_config(saved, cfg, 1, tmp_path)
    with pytest.raises(UserError, match=r"select_by \('metric' -> 'loss'\)"):
        check_resume_config(saved, config_lib.override(cfg, select_by="loss"), 1, tmp_path)


def test_a_checkpoint_written_before_the_dev_window_restores(straight, tmp_path):
    """Checkpoints of earlier versions lack SearchState.dev_window (None unless --dev-smooth): a step saved
    without that field comes back as the same state, typed."""
    cfg, state = straight["cfg"], straight["state"]
    assert state.dev_window is None
    old_layout = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "dev_window"}
    ck = Checkpointer(tmp_path)
    ck.save(old_layout, straight["history"], cfg)
    ck.close()
    r = Checkpointer(tmp_path).restore(cfg, abstract(cfg))
    assert isinstance(r.state, SearchState) and r.state.dev_window is None
    assert leaves_equal(r.state, state)


def test_resume_with_dev_smooth_equals_straight_run(problem, tmp_path):
    """--dev-smooth keeps its window in the state: a run stopped and resumed mid-way keeps the same one."""
    cfg = make_cfg(dev_smooth=3, eval_every=4)
    s = make_search(cfg)
    straight, straight_hist = s.run(problem, problem, s.init(jax.random.PRNGKey(0)))
    r, resumed, hist, _ = stop_and_resume(cfg, problem, tmp_path)
    assert r.generation == 4 and r.state.dev_window is not None
    assert leaves_equal(resumed, straight) and hist == straight_hist
