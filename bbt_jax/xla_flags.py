"""CPU tuning of XLA, applied by the entry points (never by the library).

XLA reads XLA_FLAGS when its backend starts (the first computation), so the
entry point calls `apply_cpu_defaults()` before any JAX work. The user's own
XLA_FLAGS win: a flag they set is never overridden, and BBT_JAX_XLA_DEFAULTS=0
turns the defaults off. These flags only concern XLA's CPU backend; GPU/TPU runs ignore them.

No flag is set today: the one we shipped, `--xla_cpu_experimental_ynn_fusion_type=individual_dot`
(it doubled a plain fp32 jnp.dot on one VM), was neutral on the Intel Xeon VM's roberta-base
generation, 14 % slower on an AMD EPYC VM's (issue 18) and, on the AMD EPYC VM, neutral within
noise on the SmolLM2 demo generation and 7-11 % slower on its gradient step and test pass
(experiments/xla_flags_smollm2.py, BENCHMARKS.md). A flag that loses on one of our CPU kinds
is not a default; pass it through XLA_FLAGS to try it.
"""

from __future__ import annotations

import os

CPU_DEFAULTS: tuple[str, ...] = ()


def apply_cpu_defaults(environ=os.environ) -> str:
    """Add the CPU defaults to XLA_FLAGS unless the user set them; returns the result."""
    current = environ.get("XLA_FLAGS", "")
    if environ.get("BBT_JAX_XLA_DEFAULTS", "1") == "0":
        return current
    extra = [f for f in CPU_DEFAULTS if f.split("=")[0] not in current]
    if extra:
        environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return environ.get("XLA_FLAGS", "")
