"""The benchmark: `python -m tools.bench [--quick] [--shapes ...] [--json PATH]` (see bench.py).

Not part of the library: bbt_jax never imports it. Child processes it spawns run
`python -m tools.bench.child`.
"""
