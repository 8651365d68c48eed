"""knot.ot: exact solvers against POT's LP, Sinkhorn behaviour, gradients, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot as pot
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import wasserstein_distance

from knot.geometry import LabelGeometry
from knot.ot import (
    GroundCost,
    SinkhornConvergenceWarning,
    as_ground_cost,
    exact_cost,
    lp_cost,
    ot_cost,
    resolve_method,
    sinkhorn_cost,
    sinkhorn_plan,
    wasserstein_1d,
)

PROPS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _random_geometry(k: int, dim: int, seed: int, p: int = 1) -> LabelGeometry:
    gen = torch.Generator().manual_seed(seed)
    return LabelGeometry([f"c{i}" for i in range(k)], torch.randn(k, dim, generator=gen, dtype=torch.float64), p=p)


GEOMETRIES = {
    "sentiment5": LabelGeometry.preset("sentiment5"),
    "sentiment5-p2": LabelGeometry.preset("sentiment5", p=2),
    "sentiment5-knot6d": LabelGeometry.preset("sentiment5-knot6d"),
    "emotion5": LabelGeometry.preset("emotion5"),
    "emotion5-p2": LabelGeometry.preset("emotion5", p=2),
    "uniform4": LabelGeometry.preset("uniform", labels=list("abcd")),
    "random6-3d": _random_geometry(6, 3, seed=3),
    "random3-p2": _random_geometry(3, 2, seed=4, p=2),
}
LARGE = _random_geometry(28, 2, seed=5)  # too many dual vertices: LP


def _emd2(p: torch.Tensor, q: torch.Tensor, cost: torch.Tensor) -> np.ndarray:
    """Reference exact costs from POT's network simplex, one pair at a time."""
    k = p.shape[-1]
    a = p.detach().double().reshape(-1, k).numpy()
    b = q.detach().double().reshape(-1, k).numpy()
    m = cost.double().numpy()
    out = [pot.emd2(x / x.sum(), y / y.sum(), m) for x, y in zip(a, b)]
    return np.array(out).reshape(p.shape[:-1])


def simplex(k: int, n: int):
    """Batches of n histograms over k labels, with exact zeros and near-one-hot rows."""
    weight = st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(0.5, 50.0))
    row = st.lists(weight, min_size=k, max_size=k).filter(lambda r: sum(r) > 1e-3)
    return st.lists(row, min_size=n, max_size=n).map(
        lambda rows: torch.tensor(rows, dtype=torch.float64) / torch.tensor(rows, dtype=torch.float64).sum(-1, keepdim=True)
    )


def pairs(k: int, n: int = 3):
    return st.tuples(simplex(k, n), simplex(k, n))


# ---------------------------------------------------------------------------
# exactness against the LP
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@PROPS
@given(data=st.data())
def test_exact_methods_match_pot_emd2(name, data):
    g = GEOMETRIES[name]
    p, q = data.draw(pairs(g.num_labels))
    expected = _emd2(p, q, g.cost)
    for method in ("auto", "exact", "lp"):
        got = ot_cost(p, q, g, method=method)
        assert got.dtype == torch.float64 and got.shape == (3,)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6, err_msg=method)


@PROPS
@given(data=st.data())
def test_lp_matches_pot_for_28_labels(data):
    p, q = data.draw(pairs(28, n=4))
    assert resolve_method(LARGE) == "lp"
    np.testing.assert_allclose(ot_cost(p, q, LARGE).numpy(), _emd2(p, q, LARGE.cost), rtol=0, atol=1e-6)


@pytest.mark.parametrize("power", [1, 2])
@PROPS
@given(data=st.data(), positions=st.lists(st.floats(-5, 5), min_size=4, max_size=4, unique=True))
def test_wasserstein_1d_matches_lp_for_unsorted_positions(power, data, positions):
    x = torch.tensor(positions, dtype=torch.float64)
    if (x[:, None] - x[None]).abs().add(torch.eye(4, dtype=torch.float64)).min() < 1e-3:
        return  # nearly coincident labels
    p, q = data.draw(pairs(4))
    cost = (x[:, None] - x[None]).abs() ** power
    np.testing.assert_allclose(wasserstein_1d(p, q, x, power=power).numpy(), _emd2(p, q, cost), atol=1e-6)


