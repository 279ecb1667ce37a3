from bbt_jax.xla_flags import CPU_DEFAULTS, apply_cpu_defaults


def test_defaults_added_once_and_user_flags_win():
    env = {}
    assert apply_cpu_defaults(env) == " ".join(CPU_DEFAULTS)
    assert apply_cpu_defaults(env) == " ".join(CPU_DEFAULTS)
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=none --foo"}
    assert apply_cpu_defaults(env) == "--xla_cpu_experimental_ynn_fusion_type=none --foo"
    env = {"XLA_FLAGS": "--foo", "BBT_JAX_XLA_DEFAULTS": "0"}
    assert apply_cpu_defaults(env) == "--foo"
