"""The projection follows bbt.py's init formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax.errors import UserError
from bbt_jax.prompt import embedding_std, make_projection, projection_std, prompt_from_z, prompts_from_z


def test_normal_std_formula():
    word = np.random.default_rng(0).normal(0, 0.05, (1000, 16))
    std_hat = np.std(word)
    proj = make_projection(jax.random.PRNGKey(0), intrinsic_dim=400, p0_NxD=np.zeros((10, 16)),
                           embed_std=embedding_std(word), alpha=2.0, sigma=0.5)
    expected = 2.0 * std_hat / (np.sqrt(400) * 0.5)
    assert abs(projection_std(std_hat, 400, 2.0, 0.5) - expected) < 1e-12
    assert abs(float(jnp.std(proj.A_KxND)) / expected - 1) < 0.01
    assert abs(float(jnp.mean(proj.A_KxND))) < 0.01 * expected


def test_uniform_bound_is_torch_linear_default():
    proj = make_projection(jax.random.PRNGKey(1), intrinsic_dim=100, p0_NxD=np.zeros((2, 8)), embed_std=1.0,
                           kind="uniform")
    a = np.asarray(proj.A_KxND)
    assert a.max() <= 0.1 and a.min() >= -0.1 and a.max() > 0.09
    with pytest.raises(UserError):
        make_projection(jax.random.PRNGKey(1), intrinsic_dim=4, p0_NxD=np.zeros((2, 8)), embed_std=1.0, kind="x")


def test_prompt_is_Az_plus_p0_and_population_matches_single():
    p0 = np.arange(12, dtype=np.float32).reshape(3, 4)
    proj = make_projection(jax.random.PRNGKey(2), intrinsic_dim=5, p0_NxD=p0, embed_std=1.0)
    z_PxK = jax.random.normal(jax.random.PRNGKey(3), (6, 5))
    pop = prompts_from_z(proj, z_PxK)
    for i in range(6):
        ref = (np.asarray(proj.A_KxND).T @ np.asarray(z_PxK[i])).reshape(3, 4) + p0
        np.testing.assert_allclose(np.asarray(prompt_from_z(proj, z_PxK[i])), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(pop[i]), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(prompt_from_z(proj, jnp.zeros(5))), p0)
