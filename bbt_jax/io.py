"""Files on disk: atomic writes and the ../shared lookup (nothing else touches paths this way).

Every file a run writes (results, config, prompt, digests) goes through `write_bytes_atomic`:
a temporary file in the same folder, fsync, rename, so a killed run never leaves a half file
and never loses what was already written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIRS = (Path("../shared"), REPO_ROOT.parent / "shared")


def shared_path(rel: str) -> Path:
    """A path under ../shared, relative to the working directory or to the repository."""
    for base in SHARED_DIRS:
        if (base / rel).exists():
            return base / rel
    return SHARED_DIRS[0] / rel


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a temporary file in the same folder, fsync it, then rename (never a half file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | Path, where: str, what: str):
    """A JSON file's value; unreadable or malformed is ONE UserError line: `{where}: unreadable {what} (...)`
    or `{where}: malformed {what} (...)`."""
    from bbt_jax.errors import UserError

    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{where}: unreadable {what} ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: malformed {what} ({e})") from None


def read_verified(path: str | Path, sha256: str, where: str, against: str) -> bytes:
    """A file's bytes, checked against the sha256 its card/index recorded; ONE UserError line otherwise:
    `{where}: cannot read {path} (...)` or `{where}: {path} does not match {against} (sha256 differs)`."""
    import hashlib

    from bbt_jax.errors import UserError

    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{where}: cannot read {path} ({e.strerror})") from None
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise UserError(f"{where}: {path} does not match {against} (sha256 differs)")
    return blob


def safetensors_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    """safetensors' bytes of `tensors` with `metadata`, the same bytes in every process.

    safetensors keeps the metadata in a Rust HashMap, whose order is seeded per process: the same tensors and
    metadata saved twice give two files (and two sha256) unless the header is rewritten in one order. The
    header is re-dumped compact with the metadata's keys sorted and padded with spaces to 8 bytes as
    safetensors pads it; the tensors' offsets are relative to the data and do not move."""
    from safetensors.numpy import save

    blob = save(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def write_json_atomic(path: str | Path, obj) -> None:
    """JSON (indent 1, numpy scalars as floats) written atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=1, default=float) + "\n").encode())
