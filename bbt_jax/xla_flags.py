"""CPU tuning of XLA, applied by the entry points (never by the library).

XLA reads XLA_FLAGS when its backend starts (the first computation), so the
entry point calls `apply_cpu_defaults()` before any JAX work. The user's own
XLA_FLAGS win: a flag they set is never overridden, and BBT_JAX_XLA_DEFAULTS=0
turns the defaults off. Measured on the 2-core CPU (`python -m tools.bench`): a plain
fp32 jnp.dot runs about 1.8x faster with YNNPACK's individual-dot fusion.
These flags only concern XLA's CPU backend; GPU/TPU runs ignore them.
"""

from __future__ import annotations

import os

CPU_DEFAULTS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)


def apply_cpu_defaults(environ=os.environ) -> str:
    """Add the CPU defaults to XLA_FLAGS unless the user set them; returns the result."""
    current = environ.get("XLA_FLAGS", "")
    if environ.get("BBT_JAX_XLA_DEFAULTS", "1") == "0":
        return current
    extra = [f for f in CPU_DEFAULTS if f.split("=")[0] not in current]
    if extra:
        environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return environ.get("XLA_FLAGS", "")
