"""bbt_jax.cma: tie-safe ranking, LazyCMA_ES, pycma comparison, pycma stop criteria."""

import ctypes
import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.algorithms import CMA_ES, SNES, Open_ES, Sep_CMA_ES
from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn, weights_fitness_shaping_fn

from bbt_jax.cma import (
    LazyCMA_ES,
    StopParams,
    default_eigen_every,
    generation_stats,
    with_tie_safe_ranks,
    pycma_stops,
    tie_safe_weights_fitness_shaping_fn,
)


@pytest.fixture(autouse=True)
def _evosax_promotion():
    """evosax relies on implicit rank promotion (as bbt_jax.search allows it)."""
    with jax.numpy_rank_promotion("allow"):
        yield


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _one_tell(es, fitness, d):
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.zeros(d), params)
    x, state = es.ask(jax.random.key(1), state, params)
    state, _ = es.tell(jax.random.key(2), x, fitness, state, params)
    return state


# ---------------------------------------------------------------- ties

TIED = jnp.asarray([0.3, 0.1, 0.2] + [1.0] * 17)  # 17 of 20 tied (e.g. a flat loss)
TIED_BEST = jnp.asarray([1.0] * 8 + [2.0, 3.0, 4.0] + [1.0] * 9)  # 17 tied at the best value


@pytest.mark.parametrize("fitness", [TIED, TIED_BEST])
def test_ties_weights_sum_to_one(fitness):
    params = CMA_ES(20, jnp.zeros(4)).default_params
    pos = lambda w: float(jnp.sum(jnp.where(w > 0, w, 0.0)))  # noqa: E731
    stock = weights_fitness_shaping_fn(None, fitness, None, params)
    assert abs(pos(stock) - 1.0) > 0.2  # the evosax bug: truncated average ranks
    ours = tie_safe_weights_fitness_shaping_fn(None, fitness, None, params)
    order = np.lexsort((np.arange(20), np.asarray(fitness)))  # ties broken by index
    expected = np.empty(20, np.float32)
    expected[order] = np.asarray(params.weights)
    np.testing.assert_array_equal(np.asarray(ours), expected)
    assert pos(ours) == pytest.approx(1.0, abs=1e-6)


def test_ties_mean_update_equals_index_broken_ties():
    d = 8
    fixed = _one_tell(with_tie_safe_ranks(CMA_ES, 20, jnp.zeros(d)), TIED, d)
    # the same ordering without ties: stock evosax must agree bitwise
    broken = jnp.asarray(np.argsort(np.lexsort((np.arange(20), np.asarray(TIED)))), jnp.float32)
    stock = _one_tell(CMA_ES(20, jnp.zeros(d)), broken, d)
    fields = ("mean", "std", "p_std", "p_c", "C")  # best_fitness differs: it is the raw value
    assert _leaves_equal([getattr(fixed, k) for k in fields], [getattr(stock, k) for k in fields])


@pytest.mark.parametrize("cls", [CMA_ES, Sep_CMA_ES, SNES, LazyCMA_ES])
def test_untied_is_stock_evosax_bitwise(cls):
    d = 8
    fitness = jax.random.normal(jax.random.key(3), (20,))
    assert _leaves_equal(_one_tell(with_tie_safe_ranks(cls, 20, jnp.zeros(d)), fitness, d), _one_tell(cls(20, jnp.zeros(d)), fitness, d))


def test_with_tie_safe_ranks_swaps_only_weights_shaping():
    assert with_tie_safe_ranks(CMA_ES, 8, jnp.zeros(3)).fitness_shaping_fn is tie_safe_weights_fitness_shaping_fn
    es = with_tie_safe_ranks(Open_ES, 8, jnp.zeros(3), std_schedule=lambda g: 0.1)
    assert es.fitness_shaping_fn is centered_rank_fitness_shaping_fn
    es = with_tie_safe_ranks(LazyCMA_ES, 8, jnp.zeros(3), eigen_every=4)
    assert es.fitness_shaping_fn is tie_safe_weights_fitness_shaping_fn and int(es.default_params.eigen_every) == 4


# ---------------------------------------------------------------- lazy eigendecomposition


def _scan_run(es, params, f, d, gens, key):
    state = es.init(key, jnp.zeros(d), params)

    def step(state, k):
        x, state = es.ask(k, state, params)
        state, _ = es.tell(k, x, f(x), state, params)
        return state, None

    return jax.lax.scan(step, state, jax.random.split(key, gens))[0]


