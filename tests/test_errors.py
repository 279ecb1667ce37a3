"""errors.run_main: a script's user mistake is one line and a non-zero exit, never a traceback."""

import subprocess
import sys
from pathlib import Path

from bbt_jax.errors import UserError, run_main

ROOT = Path(__file__).resolve().parents[1]


def test_run_main_turns_a_user_error_into_one_line(capsys):
    def bad():
        raise UserError("--out x: is a file")

    assert run_main(bad) == UserError.exit_code
    assert capsys.readouterr().err == "error: --out x: is a file\n"
    assert run_main(lambda: 0) == 0


def test_an_experiment_script_reports_a_bad_path_in_one_line(tmp_path):
    """experiments/*.py end with run_main: a folder that does not exist is one `error:` line, exit 2."""
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "search_quality_summary.py"),
                        str(tmp_path / "missing"), "--out", str(tmp_path / "s.md")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such file or folder"]
