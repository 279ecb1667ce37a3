from bbt_jax import xla_flags
from bbt_jax.xla_flags import apply_cpu_defaults


def test_no_cpu_flag_is_set_by_default():
    """No XLA flag that lost on one of our CPU kinds is a default (xla_flags.py's measurements)."""
    assert xla_flags.CPU_DEFAULTS == ()
    assert apply_cpu_defaults({}) == ""


def test_defaults_added_once_and_user_flags_win(monkeypatch):
    monkeypatch.setattr(xla_flags, "CPU_DEFAULTS", ("--xla_cpu_flag_a=1", "--xla_cpu_flag_b=x"))
    env = {}
    assert apply_cpu_defaults(env) == "--xla_cpu_flag_a=1 --xla_cpu_flag_b=x"
    assert apply_cpu_defaults(env) == "--xla_cpu_flag_a=1 --xla_cpu_flag_b=x"  # not added twice
    env = {"XLA_FLAGS": "--xla_cpu_flag_a=0 --foo"}
    assert apply_cpu_defaults(env) == "--xla_cpu_flag_a=0 --foo --xla_cpu_flag_b=x"
    env = {"XLA_FLAGS": "--foo", "BBT_JAX_XLA_DEFAULTS": "0"}
    assert apply_cpu_defaults(env) == "--foo"
