"""The command line: every bad input is one line `error: ...` and exit code 2 (never a
traceback); a run killed with SIGKILL and rerun ends exactly as an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbt_jax import cli
from bbt_jax import config as config_lib

REPO = Path(__file__).resolve().parents[1]
SPLIT = Path("sst2") / "k-shot" / "16-13"  # the tiny preset: sst2, 16 shots, seed 13


@pytest.fixture
def data(tmp_path, data_dir):
    """A private copy of sst2's 16-13 split and 32 test rows, to break."""
    root = tmp_path / "data"
    (root / SPLIT).mkdir(parents=True)
    for name in ("train.jsonl", "dev.jsonl"):
        shutil.copy(data_dir / SPLIT / name, root / SPLIT / name)
    test = (data_dir / "sst2" / "test.jsonl").read_text().splitlines()[:32]
    (root / "sst2" / "test.jsonl").write_text("\n".join(test) + "\n")
    return root


def train_argv(data, out, *extra):
    return ["train", "--preset", "tiny", "--data-dir", str(data), "--out", str(out), "--test-rows", "32", *extra]


def _then(_effect, flags=()):
    """Flags to pass after a side effect on the data (for one-line setups)."""
    return list(flags)


def _append(path: Path, text: str):
    with path.open("a") as f:
        f.write(text)


def _rewrite(path: Path, fn):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in fn(rows)))


def _word_level_tokenizer(path: Path) -> Path:
    """A tokenizer that knows none of sst2's verbalizer words: 'bad' and 'great' are both <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<mask>", "<unk>", ".", "It", "was"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def _hf_roberta_with_extra_key(path: Path) -> Path:
    """A tiny RoBERTa saved by transformers, whose config.json carries one unknown key."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=50265, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=80)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the setup's own stderr must not count as the CLI's output
    RobertaForMaskedLM(cfg).save_pretrained(path)
    c = json.loads((path / "config.json").read_text())
    c["my_extra_setting"] = 1
    (path / "config.json").write_text(json.dumps(c))
    return path


# name -> (setup(data, tmp) -> extra flags, expected text in the error line)
BAD_INPUTS = {
    "unknown task": (lambda d, t: ["--task", "nope"], "--task nope: unknown task"),
    "unknown model path": (lambda d, t: ["--model", str(t / "no" / "such" / "model")], "no such directory"),
    "bad dtype": (lambda d, t: ["--dtype", "float16"], "--dtype float16: choose from"),
    "bad strategy": (lambda d, t: ["--strategy", "pso"], "--strategy pso: choose from"),
    "bad placement": (lambda d, t: ["--placement", "prefix"], "--placement prefix: masked LMs take one of"),
    "missing data dir": (lambda d, t: ["--data-dir", str(t / "nowhere")], "no such directory"),
    "missing data file": (lambda d, t: _then((d / SPLIT / "dev.jsonl").unlink()), "dev.jsonl: data file not found"),
    "unreadable data file": (lambda d, t: _then((d / SPLIT / "train.jsonl").write_bytes(b"\xff\xfe{}")),
                             "train.jsonl: unreadable data file"),
    "malformed jsonl": (lambda d, t: _then(_append(d / SPLIT / "train.jsonl", "{not json\n")),
                        "train.jsonl:33: malformed JSON"),
    "label out of range": (lambda d, t: _then(_rewrite(d / SPLIT / "dev.jsonl",
                                                       lambda r: r[:4] + [{**r[4], "label": 7}] + r[5:])),
                           "dev.jsonl:5: label 7 out of range [0, 2)"),
    "empty train split": (lambda d, t: _then((d / SPLIT / "train.jsonl").write_text("")),
                          "the training split is empty"),
    "one-class train split": (lambda d, t: _then(_rewrite(d / SPLIT / "train.jsonl",
                                                          lambda r: [x for x in r if x["label"] == 1])),
                              "the training split has a single class"),
    "missing tokenizer": (lambda d, t: ["--tokenizer", str(t / "nope.json")], "--tokenizer"),
    "verbalizer words share a token": (lambda d, t: ["--tokenizer", str(_word_level_tokenizer(t / "tok.json"))],
                                       "'bad' and 'great' share token id"),
    "unsupported checkpoint config": (lambda d, t: ["--model", str(_hf_roberta_with_extra_key(t / "ckpt"))],
                                      "my_extra_setting"),
    "out is a file": (lambda d, t: _then((t / "file").write_text("x"), ["--out", str(t / "file")]), "is a file"),
    "popsize below 2": (lambda d, t: ["--popsize", "1"], "--popsize 1: must be >= 2"),
    "budget below popsize": (lambda d, t: ["--budget", "3"], "--budget 3: must be >= --popsize (4)"),
    "negative checkpoint period": (lambda d, t: ["--checkpoint-every", "-1"], "--checkpoint-every -1: must be >= 0"),
    "start margin without dev init": (lambda d, t: ["--start-margin", "0"], "--start-margin 0.0: needs --dev-init"),
}


