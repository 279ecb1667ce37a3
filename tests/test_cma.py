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
    PyCMA_ES,
    StopParams,
    bound_transform,
    default_eigen_every,
    generation_stats,
    pycma_constants,
    pycma_stops,
    tie_safe_weights_fitness_shaping_fn,
    with_tie_safe_ranks,
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
    pytest.param("sphere", 50, 100, 1.0, (CMA_ES, LazyCMA_ES, PyCMA_ES), id="sphere-50"),
    pytest.param("ellipsoid", 50, 200, 1e3, (CMA_ES, LazyCMA_ES, PyCMA_ES), id="ellipsoid-50-1e3"),
    # pycma uses TPA step-size adaptation for N >= 300 (evolution_strategy.TPA_dimension); evosax's
    # CSA (LazyCMA_ES) ends at ~80 vs pycma's ~4.3 here, PyCMA_ES (TPA) agrees with pycma.
    pytest.param("sphere", 500, 300, 1.0, (PyCMA_ES,), id="sphere-500", marks=pytest.mark.slow),
    pytest.param("ellipsoid", 200, 300, 1e4, (LazyCMA_ES, PyCMA_ES), id="ellipsoid-200-1e4", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind,d,gens,cond,classes", CASES)
def test_pycma_agreement(one_blas_thread, kind, d, gens, cond, classes):
    pytest.importorskip("cma")
    pop, seeds = 20, 10 if d < 500 else 5
    f_np, f_jax = _problem(kind, d, cond)
    f0 = float(f_np(np.zeros((1, d)))[0])
    medians = {"pycma": np.median(_pycma_best(d, pop, gens, f_np, seeds))}
    for cls in classes:
        medians[cls.__name__] = np.median(_evosax_best(cls, d, pop, gens, f_jax, seeds))
    vals = np.array(list(medians.values()))
    assert np.all(vals < f0 / 5) and np.all(vals > 1e-20), medians  # real progress, no float floor
    assert vals.max() / vals.min() < 2.0, medians


def test_pycma_es_lazy_csa_is_lazy_cma_except_constants():
    """tpa=False, pycma's constants swapped for evosax's: bitwise LazyCMA_ES (same B, D schedule)."""
    d, pop = 12, 10
    f = lambda x: jnp.sum((x - 1.0) ** 2, axis=-1)  # noqa: E731
    lazy = LazyCMA_ES(pop, jnp.zeros(d), eigen_every=3)
    ours = PyCMA_ES(pop, jnp.zeros(d), eigen_every=3, tpa=False)
    assert not ours.tpa and PyCMA_ES(pop, jnp.zeros(300)).tpa and not PyCMA_ES(pop, jnp.zeros(299)).tpa
    lp = lazy.default_params
    op = ours.default_params.replace(**{k: getattr(lp, k) for k in ("weights", "mu_eff", "c_std", "d_std", "c_c", "c_1", "c_mu", "chi_n")})
    ours.update_std = lazy.update_std  # evosax CSA and h_sigma
    ours.h_std = lazy.h_std
    a = jax.jit(lambda k: _scan_run(lazy, lp, f, d, 15, k))(jax.random.key(0))
    b = jax.jit(lambda k: _scan_run(ours, op, f, d, 15, k))(jax.random.key(0))
    fields = ("mean", "std", "p_std", "p_c", "C", "B", "D", "best_fitness")
    assert _leaves_equal([getattr(a, k) for k in fields], [getattr(b, k) for k in fields])


@pytest.mark.parametrize("d", [10, 50, 200, 500])
def test_pycma_constants_match_pycma(d):
    cma = pytest.importorskip("cma")
    from cma.sigma_adaptation import CMAAdaptSigmaCSA

    k = pycma_constants(d, 20)
    opts = {"popsize": 20, "verbose": -9}
    es = cma.CMAEvolutionStrategy(np.zeros(d), 1.0, opts)
    csa = cma.CMAEvolutionStrategy(np.zeros(d), 1.0, opts | {"AdaptSigma": CMAAdaptSigmaCSA})
    es.adapt_sigma.initialize(es)
    csa.adapt_sigma.initialize(csa)
    sm = es.sm.parameters()
    np.testing.assert_allclose(k["weights"], list(es.sp.weights), rtol=1e-12)
    ref = dict(mu_eff=es.sp.weights.mueff, c_c=es.sp.cc, c_1=sm["c1"], c_mu=sm["cmu"], c_std=csa.adapt_sigma.cs,
               d_std=csa.adapt_sigma.damps, chi_n=cma.utilities.math.Mh.chiN(d))
    for name, val in ref.items():
        assert k[name] == pytest.approx(val, rel=1e-6), name
    assert k["eigen_every"] == max(1, math.ceil(es.sm.lazy_update_gap))
    assert (type(es.adapt_sigma).__name__ == "CMAAdaptSigmaTPA") == (d >= 300) == PyCMA_ES(20, jnp.zeros(d)).tpa
    if d >= 300:
        assert k["tpa_damp"] == pytest.approx(es.adapt_sigma.sp.damp, rel=1e-12)
    p = PyCMA_ES(20, jnp.zeros(d)).default_params
    assert float(p.c_mu) == pytest.approx(k["c_mu"], rel=1e-6) and int(p.eigen_every) == k["eigen_every"]


def test_pycma_es_tpa_mirrored_samples():
    d, pop = 400, 10
    es = PyCMA_ES(pop, jnp.zeros(d), eigen_every=1)
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.zeros(d), params)
    f = lambda x: jnp.sum((x - 1.0) ** 2, axis=-1)  # noqa: E731
    with jax.numpy_rank_promotion("allow"):
        x, state = es.ask(jax.random.key(1), state, params)
        assert not np.allclose(x[0] - state.mean, state.mean - x[1])  # generation 1: all i.i.d.
        old_mean = state.mean
        state, _ = es.tell(jax.random.key(2), x, f(x), state, params)
        np.testing.assert_allclose(state.mean_shift, state.mean - old_mean, atol=1e-6)
        x, state = es.ask(jax.random.key(3), state, params)
    y0, y1 = (x[0] - state.mean) / state.std, (x[1] - state.mean) / state.std
    np.testing.assert_allclose(y0, -y1, atol=1e-5)
    cos = float(y0 @ state.mean_shift / (jnp.linalg.norm(y0) * jnp.linalg.norm(state.mean_shift)))
    assert cos == pytest.approx(1.0, abs=1e-5)
    maha = float(jnp.linalg.norm((state.B.T @ y0) / state.D))  # like a sample: chi_N distributed
    assert abs(maha - math.sqrt(d)) < 5
    # TPA: sample 0 (along the mean shift) better than sample 1 -> s > 0 and sigma grows
    fit = jnp.arange(pop, dtype=jnp.float32)
    s0, std0 = state.tpa_s, state.std
    with jax.numpy_rank_promotion("allow"):
        new, _ = es.tell(jax.random.key(4), x, fit, state, params)
    z = (1 - 0) / (pop - 1)
    assert float(new.tpa_s) == pytest.approx(0.7 * float(s0) + 0.3 * z**0.5, rel=1e-5)
    assert float(new.std) == pytest.approx(float(std0) * math.exp(float(new.tpa_s) / float(params.tpa_damp)), rel=1e-5)