def test_lazy_eigen_every_one_is_evosax_bitwise():
    d, f = 12, lambda x: jnp.sum((x - 1.0) ** 2, axis=-1)
    lazy = LazyCMA_ES(10, jnp.zeros(d), eigen_every=1)
    eager = CMA_ES(10, jnp.zeros(d))
    a = jax.jit(lambda k: _scan_run(lazy, lazy.default_params, f, d, 15, k))(jax.random.key(0))
    b = jax.jit(lambda k: _scan_run(eager, eager.default_params, f, d, 15, k))(jax.random.key(0))
    assert _leaves_equal(a, b)


def test_default_gap_matches_purecma_rule():
    cma = pytest.importorskip("cma")
    from cma.more_algorithms import purecma

    for n, lam in [(50, 20), (500, 20), (200, 40)]:
        p = purecma.CMAESParameters(n, lam)
        # purecma refreshes when evaluations exceed lazy_gap_evals since the last refresh
        assert int(default_eigen_every(p.c1, p.cmu, n)) == max(1, math.floor(p.lazy_gap_evals / lam))
    del cma
    params = LazyCMA_ES(20, jnp.zeros(500)).default_params
    assert int(params.eigen_every) == math.floor(0.5 / ((float(params.c_1) + float(params.c_mu)) * 500)) > 1


def _sym_sqrt(C):
    w, V = jnp.linalg.eigh((C + C.T) / 2)
    return (V * jnp.sqrt(jnp.maximum(w, 1e-8))) @ V.T


def test_lazy_stale_samples_match_fresh_d500():
    d, pop, gens = 500, 20, 30
    es = LazyCMA_ES(pop, jnp.zeros(d))
    params = es.default_params
    assert int(params.eigen_every) > 5

    def step(state, k):
        x, state = es.ask(k, state, params)
        # samples y = A z with the symmetric root A = B D B^T (unique, unlike B): stale vs fresh
        z = jax.random.normal(k, (pop, d))
        stale = z @ ((state.B * state.D) @ state.B.T)
        fresh = z @ _sym_sqrt(state.C)
        err = jnp.linalg.norm(stale - fresh) / jnp.linalg.norm(fresh)
        state, _ = es.tell(k, x, jnp.sum((x - 1.0) ** 2, axis=-1), state, params)
        return state, err

    state = es.init(jax.random.key(0), jnp.zeros(d), params)
    _, err = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(jax.random.key(1), gens)))(state)
    assert float(jnp.max(err)) < 1e-2, np.asarray(err)


# ---------------------------------------------------------------- pycma comparison


@pytest.fixture(scope="module")
def one_blas_thread():
    """pycma's numpy eigh with 2 OpenBLAS threads on 2 busy cores is ~50x slower; use one."""
    libs = []
    for pat in ("numpy.libs/*openblas*", "scipy.libs/*openblas*"):
        libs += glob.glob(os.path.join(os.path.dirname(os.path.dirname(np.__file__)), pat))
    restore = []
    for path in libs:
        lib = ctypes.CDLL(path)
        for suffix in ("64_", "_64_", ""):
            setn = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            getn = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            if setn is not None and getn is not None:
                restore.append((setn, getn()))
                setn(1)
                break
    yield
    for setn, n in restore:
        setn(n)


def _problem(kind, d, cond):
    rng = np.random.default_rng(0)
    if kind == "sphere":
        R, s = np.eye(d), np.ones(d)
    else:  # rotated ellipsoid, fixed random rotation
        R, s = np.linalg.qr(rng.standard_normal((d, d)))[0], cond ** (np.arange(d) / (d - 1))
    f_np = lambda X: np.sum(s * ((X - 1.0) @ R.T) ** 2, axis=-1)  # noqa: E731  optimum at x=1, x0=0
    Rj, sj = jnp.asarray(R, jnp.float32), jnp.asarray(s, jnp.float32)
    f_jax = lambda X: jnp.sum(sj * ((X - 1.0) @ Rj.T) ** 2, axis=-1)  # noqa: E731
    return f_np, f_jax


def _evosax_best(cls, d, pop, gens, f, seeds, **kw):
    es = with_tie_safe_ranks(cls, pop, jnp.zeros(d), **kw)
    params = es.default_params.replace(std_init=jnp.asarray(1.0))
    run = lambda k: _scan_run(es, params, f, d, gens, k).best_fitness  # noqa: E731
    return np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(1), seeds)))


def _pycma_best(d, pop, gens, f, seeds):
    import cma

    off = {"tolfun": 0, "tolfunhist": 0, "tolx": 0, "tolflatfitness": 10**9, "tolstagnation": 0}
    out = []
    for s in range(seeds):
        opts = {"popsize": pop, "seed": s + 1, "verbose": -9, "verb_log": 0, "verb_disp": 0, "maxiter": gens} | off
        es = cma.CMAEvolutionStrategy(np.zeros(d), 1.0, opts)
        for _ in range(gens):
            X = es.ask()
            es.tell(X, list(f(np.asarray(X))))
        out.append(es.result.fbest)
    return np.array(out)