def assert_one_error(capsys, rc, expected: str):
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_error_line(name, data, tmp_path, capsys):
    setup, expected = BAD_INPUTS[name]
    extra = setup(data, tmp_path)
    rc = cli.main(train_argv(data, tmp_path / "out", *extra))
    assert_one_error(capsys, rc, expected)


def test_eval_missing_prompt(tmp_path, capsys):
    rc = cli.main(["eval", "--prompt", str(tmp_path / "nope")])
    assert_one_error(capsys, rc, "nope: not found")


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--popsize", "many"]], ids=["unknown flag", "bad int"])
def test_argparse_errors_exit_2_without_traceback(argv, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(train_argv(data, tmp_path / "out", *argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("bbt-jax") and ": error: " in last


def _python_m(*argv, cwd=REPO, **kw):
    return subprocess.run([sys.executable, "-m", "bbt_jax", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.parametrize("name", ["unknown task", "malformed jsonl"])
def test_bad_input_in_a_real_process(name, data, tmp_path):
    setup, expected = BAD_INPUTS[name]
    p = _python_m(*train_argv(data, tmp_path / "out", *setup(data, tmp_path)))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], p.stderr


# -- SIGKILL and resume ---------------------------------------------------------------

# 10 generations of 4, one generation per dev interval, a checkpoint after each one.
RUN = ("--budget", "40", "--eval-every", "4", "--checkpoint-every", "1")


def _committed(ckpt: Path) -> int:
    """The newest committed checkpoint (its digest is written last), 0 if none."""
    steps = [int(p.stem) for p in (ckpt / "digests").glob("*.json")] if (ckpt / "digests").is_dir() else []
    return max(steps, default=0)


def _start(data, out, *method):
    log = open(out.parent / f"{out.name}.log", "a")
    # A shared persistent compilation cache: the later processes skip most of the compilation.
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(out.parent / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.Popen([sys.executable, "-m", "bbt_jax", *train_argv(data, out, *RUN, *method)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _kill_after(proc, ckpt: Path, generation: int) -> int:
    """SIGKILL `proc` as soon as a checkpoint at or past `generation` is committed. The deadline only guards
    against a hang: 120 s ran out once with the suite's two workers sharing 2 cores with two other jobs."""
    deadline = time.monotonic() + 600
    while _committed(ckpt) < generation:
        assert proc.poll() is None, f"the run ended before generation {generation}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    return _committed(ckpt)


# BBT; BBTv2 (parallel: 10 generations of every layer). The gradient methods' state (optax's) resumes bitwise
# through the same orbax checkpoints: tests/test_gradient.py.
METHODS = {"bbt": (), "bbtv2": ("--method", "bbtv2", "--layer-schedule", "parallel")}


@pytest.mark.parametrize("method", list(METHODS))
def test_sigkill_twice_then_resume_is_exact(data, tmp_path, method):
    flags = METHODS[method]
    straight = _start(data, tmp_path / "straight", *flags)  # runs alongside the interrupted one
    out = tmp_path / "killed"
    ckpt = out / "checkpoints"
    first = _kill_after(_start(data, out, *flags), ckpt, 2)
    second = _kill_after(_start(data, out, *flags), ckpt, 5)
    assert 2 <= first < second < 10 and not (out / "results.json").exists()
    last = _start(data, out, *flags)
    assert last.wait(timeout=600) == 0 and straight.wait(timeout=600) == 0
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["resumed_from_generation"] >= second and a["resumed_from_generation"] is None
    assert b["best_z"] == a["best_z"]  # bitwise: JSON floats round-trip exactly
    from safetensors.numpy import load_file  # the tensors bitwise (the metadata's key order may differ)

    ta, tb = (load_file(str(d / "prompt.safetensors")) for d in (tmp_path / "straight", out))
    assert sorted(ta) == sorted(tb) and all(ta[k].tobytes() == tb[k].tobytes() for k in ta)
    for key in ("dev", "test", "curve", "calls", "generations", "nonfinite_losses"):
        assert b[key] == a[key], key
    assert json.loads((out / "config.json").read_text()) == b["config"]
    log = (tmp_path / "killed.log").read_text()
    assert "Traceback" not in log and log.count("resuming from") == 2


def test_nonfinite_losses_are_never_selected_and_reported_once(data, tmp_path, capsys, monkeypatch):
    """Every candidate with z[0] > 0 gets a NaN prompt, so a NaN loss (train and dev); the
    others stay finite. The selected prompt must be a finite one, and the warning printed once."""
    import jax.numpy as jnp

    from bbt_jax import prompt

    real = prompt.prompt_from_z

    def poisoned(proj, z_K):
        prompt = real(proj, z_K)
        return jnp.where(z_K[0] > 0, jnp.nan, prompt)

    monkeypatch.setattr(prompt, "prompt_from_z", poisoned)
    out = tmp_path / "out"
    assert cli.main(train_argv(data, out, "--budget", "32")) == 0
    stdout = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert 0 < res["nonfinite_losses"] < res["calls"]  # a mix of finite and non-finite losses
    assert sum("NaN/inf" in line for line in stdout.splitlines()) == 1
    assert res["dev"]["best_generation"] >= 0 and res["dev"]["best_perf"] is not None  # something was selected
    assert res["best_z"] != [0.0] * 8
    assert res["best_z"][0] <= 0  # ... and it is a candidate whose losses were finite
    assert res["test"]["acc"] == res["test"]["acc"]  # scored with a finite prompt: not NaN


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_lists_every_flag(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--method", "--layer-schedule", "--optimizer", "--lr", "--prompt-init", "--dev-candidate"):
        assert flag in text
    assert "calls % eval_every" in text  # a literal % in a help text


def test_the_sst2_recommendation_is_the_demo_with_the_chosen_demonstrations_and_margin(capsys):
    """`--preset smollm2-sst2` (issue 16's choice on held-out dev, experiments/search_quality/held_out_dev)
    resolves to the demo preset with in2-draws' settings (one demonstration per class, 20 draws, 380 calls)
    and a start margin of two of sst2's 32 dev rows, nothing else (its docstring's claim)."""
    assert cli.main(["train", "--preset", "smollm2-sst2", "--print-config"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert cli.main(["train", "--preset", "demo", "--print-config"]) == 0
    demo = json.loads(capsys.readouterr().out)
    assert (best["prompt"]["demos"], best["prompt"]["demo_draws"], best["search"]["budget"]) == (1, 20, 380)
    assert best["search"]["start_margin"] == 2 / 32 and best["search"]["dev_init"]
    assert config_lib.diff(demo, best, tuple(config_lib.flat_fields())) == [
        "demos", "demo_draws", "budget", "start_margin", "out"]
