"""The fixed random projection: z (K) -> soft prompt A z + p0 (N x D).

Black-Box-Tuning `bbt.py` (LMForwardAPI.__init__): a bias-free Linear(K, N*D)
whose weight is drawn N(0, std) with std = alpha * std_hat / (sqrt(K) * sigma),
std_hat the std of all word-embedding entries ("normal"); otherwise the weight
keeps torch's default Linear init, U(-1/sqrt(K), 1/sqrt(K)) ("uniform").

Shape letters (bbt_jax/types.py): P population, K intrinsic dim, N prompt tokens, D hidden.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bbt_jax.errors import UserError

PROJECTIONS = ("normal", "uniform")


@struct.dataclass
class Projection:
    """A frozen projection; only z is searched."""

    A_KxND: jax.Array  # the transposed Linear weight: prompt = z @ A
    p0_NxD: jax.Array  # initial prompt (zeros for bbt.py's "add")

    @property
    def n_tokens(self) -> int:
        return self.p0_NxD.shape[0]

    @property
    def intrinsic_dim(self) -> int:
        return self.A_KxND.shape[0]

    def __call__(self, z_K: jax.Array) -> jax.Array:
        """The prompt of one candidate (the `decode` of fitness.Fitness)."""
        return prompt_from_z(self, z_K)


@struct.dataclass
class Identity:
    """The candidate IS the prompt (gradient baselines tune the N x D prompt, or the {"input", "layers"}
    pytree, directly): the `decode` of fitness.Fitness that changes nothing."""

    def __call__(self, prompt):
        return prompt


def embedding_std(word_VxD) -> float:
    """std of every word-embedding entry, in float64 as bbt.py's np.std."""
    return float(np.std(np.asarray(word_VxD, dtype=np.float64)))


def projection_std(embed_std: float, intrinsic_dim: int, alpha: float, sigma: float) -> float:
    """bbt.py: std = alpha * std_hat / (sqrt(d) * sigma)."""
    return alpha * embed_std / (np.sqrt(intrinsic_dim) * sigma)


def make_projection(key: jax.Array, *, intrinsic_dim: int, p0_NxD, embed_std: float,
                    alpha: float = 1.0, sigma: float = 1.0, kind: str = "normal") -> Projection:
    """Draw A once from `key`; p0 is given explicitly (zeros, or embeddings of a text)."""
    p0_NxD = jnp.asarray(p0_NxD, jnp.float32)
    n, d = p0_NxD.shape
    shape = (intrinsic_dim, n * d)
    if kind == "normal":
        A = projection_std(embed_std, intrinsic_dim, alpha, sigma) * jax.random.normal(key, shape)
    elif kind == "uniform":
        bound = 1.0 / np.sqrt(intrinsic_dim)
        A = jax.random.uniform(key, shape, minval=-bound, maxval=bound)
    else:
        raise UserError(f"--random-proj {kind}: choose from {PROJECTIONS}")
    return Projection(A_KxND=A.astype(jnp.float32), p0_NxD=p0_NxD)


def prompt_from_z(proj: Projection, z_K: jax.Array) -> jax.Array:
    """One candidate: A z + p0, shaped N x D."""
    n, d = proj.p0_NxD.shape
    return (z_K @ proj.A_KxND).reshape(n, d) + proj.p0_NxD


def prompts_from_z(proj: Projection, z_PxK: jax.Array) -> jax.Array:
    """A population of candidates: P x N x D, in one matmul."""
    n, d = proj.p0_NxD.shape
    return (z_PxK @ proj.A_KxND).reshape(-1, n, d) + proj.p0_NxD[None]