# ---------------------------------------------------------------- pycma bound transform


@pytest.mark.parametrize("lb,ub", [(-5.0, 5.0), (-1.0, 1.0), (0.0, 0.3), (-100.0, 2.0), (3.0, 1e3)])
def test_bound_transform_matches_pycma(lb, ub):
    cma = pytest.importorskip("cma")
    d = 7
    rng = np.random.default_rng(0)
    width = ub - lb
    x = np.concatenate([
        rng.uniform(lb - 0.2 * width, ub + 0.2 * width, (50, d)),  # near the box, in the margins
        rng.standard_normal((50, d)) * 10 * width + (lb + ub) / 2,  # far out: periodic shift
        rng.standard_normal((10, d)) * 1e4 * width,
    ])
    tf = cma.transformations.BoxConstraintsLinQuadTransformation([[lb, ub]] * d)
    bt = cma.BoundTransform([lb, ub])
    ref = np.array([tf(row) for row in x])
    np.testing.assert_array_equal(ref, np.array([bt.repair(row) for row in x]))
    with jax.enable_x64(True):
        ours = np.asarray(jax.jit(bound_transform)(jnp.asarray(x), lb, ub))
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    assert np.all((ours >= lb) & (ours <= ub))
    # float32 (what the search uses): within float32 resolution of the period shift
    ours32 = np.asarray(bound_transform(jnp.asarray(x[:100], jnp.float32), lb, ub))
    np.testing.assert_allclose(ours32, ref[:100], atol=1e-5 * max(1.0, abs(lb), abs(ub), width) * 10)


def test_bound_transform_per_coordinate_and_infinite():
    cma = pytest.importorskip("cma")
    lb = np.array([-1.0, 0.0, -np.inf, 2.0])
    ub = np.array([1.0, np.inf, 0.5, 2.5])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4)) * 5
    tf = cma.transformations.BoxConstraintsLinQuadTransformation([[a if np.isfinite(a) else None, b if np.isfinite(b) else None] for a, b in zip(lb, ub)])
    ref = np.array([tf(row) for row in x])
    with jax.enable_x64(True):
        ours = np.asarray(bound_transform(jnp.asarray(x), jnp.asarray(lb), jnp.asarray(ub)))
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


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
