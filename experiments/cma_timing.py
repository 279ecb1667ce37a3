"""Time one ask+tell generation at d=500, pop 20: evosax CMA_ES vs bbt_jax.cma.LazyCMA_ES.

Run: python experiments/cma_timing.py [d] [pop] [gens]. Prints ms/generation (a scan of
`gens` generations, compiled once, median of 3 runs) and a bare jnp.linalg.eigh at d.
Thread counts matter: jax's CPU eigh calls LAPACK through scipy's OpenBLAS, so
OPENBLAS_NUM_THREADS (set before start) changes its time; see the report in the commit.
"""

import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from evosax.algorithms import CMA_ES

from bbt_jax.cma import LazyCMA_ES


def per_gen_ms(es, d, gens):
    params = es.default_params

    def step(state, k):
        x, state = es.ask(k, state, params)
        state, _ = es.tell(k, x, jnp.sum((x - 1.0) ** 2, axis=-1), state, params)
        return state, None

    run = jax.jit(lambda s, k: jax.lax.scan(step, s, jax.random.split(k, gens))[0])
    state = es.init(jax.random.key(0), jnp.zeros(d), params)
    jax.block_until_ready(run(state, jax.random.key(1)))
    times = []
    for i in range(3):
        t = time.perf_counter()
        jax.block_until_ready(run(state, jax.random.key(2 + i)))
        times.append((time.perf_counter() - t) / gens * 1e3)
    return sorted(times)[1]


if __name__ == "__main__":
    d, pop, gens = (int(a) for a in (sys.argv[1:] + ["500", "20", "50"][len(sys.argv) - 1 :]))
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"{cpu} | nproc {subprocess.run('nproc', capture_output=True, text=True).stdout.strip()}")
    with jax.numpy_rank_promotion("allow"):
        lazy = LazyCMA_ES(pop, jnp.zeros(d))
        print(f"d={d} pop={pop} eigen_every={int(lazy.default_params.eigen_every)}")
        C = jnp.eye(d) + 0.01 * jnp.ones((d, d))
        eigh = jax.jit(jnp.linalg.eigh)
        jax.block_until_ready(eigh(C))
        t = time.perf_counter()
        for _ in range(5):
            jax.block_until_ready(eigh(C))
        print(f"jnp.linalg.eigh d={d}: {(time.perf_counter() - t) / 5 * 1e3:.1f} ms")
        print(f"evosax CMA_ES : {per_gen_ms(CMA_ES(pop, jnp.zeros(d)), d, gens):.1f} ms/generation")
        print(f"LazyCMA_ES    : {per_gen_ms(lazy, d, gens):.1f} ms/generation")
