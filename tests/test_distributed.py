"""distributed.py: the process flags and variables (one-line errors), and 2 local CPU processes on JAX's
multi-controller runtime (gloo): a train run and a 2-seed sweep equal their one-process runs up to float
rounding (`_close` says how far), process 0 alone writes the run, each process writes the sweep cells it
computed."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bbt_jax import cli, distributed
from bbt_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_no_flags_is_one_process():
    assert distributed.parse() is None
    assert distributed.parse(num_processes="1") is None  # one process: nothing to join
    assert distributed.mesh() is None and distributed.is_main()  # this test process runs alone
    assert distributed.block_owners(3, None) == [0, 0, 0]


def test_flags_then_environment():
    env = {"BBT_COORDINATOR": "host0:1234", "BBT_NUM_PROCESSES": "4", "BBT_PROCESS_ID": "3"}
    assert distributed.parse(environ=env) == distributed.Launch("host0:1234", 4, 3)
    assert distributed.parse(process_id="1", environ=env) == distributed.Launch("host0:1234", 4, 1)  # flag wins
    assert distributed.parse(auto=True) == distributed.Launch(auto=True)


@pytest.mark.parametrize("kw, env, match", [
    (dict(coordinator="host0", num_processes="2", process_id="0"), {}, r"^--coordinator host0: expected HOST:PORT"),
    (dict(coordinator="host0:x", num_processes="2", process_id="0"), {}, r"^--coordinator host0:x: expected"),
    (dict(coordinator="host0:70000", num_processes="2", process_id="0"), {}, r"^--coordinator host0:70000"),
    (dict(coordinator="h:1", num_processes="two", process_id="0"), {}, r"^--num-processes two: expected an integer"),
    (dict(coordinator="h:1", num_processes="0", process_id="0"), {}, r"^--num-processes 0: must be >= 1"),
    (dict(coordinator="h:1", num_processes="2", process_id="2"), {}, r"^--process-id 2: must be in \[0, 2\)"),
    (dict(num_processes="2", process_id="1"), {}, r"^--coordinator: needed with --num-processes, --process-id"),
    (dict(coordinator="h:1"), {}, r"^--num-processes: needed with --coordinator"),
    ({}, {"BBT_NUM_PROCESSES": "x"}, r"^BBT_NUM_PROCESSES x: expected an integer"),
    ({}, {"BBT_COORDINATOR": "h:1", "BBT_NUM_PROCESSES": "2"}, r"^--process-id: needed with BBT_COORDINATOR"),
    (dict(coordinator="h:1", auto=True), {}, r"^--distributed: the cluster sets the processes; drop --coordinator"),
])
def test_bad_launch_is_one_line(kw, env, match):
    with pytest.raises(UserError, match=match) as e:
        distributed.parse(**kw, environ=env)
    assert "\n" not in str(e.value)


def test_cli_bad_launch_flag(capsys):
    code = cli.main(["train", "--preset", "tiny", "--num-processes", "2", "--process-id", "5",
                     "--coordinator", "localhost:1"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --process-id 5: must be in [0, 2) (--num-processes 2)\n"


def _gloo() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _close(a: dict, b: dict) -> None:
    """Two results.json: the same curve up to float rounding (the first generation, the same members, to
    1e-6), the same dev selection (metric, generation) and test metric.

    Not the same z: the tiny random model's losses of the 4 members lie within ~2e-6 of each other, so the
    rounding of another batch shape (2 members per process, or 1 cell per device) can swap two members'
    ranks, and CMA-ES then moves elsewhere at the same losses (seen here in both the run and the sweep)."""
    assert len(a["curve"]) == len(b["curve"])
    for key in ("best_loss", "mean_loss", "worst_loss"):
        np.testing.assert_allclose(a["curve"][0][key], b["curve"][0][key], rtol=1e-6)
        np.testing.assert_allclose([r[key] for r in a["curve"]], [r[key] for r in b["curve"]], rtol=1e-5, atol=1e-6)
    assert a["dev"] == b["dev"] and a["test"] == b["test"]


@pytest.mark.slow
@pytest.mark.skipif(not _gloo(), reason="this jaxlib has no gloo CPU collectives (jax_cpu_collectives_implementation)")
def test_two_processes_equal_one(tmp_path, data_dir):
    common = ["--preset", "tiny", "--data-dir", str(data_dir), "--budget", "16", "--eval-every", "8",
              "--test-rows", "16", "--num-buckets", "1", "--eval-buckets", "1", "--checkpoint-every", "2"]
    train = ["train", *common]
    sweep = ["sweep", *common, "--grid", "seed=13,21"]
    one, two = tmp_path / "one", tmp_path / "two"
    # one process (this one)
    assert cli.main([*train, "--out", str(one / "run")]) == 0
    assert cli.main([*sweep, "--out", str(one / "sweep")]) == 0
    # two processes, each with its own CPU device, meeting at a free local port
    port, env = _free_port(), {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    procs = []
    for i in range(2):
        flags = ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)]
        commands = [[*train, "--out", str(two / "run"), *flags], [*sweep, "--out", str(two / "sweep"), *flags]]
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "dist_worker.py"), str(two), str(tmp_path / f"writes{i}.json"),
             json.dumps(commands)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two processes did not finish in 240 s")
    for i, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{text[-3000:]}"
    writes = [set(json.loads((tmp_path / f"writes{i}.json").read_text())["writes"]) for i in range(2)]

    # the single run: the same results (its members evaluated 2 per process); process 0 alone wrote it
    a, b = (json.loads((d / "run" / "results.json").read_text()) for d in (one, two))
    _close(a, b)
    assert b["environment"]["process_count"] == 2 and b["environment"]["device_count"] == 2
    assert not {w for w in writes[1] if w.startswith("run")}
    assert {"run/results.json", "run/config.json", "run/prompt.json", "run/prompt.safetensors"} <= writes[0]
    mine = [line for line in outputs[1].splitlines() if "calls " in line]
    assert mine and all(line.startswith("[process 1]") and "[seed 21]" in line for line in mine)  # its cell only

    # the sweep: the same cells; each process wrote the cells it computed (seed=13 on 0, seed=21 on 1)
    for cell in ("seed=13", "seed=21"):
        _close(*(json.loads((d / "sweep" / cell / "results.json").read_text()) for d in (one, two)))
    own = {"results.json", "config.json", "prompt.json", "prompt.safetensors"}
    assert {f"sweep/seed=13/{f}" for f in own} <= writes[0] and {f"sweep/seed=21/{f}" for f in own} <= writes[1]
    assert not {f"sweep/seed=21/{f}" for f in own} & writes[0]
    assert all(w == "sweep/seed=21" or w.startswith("sweep/seed=21/") and "checkpoints" not in w
               for w in writes[1] if w.startswith("sweep")), writes[1]  # orbax: process 0 (checkpoint.py)
    assert "sweep/results.md" in writes[0] and (two / "sweep" / "results.csv").is_file()  # the report: process 0
    assert sorted(p.name for p in (two / "sweep").iterdir() if p.is_dir()) == ["seed=13", "seed=21"]
