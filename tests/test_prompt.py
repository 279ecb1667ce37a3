"""The projection follows bbt.py's init formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbt_jax.errors import UserError
from bbt_jax.prompt import embedding_std, make_projection, projection_std, prompt_from_z, prompts_from_z


def _bbt_py_std(embedding, intrinsic_dim, alpha, sigma):
    """Black-Box-Tuning bbt.py@e4013f7 lines 283-285, as written there."""
    std_hat = np.std(embedding.reshape(-1))
    mu = 0.0  # noqa: F841
    std = alpha * std_hat / (np.sqrt(intrinsic_dim) * sigma)
    return std


def test_normal_std_formula():
    # Half the entries +0.05, half -0.05: mean 0, so std_hat = 0.05 exactly.
    word = np.tile(np.array([0.05, -0.05]), (1000, 8))
    assert embedding_std(word) == pytest.approx(0.05, abs=1e-15)
    # By hand: alpha * std_hat / (sqrt(d) * sigma) = 2.0 * 0.05 / (sqrt(400) * 0.5) = 0.1 / (20 * 0.5) = 0.01
    assert projection_std(0.05, 400, 2.0, 0.5) == pytest.approx(0.01, rel=1e-12)
    # By hand: 1.0 * 0.05 / (sqrt(100) * 1.0) = 0.005; 3.0 * 0.05 / (sqrt(25) * 0.2) = 0.15 / 1.0 = 0.15
    assert projection_std(0.05, 100, 1.0, 1.0) == pytest.approx(0.005, rel=1e-12)
    assert projection_std(0.05, 25, 3.0, 0.2) == pytest.approx(0.15, rel=1e-12)
    # Against bbt.py's own line on a non-trivial embedding and several settings.
    rand = np.random.default_rng(0).normal(0.01, 0.05, (1000, 16))
    for d, alpha, sigma in [(400, 2.0, 0.5), (500, 1.0, 1.0), (10, 0.3, 7.0)]:
        assert projection_std(embedding_std(rand), d, alpha, sigma) == pytest.approx(
            _bbt_py_std(rand, d, alpha, sigma), rel=1e-12)
    # The drawn A has that std (empirically) and mean 0.
    proj = make_projection(jax.random.PRNGKey(0), intrinsic_dim=400, p0_NxD=np.zeros((10, 16)),
                           embed_std=embedding_std(word), alpha=2.0, sigma=0.5)
    assert abs(float(jnp.std(proj.A_KxND)) / 0.01 - 1) < 0.01
    assert abs(float(jnp.mean(proj.A_KxND))) < 0.01 * 0.01


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