@PROPS
@given(data=st.data())
def test_wasserstein_1d_matches_scipy(data):
    x = np.array([-2.0, -0.5, 0.0, 1.5, 4.0])
    p, q = data.draw(pairs(5, n=1))
    expected = wasserstein_distance(x, x, p[0].numpy(), q[0].numpy())
    assert wasserstein_1d(p, q, x)[0].item() == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------
# properties of the exact cost
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sentiment5-p2", "emotion5", "emotion5-p2", "random6-3d"])
@PROPS
@given(data=st.data())
def test_exact_cost_is_zero_on_the_diagonal_and_symmetric(name, data):
    g = GEOMETRIES[name]
    p, q = data.draw(pairs(g.num_labels))
    assert ot_cost(p, p, g).abs().max().item() < 1e-12
    torch.testing.assert_close(ot_cost(p, q, g), ot_cost(q, p, g), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["sentiment5", "sentiment5-knot6d", "emotion5", "random6-3d"])
@PROPS
@given(data=st.data())
def test_exact_cost_satisfies_the_triangle_inequality(name, data):
    g = GEOMETRIES[name]
    k = g.num_labels
    p, q, r = (data.draw(simplex(k, 3)) for _ in range(3))
    assert (ot_cost(p, r, g) <= ot_cost(p, q, g) + ot_cost(q, r, g) + 1e-12).all()


@PROPS
@given(data=st.data(), scale=st.floats(0.1, 10.0))
def test_uniform_cost_gives_total_variation_times_the_cost(data, scale):
    p, q = data.draw(pairs(6))
    tv = 0.5 * (p - q).abs().sum(-1)
    cost = scale * (1 - torch.eye(6, dtype=torch.float64))
    for method in ("auto", "lp"):
        torch.testing.assert_close(ot_cost(p, q, cost, method=method), scale * tv, rtol=0, atol=1e-9)
    g = LabelGeometry.preset("uniform", labels=list("abcdef"))
    torch.testing.assert_close(ot_cost(p, q, g), tv, rtol=0, atol=1e-12)


def test_hand_computed_costs():
    g = LabelGeometry.preset("sentiment5")
    one_star, five_star = torch.eye(5, dtype=torch.float64)[0], torch.eye(5, dtype=torch.float64)[4]
    assert ot_cost(one_star, five_star, g).item() == 4.0
    mid = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    spread = torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5], dtype=torch.float64)
    assert ot_cost(mid, spread, g).item() == 2.0  # everything moves 2 steps
    assert ot_cost(mid, spread, LabelGeometry.preset("sentiment5", p=2)).item() == 4.0


def test_dual_vertex_counts():
    # five points on a line: 2^(K-1) Lipschitz vertices; generic costs: C(2K-2, K-1)
    assert GEOMETRIES["sentiment5"].ground_cost.num_vertices() == 16
    assert GEOMETRIES["emotion5"].ground_cost.num_vertices() == math.comb(8, 4)
    assert GEOMETRIES["emotion5-p2"].ground_cost.is_metric is False
    assert GEOMETRIES["emotion5-p2"].ground_cost.num_vertices() == math.comb(8, 4)
    assert resolve_method(GEOMETRIES["emotion5"]) == "exact"
    assert resolve_method(GEOMETRIES["sentiment5"]) == "1d"
    assert resolve_method(GEOMETRIES["sentiment5"], "exact") == "exact"


