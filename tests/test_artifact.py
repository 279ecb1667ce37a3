"""The tuned prompt as an artifact: written by train, reloaded by `bbt-jax eval` with the
same test accuracy; plus what a rerun in the same --out does."""

import json
import shutil

import numpy as np
import pytest

from bbt_jax import artifact, cli
from bbt_jax.config import Config, from_dict
from bbt_jax.prompt import prompt_from_z


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--preset", "tiny", "--data-dir", str(data_dir), "--out", str(out), "--test-rows", "32",
            "--budget", "16"]
    assert cli.main(argv) == 0
    return {"out": out, "argv": argv, "results": json.loads((out / "results.json").read_text())}


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_files_and_card(trained):
    out, res = trained["out"], trained["results"]
    assert res["prompt"] == {"tensors": "prompt.safetensors", "card": "prompt.json"}
    card = json.loads((out / "prompt.json").read_text())
    assert card["task"] == "sst2" and card["placement"] == "add" and card["template"] == res["template"]
    assert card["verbalizer"] == {"words": ["bad", "great"], "ids": res["verbalizer"]["ids"]}
    assert card["metrics"]["test"] == res["test"] and card["metrics"]["dev"] == res["dev"]
    assert card["config"] == res["config"] == json.loads((out / "config.json").read_text())
    k, n = res["config"]["prompt"]["intrinsic_dim"], res["n_prompt_tokens"]
    assert card["projection"]["shape"] == [k, n * card["hidden"]] and card["projection"]["seed"] == 13
    assert isinstance(from_dict(card["config"]), Config)
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_tensors_are_z_and_a_z_plus_p0(trained):
    from bbt_jax.harness import build

    saved = artifact.load_prompt(trained["out"])
    assert saved.z.tolist() == trained["results"]["best_z"]
    h = build(artifact.config_for(saved), default_tokenizer=cli.shared_path("models/roberta-tokenizer/tokenizer.json"))
    np.testing.assert_array_equal(saved.p0_NxD, np.asarray(h.projection.p0_NxD))
    np.testing.assert_allclose(saved.prompt_NxD, np.asarray(prompt_from_z(h.projection, saved.z)), rtol=0, atol=1e-6)
    for other in (trained["out"] / "prompt.json", trained["out"] / "prompt.safetensors"):
        assert artifact.load_prompt(other).path == saved.path


def test_eval_reproduces_test_accuracy(trained, capsys):
    assert cli.main(["eval", "--prompt", str(trained["out"] / "prompt.json")]) == 0
    result = last_json(capsys)
    assert result["test"] == trained["results"]["test"]
    assert result["z_agrees"] is True


def test_eval_refuses_a_tampered_prompt(trained, tmp_path, capsys):
    for f in ("prompt.json", "prompt.safetensors"):
        shutil.copy(trained["out"] / f, tmp_path / f)
    blob = bytearray((tmp_path / "prompt.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "prompt.safetensors").write_bytes(bytes(blob))
    assert cli.main(["eval", "--prompt", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not match its card" in err[0]


def test_eval_refuses_a_prompt_of_another_length(trained, capsys):
    assert cli.main(["eval", "--prompt", str(trained["out"]), "--n-prompt-tokens", "3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the prompt is 4 x" in err[0] and "take 3 x" in err[0]


def test_rerun_with_other_settings_names_them(trained, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    argv = [a if a != str(trained["out"]) else str(out) for a in trained["argv"]]
    assert cli.main([*argv, "--popsize", "6", "--intrinsic-dim", "5"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "intrinsic_dim (8 -> 5)" in err[0] and "popsize (4 -> 6)" in err[0]


def test_rerun_with_a_larger_budget_continues(trained, tmp_path, capsys):
    """Same --out, budget 16 -> 24: resumes at generation 4 and runs two more."""
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    argv = [a if a != str(trained["out"]) else str(out) for a in trained["argv"]]
    argv[argv.index("--budget") + 1] = "24"
    assert cli.main(argv) == 0
    assert "resuming from" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_from_generation"] == 4 and res["calls"] == 24 and len(res["curve"]) == 6
    assert res["curve"][:4] == trained["results"]["curve"]