CASES = [
    pytest.param("sphere", 50, 100, 1.0, (CMA_ES, LazyCMA_ES), id="sphere-50"),
    pytest.param("ellipsoid", 50, 200, 1e3, (CMA_ES, LazyCMA_ES), id="ellipsoid-50-1e3"),
    # measured: LazyCMA_ES median 80 vs pycma 4.3 after 300 generations (f0 = 500); at d=200 eager,
    # lazy and pycma agree (13.5 / 13.6 / 13.1 after 150), so suspect evosax's vs pycma's
    # large-d parameters (c_std, d_std, c_1, c_mu), not the lazy gap. Not yet resolved.
    pytest.param(
        "sphere", 500, 300, 1.0, (LazyCMA_ES,), id="sphere-500",
        marks=[pytest.mark.slow, pytest.mark.xfail(reason="evosax slower than pycma at d=500", strict=False)],
    ),
    pytest.param("ellipsoid", 200, 300, 1e4, (LazyCMA_ES,), id="ellipsoid-200-1e4", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind,d,gens,cond,classes", CASES)
def test_pycma_agreement(one_blas_thread, kind, d, gens, cond, classes):
    pytest.importorskip("cma")
    pop, seeds = 20, 10
    f_np, f_jax = _problem(kind, d, cond)
    f0 = float(f_np(np.zeros((1, d)))[0])
    medians = {"pycma": np.median(_pycma_best(d, pop, gens, f_np, seeds))}
    for cls in classes:
        medians[cls.__name__] = np.median(_evosax_best(cls, d, pop, gens, f_jax, seeds))
    vals = np.array(list(medians.values()))
    assert np.all(vals < f0 / 5) and np.all(vals > 1e-20), medians  # real progress, no float floor
    assert vals.max() / vals.min() < 2.0, medians


# ---------------------------------------------------------------- pycma stop criteria


def _stats(rows):
    return jnp.stack([generation_stats(jnp.asarray(r, jnp.float32)) for r in rows])


def test_stops_hand_made():
    n, lam = 4, 8  # history length floor(10 + 30 * 4 / 8) = 25
    improving = [np.arange(lam) + 10.0 / (g + 1) for g in range(5)]
    flat = [np.r_[np.ones(7), 2.0] for _ in range(6)]  # best == sorted[int(0.75 * 8)]: flat
    _, tolfun, tolflat = pycma_stops(_stats(improving + flat), n, lam)
    _, _, tolflat3 = pycma_stops(_stats(improving + flat), n, lam, StopParams(tolflatfitness=3))
    assert np.flatnonzero(np.asarray(tolflat3)).tolist() == [8, 9, 10]
    assert not tolfun.any()
    assert np.flatnonzero(np.asarray(tolflat)).tolist() == [6, 7, 8, 9, 10]  # 2nd flat generation on
    # tolfun: current and historic ranges below 1e-11; history must forget the old bests first
    const = [np.full(lam, 5.0)] * 30
    stop, tolfun, tolflat = pycma_stops(_stats(improving[:1] + const), n, lam)
    assert int(stop.tolfun_gen) == 1 + 25 and int(stop.tolflatfitness_gen) == 1 + 2
    _, tolfun, _ = pycma_stops(_stats(const[:3]), n, lam, StopParams(tolfun=0.0))
    assert not tolfun.any()


def test_stops_match_pycma_fed_same_values():
    cma = pytest.importorskip("cma")
    n, lam = 3, 6
    rng = np.random.default_rng(0)
    rows = [rng.random(lam) for _ in range(4)]
    rows += [np.r_[0.5 * np.ones(5), 0.9] for _ in range(5)]  # flat: sorted[int(0.75 * 6)] == best
    rows += [rng.random(lam) for _ in range(2)]
    rows += [1e-13 * rng.random(lam) for _ in range(30)]  # distinct in float32 too, range < tolfun
    es = cma.CMAEvolutionStrategy(np.zeros(n), 1.0, {"popsize": lam, "verbose": -9, "verb_log": 0, "verb_disp": 0})
    ref = []
    for r in rows:
        es.tell(es.ask(), list(r))
        s = es.stop()
        ref.append(("tolfun" in s, "tolflatfitness" in s))
    _, tolfun, tolflat = pycma_stops(_stats(rows), n, lam)
    assert [bool(x) for x in tolfun] == [a for a, _ in ref]
    assert [bool(x) for x in tolflat] == [b for _, b in ref]
    assert any(a for a, _ in ref) and any(b for _, b in ref)