# ---------------------------------------------------------------------------
# batching, dtypes, caching
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "exact", "lp", "sinkhorn"])
def test_leading_dimensions_broadcast(method):
    g = GEOMETRIES["emotion5"]
    gen = torch.Generator().manual_seed(0)
    s = torch.softmax(torch.randn(4, 1, 5, generator=gen), -1)  # (B, 1, K)
    t = torch.softmax(torch.randn(4, 3, 5, generator=gen), -1)  # (B, T, K)
    kw = {"rel_eps": 0.05} if method == "sinkhorn" else {}
    batched = ot_cost(s, t, g, method=method, **kw)
    assert batched.shape == (4, 3) and batched.dtype == torch.float32
    loop = torch.stack([torch.stack([ot_cost(s[b, 0], t[b, j], g, method=method, **kw) for j in range(3)]) for b in range(4)])
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sentiment5", "emotion5"])
def test_float32_agrees_with_float64(name):
    g = GEOMETRIES[name]
    gen = torch.Generator().manual_seed(1)
    p = torch.softmax(3 * torch.randn(64, 5, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(3 * torch.randn(64, 5, generator=gen, dtype=torch.float64), -1)
    c32 = ot_cost(p.float(), q.float(), g)
    assert c32.dtype == torch.float32
    torch.testing.assert_close(c32.double(), ot_cost(p, q, g), rtol=0, atol=1e-5)


def test_raw_cost_matrices_are_cached_by_content():
    c = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    assert as_ground_cost(c) is as_ground_cost(c.clone().double())
    g = GEOMETRIES["emotion5"]
    assert as_ground_cost(g) is g.ground_cost
    m = g.ground_cost.matrix(torch.float32, "cpu")
    assert m is g.ground_cost.matrix(torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("name", ["emotion5", "emotion5-p2"])
def test_lp_gradients_are_feasible_optimal_duals_even_on_empty_labels(name):
    g = GEOMETRIES[name]
    m = g.cost
    p = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0], [0.5, 0.0, 0.5, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[0.2, 0.0, 0.0, 0.0, 0.8], [0.0, 0.0, 0.5, 0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    cost = lp_cost(p, q, g)
    u, v = torch.autograd.grad(cost.sum(), (p, q))
    for b in range(2):
        assert (u[b][:, None] + v[b][None, :] <= m + 1e-12).all()  # dual feasible everywhere
        assert (u[b] @ p[b] + v[b] @ q[b]).item() == pytest.approx(cost[b].item(), abs=1e-12)  # and optimal


def test_lp_threads_do_not_change_results():
    gen = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(300, 28, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(3 * torch.randn(300, 28, generator=gen, dtype=torch.float64), -1)
    torch.testing.assert_close(lp_cost(p, q, LARGE, threads=1), lp_cost(p, q, LARGE, threads=2), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["auto", "exact", "lp", "sinkhorn"])
def test_cuda_matches_cpu(method):  # pragma: no cover - runs where a GPU exists
    g = GEOMETRIES["emotion5"] if method != "auto" else GEOMETRIES["sentiment5"]
    gen = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(32, 5, generator=gen), -1)
    q = torch.softmax(torch.randn(32, 5, generator=gen), -1)
    logits = torch.log(p).cuda().requires_grad_()
    out = ot_cost(torch.softmax(logits, -1), q.cuda(), g, method=method)
    assert out.device.type == "cuda"
    out.sum().backward()
    assert logits.grad.device.type == "cuda" and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(out.cpu(), ot_cost(p, q, g, method=method), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------


def _generic_pair(k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, k, generator=gen, dtype=torch.float64)
    q = torch.softmax(2 * torch.randn(3, k, generator=gen, dtype=torch.float64), -1)
    return logits, q


@pytest.mark.parametrize(
    "name, method",
    [
        ("sentiment5", "1d"),
        ("sentiment5-p2", "1d"),
        ("sentiment5", "exact"),
        ("emotion5", "exact"),
        ("emotion5-p2", "exact"),
        ("sentiment5-knot6d", "lp"),
    ],
)
def test_gradcheck_through_softmax(name, method):
    g = GEOMETRIES[name]
    logits, q = _generic_pair(g.num_labels, seed=7)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: ot_cost(torch.softmax(z, -1), q, g, method=method), (logits,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("name, method", [("sentiment5", "1d"), ("sentiment5-p2", "1d"), ("emotion5", "exact"), ("emotion5-p2", "exact")])
def test_gradcheck_raw_histograms(name, method):
    # the closed forms extend off the simplex, so plain gradcheck applies
    g = GEOMETRIES[name]
    logits, q = _generic_pair(g.num_labels, seed=8)
    p = torch.softmax(logits, -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ot_cost(x, q, g, method=method), (p,), eps=1e-7, atol=1e-6)


def test_exact_solvers_give_the_same_gradient():
    g = GEOMETRIES["sentiment5"]
    logits, q = _generic_pair(5, seed=9)
    grads = []
    for method in ("1d", "exact", "lp"):
        z = logits.clone().requires_grad_()
        ot_cost(torch.softmax(z, -1), q, g, method=method).sum().backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=1e-10)


def test_vertex_gradient_is_zero_where_p_equals_q():
    g = GEOMETRIES["emotion5"]
    p = torch.softmax(torch.randn(4, 5, dtype=torch.float64), -1).requires_grad_()
    out = ot_cost(p, p.detach(), g, method="exact")
    out.sum().backward()
    assert out.abs().max().item() < 1e-15 and p.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("name", ["emotion5", "emotion5-p2"])  # metric (|f . (p - q)|) and (F, G) pairs
def test_vertex_solver_chunks_large_batches(monkeypatch, name):
    import knot.ot as kot

    g = GEOMETRIES[name]
    logits, q = _generic_pair(5, seed=16)
    q = q.repeat(20, 1)
    logits = logits.repeat(20, 1)

    def run():
        z = logits.clone().requires_grad_()
        out = ot_cost(torch.softmax(z, -1), q, g, method="exact")
        out.sum().backward()
        return out.detach(), z.grad

    whole = run()
    monkeypatch.setattr(kot, "_SCORE_BUDGET", 100)  # a few rows per chunk, duals computed in forward
    chunked = run()
    torch.testing.assert_close(whole[0], chunked[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(whole[1], chunked[1], rtol=0, atol=1e-14)


def test_sinkhorn_gradient_is_the_entropic_envelope():
    g = GEOMETRIES["emotion5"]
    logits, q = _generic_pair(5, seed=10)
    logits.requires_grad_()
    kw = dict(rel_eps=0.1, tol=1e-12, max_iter=5000, entropic=True)
    assert torch.autograd.gradcheck(
        lambda z: sinkhorn_cost(torch.softmax(z, -1), q, g, **kw), (logits,), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("method", ["1d", "exact", "lp", "sinkhorn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_with_zeros(method, dtype):
    g = GEOMETRIES["sentiment5"]
    p = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0, 0.8], [1.0, 0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    q = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0], [0.2, 0.0, 0.0, 0.0, 0.8], [0.0, 0.5, 0.5, 0.0, 0.0]], dtype=dtype)
    p.requires_grad_()
    kw = {"rel_eps": 1e-3, "warn": False} if method == "sinkhorn" else {}
    out = ot_cost(p, q, g, method=method, **kw)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(p.grad).all()


# ---------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------


def test_sinkhorn_approaches_the_exact_cost_as_eps_shrinks():
    g = GEOMETRIES["emotion5"]
    gen = torch.Generator().manual_seed(11)
    p = torch.softmax(torch.randn(16, 5, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(16, 5, generator=gen, dtype=torch.float64), -1)
    exact = torch.from_numpy(_emd2(p, q, g.cost))
    errors = [
        (sinkhorn_cost(p, q, g, rel_eps=e, max_iter=20000, tol=1e-9) - exact).abs().max().item()
        for e in (0.3, 0.1, 0.03, 0.01)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-2 * exact.max().item()


def test_sinkhorn_within_five_percent_at_default_budget_on_peaked_teachers():
    gen = torch.Generator().manual_seed(12)
    for g in (GEOMETRIES["sentiment5"], GEOMETRIES["emotion5"], LARGE):
        k = g.num_labels
        p = torch.softmax(torch.randn(32, k, generator=gen), -1)
        q = torch.softmax(4 * torch.randn(32, k, generator=gen), -1)
        q[:8, :2] = 0
        q = q / q.sum(-1, keepdim=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SinkhornConvergenceWarning)
            approx = sinkhorn_cost(p, q, g, rel_eps=1e-2).double()
        exact = torch.from_numpy(_emd2(p, q, g.cost))
        assert ((approx - exact).abs() / exact).max().item() < 0.05


def test_sinkhorn_plan_has_the_right_marginals():
    g = GEOMETRIES["random6-3d"]
    gen = torch.Generator().manual_seed(13)
    p = torch.softmax(torch.randn(8, 6, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(8, 6, generator=gen, dtype=torch.float64), -1)
    res = sinkhorn_plan(p, q, g, rel_eps=0.05, tol=1e-10, max_iter=10000)
    assert res.converged and res.marginal_error <= 1e-10
    torch.testing.assert_close(res.plan.sum(-1), p, rtol=0, atol=1e-9)
    torch.testing.assert_close(res.plan.sum(-2), q, rtol=0, atol=1e-9)
    assert (res.cost >= torch.from_numpy(_emd2(p, q, g.cost)) - 1e-9).all()  # a feasible plan costs more


def test_sinkhorn_warns_when_max_iter_is_too_small():
    g = GEOMETRIES["emotion5"]
    p = torch.tensor([0.97, 0.01, 0.01, 0.0, 0.01])
    q = torch.tensor([0.0, 0.01, 0.01, 0.97, 0.01])
    with pytest.warns(SinkhornConvergenceWarning, match="did not converge"):
        res = sinkhorn_plan(p, q, g, rel_eps=1e-3, max_iter=20, tol=1e-9)
    assert not res.converged and res.n_iter == 20


@pytest.mark.parametrize("rel_eps", [1e-3, 1e-2])
@pytest.mark.parametrize("max_iter", [15, 300])
def test_sinkhorn_never_returns_nan_in_float32(rel_eps, max_iter):
    g = LARGE
    gen = torch.Generator().manual_seed(14)
    logits = (6 * torch.randn(32, 28, generator=gen)).requires_grad_()
    q = torch.softmax(8 * torch.randn(32, 28, generator=gen), -1)
    q[:, :10] = 0
    q = q / q.sum(-1, keepdim=True)
    q[0] = torch.eye(28)[27]  # one-hot teacher
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        out, res = sinkhorn_cost(torch.softmax(logits, -1), q, g, rel_eps=rel_eps, max_iter=max_iter, return_result=True)
        div = sinkhorn_cost(torch.softmax(logits, -1), q, g, rel_eps=rel_eps, max_iter=max_iter, debias=True)
    (out.sum() + div.sum()).backward()
    for x in (out, div, res.plan, res.f, res.g, logits.grad):
        assert torch.isfinite(x).all()


def test_debiased_divergence_is_zero_on_the_diagonal():
    g = GEOMETRIES["emotion5"]
    gen = torch.Generator().manual_seed(15)
    p = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), -1)
    kw = dict(rel_eps=0.05, tol=1e-10, max_iter=2000)
    with warnings.catch_warnings():
        # the (p, p) cross term converges slowly with alternating updates (near-diagonal plan)
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        assert sinkhorn_cost(p, p, g, debias=True, **kw).abs().max().item() < 1e-5
    assert (sinkhorn_cost(p, q, g, debias=True, **kw) > 0).all()
    # its gradient is the envelope one: f_pq - a_p
    z = torch.log(p).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: sinkhorn_cost(torch.softmax(x, -1), q, g, debias=True, **kw), (z,), eps=1e-6, atol=1e-5
    )


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_input_raises_value_errors():
    g = GEOMETRIES["sentiment5"]
    p5 = torch.full((2, 5), 0.2)
    with pytest.raises(ValueError, match=r"q: expected shape \(\.\.\., 5\) for a 5x5 cost, got \(2, 4\)"):
        ot_cost(p5, torch.full((2, 4), 0.25), g)
    with pytest.raises(ValueError, match="leading dimensions do not broadcast"):
        ot_cost(p5, torch.full((3, 5), 0.2), g)
    with pytest.raises(ValueError, match="method: expected one of"):
        ot_cost(p5, p5, g, method="emd")
    with pytest.raises(ValueError, match="needs 1-D label positions"):
        ot_cost(p5, p5, GEOMETRIES["emotion5"], method="1d")
    with pytest.raises(ValueError, match="method '1d' takes no options"):
        ot_cost(p5, p5, g, method="1d", eps=0.1)
    bad = p5.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="p: row 1 contains NaN or inf"):
        ot_cost(bad, p5, g, validate=True)
    neg = torch.tensor([[0.5, 0.6, -0.1, 0.0, 0.0]])
    with pytest.raises(ValueError, match="q: row 0 has negative entries"):
        ot_cost(p5[:1], neg, g, validate=True)
    with pytest.raises(ValueError, match="p: histograms must be finite"):
        lp_cost(bad, p5, g)
    with pytest.raises(ValueError, match="eps: expected a positive number"):
        sinkhorn_cost(p5, p5, g, eps=0.0)
    with pytest.raises(ValueError, match="ground cost: entries must be finite and non-negative"):
        GroundCost([[0.0, -1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="square"):
        exact_cost(p5, p5, torch.zeros(5, 4))
