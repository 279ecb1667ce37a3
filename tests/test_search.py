"""The search loop: one compiled interval, no recompilation, no host sync, NaN safety,
dev selection; with a toy linear scorer (fast) and with the tiny RoBERTa."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from bbt_jax.config import SearchConfig
from bbt_jax.fitness import Fitness, make_eval_data
from bbt_jax.problem import PromptProblem
from bbt_jax.prompt import make_projection
from bbt_jax.search import NONFINITE_LOSS, Search
from bbt_jax.strategy import make_strategy

K, C, D, B = 6, 3, 5, 24


def toy_score(frozen, inputs, prompt_CxD):
    """logits = x @ prompt.T, over every bucket: a linear classifier is the 'prompt'."""
    return jnp.concatenate([x_BxD @ prompt_CxD.T * frozen["scale"] for x_BxD in inputs], axis=0)


def toy_problem(seed=0, nan_rows=False):
    rng = np.random.default_rng(seed)
    W_true = rng.normal(size=(C, D))
    x = rng.normal(size=(B, D)).astype(np.float32)
    y = np.argmax(x @ W_true.T, -1).astype(np.int32)
    inputs = (jnp.asarray(x[:10]), jnp.asarray(x[10:]))  # two "buckets"
    data = make_eval_data(inputs, y, np.ones(B, np.float32))
    proj = make_projection(jax.random.PRNGKey(seed), intrinsic_dim=K, p0_NxD=np.zeros((C, D)), embed_std=1.0)
    frozen = {"scale": jnp.asarray(1.0)}
    return frozen, proj, data


def as_problem(frozen, proj, data, score=toy_score, loss="ce"):
    """The toy scorer behind the fitness contract, with its projection (train = dev here)."""
    return PromptProblem(Fitness(frozen, data, score, loss, "acc"), proj)


def search_for(cfg: SearchConfig, mesh=None) -> Search:
    strategy = make_strategy(cfg.strategy, popsize=cfg.popsize, num_dims=K, sigma=cfg.sigma, es_params=cfg.es_params)
    return Search(strategy, config=cfg, mesh=mesh)


def make_search(**kw):
    return search_for(SearchConfig(**{"popsize": 8, "budget": 8 * 13, "eval_every": 24, "sigma": 1.0, **kw}))


def test_cma_lowers_loss_and_intervals_cover_budget():
    p = as_problem(*toy_problem())
    s = make_search()
    state, hist = s.run(p, p, s.init(jax.random.PRNGKey(0)))
    assert len(hist) == 13 and hist[-1]["calls"] == 104  # 13 generations, last interval partial
    assert s.num_intervals == 5 and int(state.generation) == 13
    assert min(h["best_loss"] for h in hist[-3:]) < hist[0]["best_loss"]
    assert float(state.best_dev_perf) >= max(h["dev"]["dev_perf"] for h in hist if "dev" in h) - 1e-7


def test_no_recompilation_after_first_interval():
    p = as_problem(*toy_problem())
    s = make_search()
    s.run(p, p, s.init(jax.random.PRNGKey(0)))
    assert s.interval._cache_size() == 1  # five intervals, incl. the shorter last one, one compile


def test_one_host_pull_per_interval_and_no_transfers_inside(monkeypatch):
    p = as_problem(*toy_problem())
    s = make_search()
    state = s.init(jax.random.PRNGKey(0))
    es_params = s.es_params()
    s.interval(p, p, es_params, state)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        out_state, out = s.interval(p, p, es_params, state)
    calls = []
    real = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: calls.append(1) or real(x))
    s.run(p, p, state)
    assert len(calls) == s.num_intervals


def test_same_seed_same_result_and_matches_manual_loop():
    """The scanned interval equals generations run one by one through ask/eval/tell."""
    problem = as_problem(*toy_problem())
    s = make_search(budget=8 * 3, eval_every=24)
    state0 = s.init(jax.random.PRNGKey(5))
    state, _ = s.run(problem, problem, state0)
    st, p = state0, s.es_params()
    key = st.key
    with jax.numpy_rank_promotion("allow"):
        for _ in range(3):
            key, k_ask, k_tell = jax.random.split(key, 3)
            z, es = s.es.ask(k_ask, st.es_state, p)
            loss, _ = problem(z)
            es, _ = s.es.tell(k_tell, z, loss, es, p)
            st = st.replace(es_state=es)
    np.testing.assert_allclose(np.asarray(state.es_state.mean), np.asarray(st.es_state.mean), rtol=1e-5, atol=1e-6)


def test_nonfinite_losses_never_best():
    frozen, proj, data = toy_problem()

    def nan_score(frozen, inputs, prompt_CxD):
        logits = toy_score(frozen, inputs, prompt_CxD)
        # candidates whose first prompt entry is positive produce NaN
        return jnp.where(prompt_CxD[0, 0] > 0, jnp.nan, logits)

    s = search_for(SearchConfig(popsize=8, budget=8 * 6, eval_every=16))
    p = as_problem(frozen, proj, data, score=nan_score)
    state, hist = s.run(p, p, s.init(jax.random.PRNGKey(1)))
    assert int(state.nonfinite) > 0
    assert all(np.isfinite(h["best_loss"]) and h["best_loss"] < NONFINITE_LOSS for h in hist)
    assert np.isfinite(float(state.best_train_loss))
    from bbt_jax.prompt import prompt_from_z
    assert float(prompt_from_z(proj, state.best_dev_z)[0, 0]) <= 0


def test_dev_init_scores_z0_first():
    p = as_problem(*toy_problem())
    s = make_search()
    state = s.init(jax.random.PRNGKey(0))
    state, m = s.dev_init(p, state)
    assert float(state.best_dev_perf) == float(m["dev_perf"])
    assert int(state.best_dev_generation) == 0 and not np.any(np.asarray(state.best_dev_z))


def test_sep_cma_and_bound():
    p = as_problem(*toy_problem())
    s = make_search(strategy="sep_cma_es", bound=0.1)
    state, hist = s.run(p, p, s.init(jax.random.PRNGKey(0)))
    assert np.abs(np.asarray(state.best_dev_z)).max() <= 0.1 + 1e-7
    assert len(hist) == 13


@pytest.mark.parametrize("handling", ["transform", "clip"])
def test_bounds_evaluate_the_phenotype_and_tell_as_pycma(handling):
    """transform (pycma's BoundTransform, as bbt.py): evaluate the box-transformed z, tell the unbounded
    genotype; clip: evaluate and tell the clipped z. Checked against a hand-written generation."""
    from bbt_jax.cma import bound_transform

    problem = as_problem(*toy_problem())
    s = make_search(budget=8, eval_every=8, bound=0.3, bound_handling=handling, sigma=2.0)
    state0 = s.init(jax.random.PRNGKey(4))
    state, _ = s.run(problem, problem, state0)
    key, k_ask, k_tell = jax.random.split(state0.key, 3)
    p = s.es_params()
    with jax.numpy_rank_promotion("allow"):
        geno, es = s.es.ask(k_ask, state0.es_state, p)
        assert float(jnp.abs(geno).max()) > 0.3  # sigma 2: the box binds
        pheno = bound_transform(geno, -0.3, 0.3) if handling == "transform" else jnp.clip(geno, -0.3, 0.3)
        loss, _ = problem(pheno)
        es, _ = s.es.tell(k_tell, geno if handling == "transform" else pheno, loss, es, p)
    np.testing.assert_allclose(np.asarray(state.es_state.mean), np.asarray(es.mean), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(state.best_dev_z)).max() <= 0.3 + 1e-6  # what is scored is inside the box
    assert float(jnp.abs(state.es_state.mean).max()) > 0.3 or handling == "clip"  # the genotype is free


@pytest.mark.parametrize("candidate", ["at-eval", "window-best", "mean"])
def test_dev_candidate(candidate):
    """at-eval (bbt.py serial): the member evaluated at the call where calls % eval_every == 0, i.e. the
    last member of the interval's last generation; window-best: the interval's lowest training loss;
    mean: the strategy's mean after the interval's last tell."""
    problem = as_problem(*toy_problem())
    s = make_search(budget=8 * 2, eval_every=16, dev_candidate=candidate)
    state0 = s.init(jax.random.PRNGKey(6))
    state, _ = s.interval(problem, problem, s.es_params(), state0)  # one interval: 2 generations, then dev
    st, p, members = state0, s.es_params(), []
    with jax.numpy_rank_promotion("allow"):
        key = st.key
        es = st.es_state
        for _ in range(2):
            key, k_ask, k_tell = jax.random.split(key, 3)
            z, es = s.es.ask(k_ask, es, p)
            loss, _ = problem(z)
            es, _ = s.es.tell(k_tell, z, loss, es, p)
            members.append((np.asarray(z), np.asarray(loss)))
    if candidate == "at-eval":
        expected = members[-1][0][-1]
    elif candidate == "mean":
        expected = np.asarray(es.mean)
    else:
        z_all = np.concatenate([m[0] for m in members]); l_all = np.concatenate([m[1] for m in members])
        expected = z_all[np.argmin(l_all)]
    np.testing.assert_allclose(np.asarray(state.best_dev_z), expected, rtol=1e-5, atol=1e-6)


@struct.dataclass
class DevState:
    """The fields select_on_dev reads and writes, alone."""

    best_dev_perf: jax.Array
    best_dev_loss: jax.Array
    best_dev_z: jax.Array
    best_dev_generation: jax.Array
    generation: jax.Array
    dev_window: object = None


@pytest.mark.parametrize("by, tiebreak, kept", [
    ("metric", False, [0, 1, 1, 1]),  # higher dev metric only: the tie at 0.75 keeps candidate 1
    ("metric", True, [0, 1, 2, 2]),  # the tie goes to the lower dev loss (candidate 2)
    ("loss", False, [0, 0, 2, 3]),  # lower dev loss, whatever the metric (candidate 3: 0.5 acc, loss 0.2)
])
def test_select_on_dev_by_metric_or_loss_hand_computed(by, tiebreak, kept):
    from bbt_jax.search import select_on_dev

    state = DevState(jnp.float32(-jnp.inf), jnp.float32(jnp.inf), jnp.float32(-1), jnp.int32(-1), jnp.int32(0))
    # (dev acc, dev loss) of candidates 0..3, evaluated in order
    for i, (acc, loss) in enumerate([(0.5, 0.6), (0.75, 0.7), (0.75, 0.4), (0.5, 0.2)]):
        metrics = {"perf": jnp.float32(acc), "acc": jnp.float32(acc)}
        state, _ = select_on_dev(state, jnp.float32(i), jnp.float32(loss), metrics, tiebreak_loss=tiebreak, by=by)
        assert int(state.best_dev_z) == kept[i], (i, by, tiebreak)
    assert float(state.best_dev_perf) == [0.5, 0.75, 0.75, 0.5][kept[-1]]


def smoothed_choice(evals, w, tiebreak=True):
    """Slow reference of --dev-smooth: `evals` (metric, loss, valid) in order; an evaluation is judged by the
    mean metric/loss of the last `w` valid evaluations up to it (itself included); returns the index kept."""
    window, kept, best = [], -1, (-np.inf, np.inf)
    for i, (perf, loss, valid) in enumerate(evals):
        if not (valid and np.isfinite(loss)):
            continue
        window = ([(perf, loss)] + window)[:w]
        m, lo = np.mean([p for p, _ in window]), np.mean([x for _, x in window])
        if m > best[0] or (tiebreak and m == best[0] and lo < best[1]):
            kept, best = i, (m, lo)
    return kept


def test_dev_smooth_hand_computed():
    """W = 2: acc 0.9 alone (after 0.5) averages 0.7; 0.75 after 0.9 averages 0.825 and wins, though its own
    score is lower; the invalid evaluation (3) neither enters the window nor is kept; W = 1 keeps 0.9; W = 3
    keeps the last (0.6 after 0.75 and 0.9: 0.75 on average, the window's lag)."""
    from bbt_jax.search import dev_window, select_on_dev

    evals = [(0.5, 0.7, True), (0.9, 0.3, True), (0.75, 0.5, True), (1.0, 0.1, False), (0.6, 0.6, True)]
    for w, expected in [(1, 1), (2, 2), (3, 4)]:
        state = DevState(jnp.float32(-jnp.inf), jnp.float32(jnp.inf), jnp.float32(-1), jnp.int32(-1), jnp.int32(0),
                  dev_window(w))
        for i, (acc, loss, valid) in enumerate(evals):
            metrics = {"perf": jnp.float32(acc), "acc": jnp.float32(acc)}
            state, rec = select_on_dev(state, jnp.float32(i), jnp.float32(loss), metrics, tiebreak_loss=True,
                                       valid=jnp.bool_(valid))
        assert int(state.best_dev_z) == expected == smoothed_choice(evals, w), w
        assert float(state.best_dev_perf) == pytest.approx(evals[expected][0])  # the kept candidate's own score
    assert float(rec["smoothed_perf"]) == pytest.approx((0.6 + 0.75 + 0.9) / 3)


@pytest.mark.parametrize("w", [2, 3])
def test_dev_smooth_search_keeps_what_the_slow_reference_keeps(w):
    """A search with a dev evaluation every generation: the kept generation is the reference's choice over
    the curve's dev records (z = 0 scored first), and nothing recompiles."""
    p = as_problem(*toy_problem(3))
    s = make_search(budget=8 * 12, eval_every=8, dev_smooth=w, dev_tiebreak_loss=True)
    state, z0 = s.dev_init(p, s.init(jax.random.PRNGKey(4)))
    state, hist = s.run(p, p, state)
    evals = [(float(z0["dev_perf"]), float(z0["dev_loss"]), True)]
    evals += [(h["dev"]["dev_perf"], h["dev"]["dev_loss"], True) for h in hist]
    kept = smoothed_choice(evals, w)
    gens = [0] + [h["generation"] for h in hist]
    assert int(state.best_dev_generation) == gens[kept]
    assert kept != smoothed_choice(evals, 1)  # on this problem the window changes the choice
    assert all("smoothed_perf" in h["dev"] for h in hist)
    assert s.interval._cache_size() == 1


def start_margin_choice(evals, margin, tiebreak=True):
    """Slow reference of --start-margin: `evals` (metric, loss) in order, z = 0's first; while z = 0 is kept a
    candidate must beat its metric by more than `margin` (a tie never leaves it), after that the usual rule."""
    kept, best = 0, evals[0]
    for i, (perf, loss) in enumerate(evals[1:], start=1):
        if kept == 0:
            take = perf > best[0] + margin
        else:
            take = perf > best[0] or (tiebreak and perf == best[0] and loss < best[1])
        if take:
            kept, best = i, (perf, loss)
    return kept


def test_start_margin_hand_computed():
    """z = 0 at 0.75 (loss 0.5): a tie with a lower loss (0.75, 0.3) leaves it without the margin, never with
    it; 0.78125 (one row of 32 more) leaves it at margin 0 but not at 1/32 (it must be MORE than the margin);
    0.875 leaves it at 1/32; once left, a tie on a lower loss moves on as usual."""
    from bbt_jax.search import select_on_dev

    evals = [(0.75, 0.5), (0.75, 0.3), (0.78125, 0.6), (0.875, 0.7), (0.875, 0.2)]
    for margin, kept in [(-1.0, [0, 1, 2, 3, 4]), (0.0, [0, 0, 2, 3, 4]), (1 / 32, [0, 0, 0, 3, 4]),
                         (0.2, [0, 0, 0, 0, 0])]:
        state = DevState(jnp.float32(-jnp.inf), jnp.float32(jnp.inf), jnp.float32(-1), jnp.int32(-1), jnp.int32(0))
        for i, (acc, loss) in enumerate(evals):
            metrics = {"perf": jnp.float32(acc), "acc": jnp.float32(acc)}
            state, _ = select_on_dev(state, jnp.float32(i), jnp.float32(loss), metrics, tiebreak_loss=True,
                                     start_margin=margin)
            state = state.replace(generation=state.generation + 1)  # z = 0 at generation 0, candidates after
            assert int(state.best_dev_z) == kept[i], (margin, i)
        if margin >= 0:
            assert kept[-1] == start_margin_choice(evals, margin)


def runs_with_margins(make, problem, margins, dev_rows):
    """(kept generation without the margin, [(margin, kept generation, reference's, closed form's)]) for the
    runs `make(**extra)` builds on `problem` (`dev_rows` dev rows), dev every generation; the dev records must
    not change. The closed form is experiments/start_margin.py's own `kept`, on the free run's record."""
    from experiments.start_margin import kept

    def run(**extra):
        s = make(**extra)
        state, z0 = s.dev_init(problem, s.init(jax.random.PRNGKey(4)))
        state, hist = s.run(problem, problem, state)
        evals = [(float(z0["dev_perf"]), float(z0["dev_loss"]))] + [
            (h["dev"]["dev_perf"], h["dev"]["dev_loss"]) for h in hist if "dev" in h]
        return state, evals, [0] + [h["generation"] for h in hist if "dev" in h]

    free, evals, gens = run()
    out = []
    for margin in margins:
        state, evals_m, gens_m = run(start_margin=margin)
        assert evals_m == evals and gens_m == gens  # the margin changes the selection, never the search
        record = {"dev": {"best_generation": int(free.best_dev_generation), "best_perf": float(free.best_dev_perf)},
                  "dev_z0": {"perf": evals[0][0]}, "rows": {"dev": {"used": dev_rows}}}
        closed = int(free.best_dev_generation) if kept(record, margin * dev_rows) else 0
        out.append((margin, int(state.best_dev_generation), gens[start_margin_choice(evals, margin)], closed))
    return int(free.best_dev_generation), out


def test_start_margin_search_keeps_what_the_reference_and_the_closed_form_keep():
    """With --start-margin the kept generation is the slow reference's over the run's own dev records, and the
    closed form experiments/start_margin.py applies to finished runs (the run's choice without the margin if
    its metric beats z = 0's by more than the margin, else z = 0); on this problem some margin changes it."""
    p = as_problem(*toy_problem(1))  # 24 dev rows right: z = 0 11, the best candidates 16 (two, a tie)
    free, out = runs_with_margins(
        lambda **extra: make_search(budget=8 * 12, eval_every=8, dev_init=True, dev_tiebreak_loss=True, **extra),
        p, (0.0, 3.5 / 24, 5.5 / 24), dev_rows=B)
    for margin, kept, reference, closed in out:
        assert kept == reference == closed, margin
    assert any(kept != free for _, kept, _, _ in out)


def test_start_margin_settings_are_checked():
    from bbt_jax.errors import UserError

    with pytest.raises(UserError, match="--start-margin 0.0: needs --dev-init"):
        SearchConfig(start_margin=0.0)
    with pytest.raises(UserError, match="--start-margin 0.03"):
        SearchConfig(start_margin=0.03, dev_init=True, select_by="loss")
    SearchConfig(start_margin=0.03, dev_init=True)  # fine


def test_cv_folds_swap_train_and_dev_halfway_and_restart_at_zero():
    """--cv-folds 2: the first half searches on train and scores on dev, exactly as without it; the strategy
    then restarts at z = 0 with its step size, and the next generation's losses are the dev rows' (checked
    against the strategy asked by hand) while its candidate is scored on the train rows."""
    from bbt_jax.search import fold
    from bbt_jax.strategy import with_restart

    frozen, proj, train_data = toy_problem(0)
    dev_data = toy_problem(5)[2]  # other rows, the same projection
    train, dev = as_problem(frozen, proj, train_data), as_problem(frozen, proj, dev_data)
    cfg = SearchConfig(popsize=8, budget=8 * 6, eval_every=8, sigma=1.0, cv_folds=2)
    assert cfg.cv_switch == 3
    plain = search_for(cfg)
    strategy = make_strategy(cfg.strategy, popsize=8, num_dims=K, sigma=1.0)
    s = Search(with_restart(strategy, switch=3), config=cfg, swap_at=3)
    state0 = s.init(jax.random.PRNGKey(2))
    _, ref_hist = plain.run(train, dev, plain.init(jax.random.PRNGKey(2)))
    state, hist = s.run(train, dev, state0)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "step_size"} for r in rows]  # noqa: E731
    assert drop(hist[:3]) == drop(ref_hist[:3])  # (step_size: the row of generation 3 shows the restart's)
    assert hist[3]["best_loss"] != ref_hist[3]["best_loss"]
    # by hand: three intervals, then the restarted strategy asked once
    st, params = state0, s.es_params()
    for g in range(3):
        st, _ = s.interval(*fold(s, train, dev, g), params, st)
    np.testing.assert_array_equal(np.asarray(st.es_state.mean), 0.0)
    assert float(st.es_state.std) == 1.0
    _, k_ask, _ = jax.random.split(st.key, 3)
    with jax.numpy_rank_promotion("allow"):
        z_PxK, _ = s.es.ask(k_ask, st.es_state, params)
    loss_P, _ = dev(z_PxK)
    assert hist[3]["best_loss"] == pytest.approx(float(jnp.min(loss_P)), rel=1e-6)
    _, held_out = train.fitness.member(train.projection(z_PxK[int(jnp.argmin(loss_P))]))
    assert hist[3]["dev"]["dev_perf"] == pytest.approx(float(held_out["perf"]))
    assert fold(s, train, dev, 3) == (dev, train) and fold(s, train, dev, 2) == (train, dev)


def test_cv_folds_settings_are_checked():
    from bbt_jax.errors import UserError

    with pytest.raises(UserError, match="--cv-folds 3"):
        SearchConfig(cv_folds=3)
    with pytest.raises(UserError, match="not with --method bbtv2"):
        SearchConfig(cv_folds=2, method="bbtv2")
    with pytest.raises(UserError, match="fewer than two dev intervals"):
        SearchConfig(cv_folds=2, popsize=10, budget=40, eval_every=40)
    assert SearchConfig(popsize=10, budget=100, eval_every=20, cv_folds=2).cv_switch == 4  # 5 // 2 rounded to 2s
