"""What a run ran on: library versions, XLA flags, device, CPU model, git commit.

The entry point calls `environment(os.environ)` and stores the result in results.json
(library code never reads the environment behind the caller's back).
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "evosax", "optax", "orbax-checkpoint", "numpy")
REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """HEAD of the checkout the package runs from (None outside a git checkout)."""
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(environ) -> dict:
    """versions, XLA_FLAGS as set, JAX backend and device kind, CPU model and count, git commit."""
    import os

    import jax

    dev = jax.devices()[0]
    return {"versions": versions(), "xla_flags": environ.get("XLA_FLAGS", ""), "backend": dev.platform,
            "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "git_commit": git_commit()}
