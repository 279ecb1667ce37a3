"""io.py: the one place files are written; here, safetensors bytes that do not depend on the process."""

import json
import subprocess
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load

from bbt_jax.io import safetensors_bytes

_TENSORS = {"z": np.arange(3, dtype=np.float32), "prompt": np.ones((2, 4), np.float32)}
_META = {"task": "sst2", "method": "bbt", "format": "f/1", "model": "m", "projection": "{}", "extra": "x"}


def test_safetensors_bytes_round_trip_with_the_metadata_keys_in_order(tmp_path):
    blob = safetensors_bytes(_TENSORS, _META)
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0
    header = blob[8:8 + n].decode()
    assert header.startswith('{"__metadata__":{"extra":"x","format":"f/1","method":"bbt","model":"m",'
                             '"projection":"{}","task":"sst2"},"prompt":{')
    got = load(blob)
    assert got.keys() == _TENSORS.keys() and all(np.array_equal(got[k], v) for k, v in _TENSORS.items())
    (tmp_path / "t.safetensors").write_bytes(blob)
    with safe_open(tmp_path / "t.safetensors", "np") as f:
        assert f.metadata() == _META


def test_safetensors_bytes_are_the_same_in_every_process():
    """safetensors alone orders the metadata by a per-process hash seed: 6 keys in two processes agree by chance
    once in 720 runs; these three processes must agree always."""
    code = ("import hashlib, json, sys, numpy as np; from bbt_jax.io import safetensors_bytes; "
            "t = {k: np.asarray(v, np.float32) for k, v in json.loads(sys.argv[1]).items()}; "
            "print(hashlib.sha256(safetensors_bytes(t, json.loads(sys.argv[2]))).hexdigest())")
    arg = json.dumps({k: v.tolist() for k, v in _TENSORS.items()})
    digests = {subprocess.run([sys.executable, "-c", code, arg, json.dumps(_META)], capture_output=True, text=True,
                              check=True).stdout for _ in range(3)}
    assert len(digests) == 1
