"""Vmapped sweeps equal their solo runs; sharded populations equal one device."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from bbt_jax.prompt import make_projection
from bbt_jax.sweep import Sweep, stack
from tests.test_search import C, D, K, as_problem, make_search, toy_problem


def stacked_projections(seeds):
    projs = [make_projection(jax.random.PRNGKey(s), intrinsic_dim=K, p0_NxD=np.zeros((C, D)), embed_std=1.0)
             for s in seeds]
    return stack(projs), projs


def test_sweep_members_equal_solo_runs():
    frozen, _, data = toy_problem()
    search = make_search(budget=8 * 6, eval_every=24)
    seeds, sigmas = [0, 1, 2], [1.0, 0.5, 2.0]
    projs_S, projs = stacked_projections(seeds)
    keys_S = jnp.stack([jax.random.PRNGKey(100 + s) for s in seeds])
    sweep = Sweep(search)
    p_S = as_problem(frozen, projs_S, data)
    states_S, curves_SxG = sweep.run(p_S, p_S, *sweep.init(keys_S, sigmas))
    assert curves_SxG.shape == (3, 6)
    for s in range(3):
        p = search.es_params(sigmas[s])
        solo = as_problem(frozen, projs[s], data)
        state, hist = search.run(solo, solo, search.init(keys_S[s], p), es_params=p)
        np.testing.assert_allclose(curves_SxG[s], [h["best_loss"] for h in hist], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(states_S.best_dev_z[s]), np.asarray(state.best_dev_z),
                                   rtol=1e-4, atol=1e-5)
        assert abs(float(states_S.best_dev_perf[s]) - float(state.best_dev_perf)) < 1e-6
    assert sweep.interval._cache_size() == 1


SHARDED = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from tests.test_search import as_problem, make_search, search_for, toy_problem
    from tests.test_sweep import stacked_projections
    from bbt_jax.sweep import Sweep
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("pop",))
    frozen, proj, data = toy_problem()
    one = make_search(budget=8 * 6)
    many = search_for(one.config, mesh=mesh)
    p = as_problem(frozen, proj, data)
    s1, h1 = one.run(p, p, one.init(jax.random.PRNGKey(3)))
    s4, h4 = many.run(p, p, many.init(jax.random.PRNGKey(3)))
    np.testing.assert_allclose([h["best_loss"] for h in h1], [h["best_loss"] for h in h4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s1.best_dev_z), np.asarray(s4.best_dev_z), rtol=1e-4, atol=1e-5)
    projs_S, _ = stacked_projections([0, 1, 2, 3])
    keys_S = jnp.stack([jax.random.PRNGKey(s) for s in range(4)])
    plain, sharded = Sweep(one), Sweep(one, mesh=mesh)
    p_S = as_problem(frozen, projs_S, data)
    a, ca = plain.run(p_S, p_S, *plain.init(keys_S, [1.0] * 4))
    b, cb = sharded.run(p_S, p_S, *sharded.init(keys_S, [1.0] * 4))
    assert len(b.best_dev_z.sharding.device_set) == 4
    np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-6)
    print("SHARDED-OK")
''')


def test_sharded_population_and_sweep_equal_one_device(tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1]),
           "JAX_PLATFORMS": "cpu"}
    import os
    env = {**os.environ, **env}
    r = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300,
                       cwd=env["PYTHONPATH"])
    assert "SHARDED-OK" in r.stdout, r.stderr[-3000:]
