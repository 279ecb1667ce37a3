"""Median final best f on the sphere sum((x - 1)^2), x0 = 0, sigma0 = 1, popsize 20:
evosax CMA_ES (eager), LazyCMA_ES, PyCMA_ES (pycma defaults: TPA for N >= 300), PyCMA_ES with
CSA forced, pycma (defaults) and pycma with CSA forced. All evosax variants use tie-safe ranks.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python experiments/cma_vs_pycma.py [seeds]
"""

import os
import subprocess
import sys
import time
import warnings

import cma
import jax
import jax.numpy as jnp
import numpy as np
from cma.sigma_adaptation import CMAAdaptSigmaCSA
from evosax.algorithms import CMA_ES

from bbt_jax.cma import LazyCMA_ES, PyCMA_ES, with_tie_safe_ranks

warnings.simplefilter("ignore")
SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
POP = 20
SETTINGS = [(50, 100), (200, 150), (500, 300)]  # (d, generations)


def evosax_best(cls, d, gens, seeds, **kw):
    es = with_tie_safe_ranks(cls, POP, jnp.zeros(d), **kw)
    params = es.default_params.replace(std_init=jnp.asarray(1.0))
    f = lambda x: jnp.sum((x - 1.0) ** 2, axis=-1)  # noqa: E731

    def run(key):
        state = es.init(key, jnp.zeros(d), params)

        def step(state, k):
            x, state = es.ask(k, state, params)
            state, _ = es.tell(k, x, f(x), state, params)
            return state, None

        return jax.lax.scan(step, state, jax.random.split(key, gens))[0].best_fitness

    with jax.numpy_rank_promotion("allow"):
        return np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(1), seeds)))


def pycma_best(d, gens, seeds, **extra):
    off = {"tolfun": 0, "tolfunhist": 0, "tolx": 0, "tolflatfitness": 10**9, "tolstagnation": 0}
    out = []
    for s in range(seeds):
        opts = {"popsize": POP, "seed": s + 1, "verbose": -9, "verb_log": 0, "verb_disp": 0} | off | extra
        es = cma.CMAEvolutionStrategy(np.zeros(d), 1.0, opts)
        for _ in range(gens):
            X = es.ask()
            es.tell(X, list(np.sum((np.asarray(X) - 1.0) ** 2, axis=-1)))
        out.append(es.result.fbest)
    return np.array(out)


VARIANTS = {
    "evosax CMA_ES": lambda d, g, n: evosax_best(CMA_ES, d, g, n),
    "LazyCMA_ES": lambda d, g, n: evosax_best(LazyCMA_ES, d, g, n),
    "PyCMA_ES (TPA iff d>=300)": lambda d, g, n: evosax_best(PyCMA_ES, d, g, n),
    "PyCMA_ES tpa=False (CSA)": lambda d, g, n: evosax_best(PyCMA_ES, d, g, n, tpa=False),
    "PyCMA_ES tpa=True": lambda d, g, n: evosax_best(PyCMA_ES, d, g, n, tpa=True),
    "pycma (default)": lambda d, g, n: pycma_best(d, g, n),
    "pycma AdaptSigma=CSA": lambda d, g, n: pycma_best(d, g, n, AdaptSigma=CMAAdaptSigmaCSA),
}


def main():
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"CPU: {' '.join(cpu.split())}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; "
          f"jax {jax.__version__}, cma {cma.__version__}; seeds={SEEDS}, popsize {POP}, f0 = d\n")
    head = "| variant | " + " | ".join(f"d={d} ({g} gens)" for d, g in SETTINGS) + " |"
    print(head)
    print("|" + "---|" * (len(SETTINGS) + 1))
    for name, fn in VARIANTS.items():
        cells = []
        for d, g in SETTINGS:
            t = time.time()
            vals = fn(d, g, SEEDS)
            cells.append(f"{np.median(vals):.3g} ({time.time() - t:.0f}s)")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
