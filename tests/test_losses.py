"""knot.losses: reductions, invariances, convexity, validation, golden values.

Golden values live in tests/fixtures/losses_golden.json together with their inputs; they are
rewritten only when ``KNOT_REGEN_GOLDEN=1`` is set (and then checked against POT's LP)::

    KNOT_REGEN_GOLDEN=1 pytest tests/test_losses.py -k golden
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import ot as pot
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knot.geometry import LabelGeometry
from knot.losses import (
    _REGISTRY,
    available_losses,
    distillation_loss,
    lambda_schedule,
    loss_options,
    ot_ce_loss,
    register_loss,
    sord_targets,
    validate_teacher_probs,
)
from knot.ot import ot_cost

LOSSES = ["ot", "entropy", "kl", "ce"]
FIXTURE = Path(__file__).parent / "fixtures" / "losses_golden.json"
PROPS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GEOMETRIES = {
    "sentiment5": LabelGeometry.preset("sentiment5"),
    "emotion5": LabelGeometry.preset("emotion5"),
    "sentiment5-knot6d": LabelGeometry.preset("sentiment5-knot6d"),
}


def batch(b=6, t=3, k=5, seed=0, dtype=torch.float64, zeros=True):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=gen, dtype=dtype)
    teachers = torch.softmax(3 * torch.randn(b, t, k, generator=gen, dtype=dtype), -1)
    if zeros:
        teachers[0, 0] = torch.eye(k, dtype=dtype)[k - 1]  # one-hot teacher
        teachers[1, :, 0] = 0
        teachers = teachers / teachers.sum(-1, keepdim=True)
    weights = torch.rand(t, generator=gen, dtype=dtype) + 0.1
    return logits, teachers, weights


# ---------------------------------------------------------------------------
# reductions and invariances
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("aggregate", ["per_teacher", "mixture"])
def test_one_hot_weights_reduce_to_the_single_teacher_loss(name, aggregate):
    g = GEOMETRIES["emotion5"]
    logits, teachers, _ = batch()
    for j in range(3):
        w = torch.zeros(3, dtype=torch.float64)
        w[j] = 1.0
        multi = distillation_loss(name, logits, teachers, w, g, aggregate=aggregate)
        single = distillation_loss(name, logits, teachers[:, j : j + 1], [1.0], g, aggregate=aggregate)
        torch.testing.assert_close(multi, single, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("aggregate", ["per_teacher", "mixture"])
@pytest.mark.parametrize("per_example", [False, True])
def test_permuting_teachers_with_their_weights_changes_nothing(name, aggregate, per_example):
    g = GEOMETRIES["sentiment5"]
    logits, teachers, w = batch(t=4)
    if per_example:
        w = torch.rand(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    a = distillation_loss(name, logits, teachers, w, g, aggregate=aggregate)
    b = distillation_loss(name, logits, teachers[:, perm], w[..., perm], g, aggregate=aggregate)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
@PROPS
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 5.0))
def test_mixture_is_never_above_per_teacher(name, seed, scale):
    g = GEOMETRIES["emotion5"]
    logits, teachers, w = batch(seed=seed)
    teachers = torch.softmax(scale * torch.log(teachers.clamp_min(1e-30)), -1)
    per = distillation_loss(name, logits, teachers, w, g, aggregate="per_teacher")
    mix = distillation_loss(name, logits, teachers, w, g, aggregate="mixture")
    assert mix.item() <= per.item() + 1e-10


@pytest.mark.parametrize("name", LOSSES)
def test_weights_are_normalised_per_example(name):
    g = GEOMETRIES["sentiment5"]
    logits, teachers, w = batch()
    base = distillation_loss(name, logits, teachers, w, g)
    torch.testing.assert_close(distillation_loss(name, logits, teachers, 7.5 * w, g), base)
    rows = w.expand(6, 3) * torch.arange(1, 7, dtype=torch.float64)[:, None]  # each row rescaled
    torch.testing.assert_close(distillation_loss(name, logits, teachers, rows, g), base)


def test_per_example_weights_follow_the_formula():
    g = GEOMETRIES["emotion5"]
    logits, teachers, _ = batch()
    w = torch.rand(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = torch.softmax(logits, -1)
    costs = torch.tensor(
        [[pot.emd2(s[b].numpy(), teachers[b, j].numpy(), g.cost.numpy()) for j in range(3)] for b in range(6)],
        dtype=torch.float64,
    )
    expected = ((w / w.sum(1, keepdim=True)) * costs).sum(1).mean()
    torch.testing.assert_close(distillation_loss("ot", logits, teachers, w, g), expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------
# the individual losses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_ot_loss_is_the_weighted_mean_of_exact_costs(geometry):
    g = GEOMETRIES[geometry]
    logits, teachers, w = batch(seed=3)
    s = torch.softmax(logits, -1).numpy()
    cost = g.cost.numpy()
    wn = (w / w.sum()).numpy()
    expected = np.mean(
        [sum(wn[j] * pot.emd2(s[b], teachers[b, j].numpy(), cost) for j in range(3)) for b in range(6)]
    )
    for method in ("auto", "exact", "lp"):
        got = distillation_loss("ot", logits, teachers, w, g, method=method)
        assert got.item() == pytest.approx(expected, abs=1e-9)
    sk = distillation_loss("ot", logits, teachers, w, g, method="sinkhorn", rel_eps=1e-3, max_iter=20000, tol=1e-9)
    assert sk.item() == pytest.approx(expected, rel=0.01)


def test_kl_entropy_and_ce_against_torch():
    g = GEOMETRIES["sentiment5"]
    logits, teachers, _ = batch(t=1, zeros=False)
    t = teachers[:, 0]
    log_s = torch.log_softmax(logits, -1)
    kl_ts = F.kl_div(log_s, t, reduction="batchmean")
    kl_st = F.kl_div(torch.log(t), log_s.exp(), reduction="batchmean")
    ce = -(t * log_s).sum(-1).mean()
    torch.testing.assert_close(distillation_loss("kl", logits, teachers, [1.0], g), kl_ts)
    torch.testing.assert_close(distillation_loss("entropy", logits, teachers, [1.0], g), 0.5 * (kl_ts + kl_st))
    torch.testing.assert_close(distillation_loss("ce", logits, teachers, [1.0], g), ce)


def test_kl_with_temperature_is_hintons_loss():
    g = GEOMETRIES["sentiment5"]
    gen = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randn(8, 5, generator=gen, dtype=torch.float64)
    tau = 3.0
    expected = F.kl_div(torch.log_softmax(zs / tau, -1), torch.softmax(zt / tau, -1), reduction="batchmean") * tau**2
    got = distillation_loss("kl", zs, torch.softmax(zt, -1)[:, None], [1.0], g, temperature=tau)
    torch.testing.assert_close(got, expected)


def test_entropy_stays_finite_when_teachers_give_zero_probability():
    g = GEOMETRIES["sentiment5"]
    logits = torch.zeros(1, 5, requires_grad=True)
    teachers = torch.eye(5)[None, :1]  # one-hot teacher: KL(s || t) would be infinite
    loss = distillation_loss("entropy", logits, teachers, [1.0], g)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("aggregate", ["per_teacher", "mixture"])
def test_gradients_are_finite_in_float32_with_zeros(name, aggregate):
    g = GEOMETRIES["emotion5"]
    logits, teachers, w = batch(dtype=torch.float32)
    logits = (10 * logits).requires_grad_()
    loss = distillation_loss(name, logits, teachers, w, g, aggregate=aggregate)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_the_cost_is_not_rebuilt_per_call():
    g = LabelGeometry.preset("emotion5")
    logits, teachers, w = batch(dtype=torch.float32)
    distillation_loss("ot", logits, teachers, w, g)
    cached = dict(g.ground_cost._cache)
    distillation_loss("ot", logits, teachers, w, g)
    assert g.ground_cost._cache.keys() == cached.keys()
    assert all(g.ground_cost._cache[k] is v for k, v in cached.items())


# ---------------------------------------------------------------------------
# local-teacher OT + CE
# ---------------------------------------------------------------------------


def test_ot_ce_loss_is_ot_to_the_smoothed_label_plus_ce():
    g = GEOMETRIES["sentiment5"]
    logits, _, _ = batch(seed=5)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    smooth = F.one_hot(y, 5).double() * 0.8 + 0.2 / 5
    s = torch.softmax(logits, -1)
    ot_term = np.mean([pot.emd2(s[b].numpy(), smooth[b].numpy(), g.cost.numpy()) for b in range(6)])
    expected = 0.5 * ot_term + F.cross_entropy(logits, y).item()
    got = ot_ce_loss(logits, y, g, smoothing=0.2, ot_weight=0.5)
    assert got.item() == pytest.approx(expected, abs=1e-9)
    torch.testing.assert_close(ot_ce_loss(logits, y, g, ot_weight=0.0), F.cross_entropy(logits, y))


def test_ot_ce_loss_rejects_bad_targets():
    g = GEOMETRIES["sentiment5"]
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 4\]"):
        ot_ce_loss(logits, torch.tensor([0, 5]), g)
    with pytest.raises(ValueError, match="integer class indices"):
        ot_ce_loss(logits, torch.tensor([0.0, 1.0]), g)
    with pytest.raises(ValueError, match="K=4 but the geometry has 5 labels"):
        ot_ce_loss(torch.zeros(2, 4), torch.tensor([0, 1]), g)
    with pytest.raises(ValueError, match="smoothing"):
        ot_ce_loss(logits, torch.tensor([0, 1]), g, smoothing=1.0)


# ---------------------------------------------------------------------------
# registry and bad input
# ---------------------------------------------------------------------------


def test_registry():
    assert set(LOSSES) <= set(available_losses())
    with pytest.raises(ValueError, match="unknown loss 'wasserstein' \\(expected one of: ce, entropy, kl, ot"):
        distillation_loss("wasserstein", torch.zeros(1, 5), torch.full((1, 1, 5), 0.2), [1.0], GEOMETRIES["sentiment5"])

    @register_loss("test-l1")
    def _l1(student_logits, targets, geometry, *, temperature=1.0, scale=1.0):
        return scale * (torch.softmax(student_logits, -1)[:, None] - targets).abs().sum(-1)

    try:
        got = distillation_loss("test-l1", torch.zeros(1, 2), torch.tensor([[[1.0, 0.0]]]), [1.0],
                                LabelGeometry.preset("uniform", labels=["a", "b"]), scale=2.0)
        assert got.item() == pytest.approx(2.0)
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test-l1")(_l1)
    finally:
        _REGISTRY.pop("test-l1")


def test_bad_input_names_what_is_wrong():
    g = GEOMETRIES["sentiment5"]
    logits, teachers, w = batch(dtype=torch.float32)
    names = ["books", "dvd", "kitchen"]
    cases = [
        (dict(student_logits=logits[:, :4], teacher_probs=teachers[..., :4]), "geometry has 5 labels"),
        (dict(teacher_probs=teachers[:, :, :4]), "student_logits has K=5, teacher_probs K=4"),
        (dict(teacher_probs=teachers[:5]), "student_logits has 6 rows, teacher_probs 5"),
        (dict(teacher_probs=teachers[:, 0]), r"teacher_probs: expected a \(B, T, K\) tensor"),
        (dict(student_logits=logits[0]), r"student_logits: expected a \(B, K\) tensor"),
        (dict(weights=w[:2]), r"weights: expected shape \(3,\) or \(6, 3\)"),
        (dict(weights=torch.tensor([1.0, -1.0, 1.0])), "finite non-negative"),
        (dict(weights=torch.zeros(3)), "all teacher weights are zero"),
        (dict(aggregate="mean"), "aggregate: expected one of per_teacher, mixture"),
        (dict(temperature=0.0), "temperature: expected a positive number"),
        (dict(method="fast"), "method: expected one of"),
        (dict(eps=0.1, name="kl"), r"loss 'kl': unknown options \['eps'\]"),
    ]
    base = dict(name="ot", student_logits=logits, teacher_probs=teachers, weights=w, geometry=g)
    for override, match in cases:
        with pytest.raises(ValueError, match=match):
            distillation_loss(**{**base, **override})
    bad = teachers.clone()
    bad[3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="teacher 'dvd' \\(index 1\\): soft label of example 3 contains NaN"):
        distillation_loss("ot", logits, bad, w, g, teacher_names=names)
    neg = teachers.clone()
    neg[2, 2] = torch.tensor([0.5, 0.6, -0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="teacher 'kitchen' \\(index 2\\): soft label of example 2 has negative"):
        distillation_loss("kl", logits, neg, w, g, teacher_names=names)
    off = teachers.clone()
    off[4, 0] *= 1.2
    with pytest.raises(ValueError, match="teacher 0: soft label of example 4 sums to 1.2"):
        validate_teacher_probs(off)


# ---------------------------------------------------------------------------
# golden values
# ---------------------------------------------------------------------------


def _golden_inputs():
    logits, teachers, w = batch(b=4, t=3, seed=42)
    return {
        "logits": logits.tolist(),
        "teachers": teachers.tolist(),
        "weights": w.tolist(),
        "per_example_weights": torch.rand(4, 3, generator=torch.Generator().manual_seed(43), dtype=torch.float64).tolist(),
    }


def _golden_cases():
    for geometry in ("sentiment5", "sentiment5-knot6d", "emotion5"):
        for name in LOSSES:
            for aggregate in ("per_teacher", "mixture"):
                for weights in ("weights", "per_example_weights"):
                    for temperature in (1.0, 2.0):
                        yield geometry, name, aggregate, weights, temperature


def _compute_golden(inputs):
    logits = torch.tensor(inputs["logits"], dtype=torch.float64)
    teachers = torch.tensor(inputs["teachers"], dtype=torch.float64)
    out = {}
    for geometry, name, aggregate, weights, temperature in _golden_cases():
        w = torch.tensor(inputs[weights], dtype=torch.float64)
        value = distillation_loss(name, logits, teachers, w, GEOMETRIES[geometry], aggregate=aggregate,
                                  temperature=temperature)
        out[f"{geometry}/{name}/{aggregate}/{weights}/T={temperature:g}"] = value.item()
    return out


def _independent_ot(inputs, geometry, aggregate, weights, temperature):
    """The OT loss recomputed with POT's emd2 (used when regenerating the fixture)."""
    logits = np.array(inputs["logits"])
    teachers = np.array(inputs["teachers"]) ** (1 / temperature)
    teachers /= teachers.sum(-1, keepdims=True)
    s = np.exp(logits / temperature)
    s /= s.sum(-1, keepdims=True)
    w = np.broadcast_to(np.array(inputs[weights]), teachers.shape[:2])
    w = w / w.sum(1, keepdims=True)
    cost = GEOMETRIES[geometry].cost.numpy()
    if aggregate == "mixture":
        mix = (w[..., None] * teachers).sum(1)
        return np.mean([pot.emd2(s[b], mix[b], cost) for b in range(len(s))])
    return np.mean([sum(w[b, j] * pot.emd2(s[b], teachers[b, j], cost) for j in range(w.shape[1])) for b in range(len(s))])


def test_golden_values():
    if os.environ.get("KNOT_REGEN_GOLDEN") == "1":
        inputs = _golden_inputs()
        values = _compute_golden(inputs)
        for key, value in values.items():
            geometry, name, aggregate, weights, temp = key.split("/")
            if name == "ot":
                ref = _independent_ot(inputs, geometry, aggregate, weights, float(temp[2:]))
                assert value == pytest.approx(ref, abs=1e-9), key
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps({"inputs": inputs, "values": values}, indent=1) + "\n")
    if not FIXTURE.exists():
        pytest.fail(f"{FIXTURE} is missing: regenerate it with KNOT_REGEN_GOLDEN=1")
    stored = json.loads(FIXTURE.read_text())
    got = _compute_golden(stored["inputs"])
    assert got.keys() == stored["values"].keys()
    for key, value in stored["values"].items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("name", ["sentiment5", "sentiment5-knot6d", "emotion5"])
def test_ot_loss_trains_after_a_first_use_under_inference_mode(name):
    # The distillation stage evaluates the initial student under torch.inference_mode before
    # training; the geometry's cached solver data must not become an inference tensor.
    g = LabelGeometry.preset(name)
    teachers = torch.softmax(torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)), -1)
    with torch.inference_mode():
        distillation_loss("ot", torch.zeros(4, 5), teachers, torch.ones(3), g)
    logits = torch.zeros(4, 5, requires_grad=True)
    distillation_loss("ot", logits, teachers, torch.ones(3), g).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# --- reproducibility: the losses do not depend on torch's thread count ---------------------------


def _k28_plane() -> LabelGeometry:
    """28 labels at random points of the plane (GoEmotions-sized): the exact per-pair LP."""
    rng = np.random.default_rng(28)
    return LabelGeometry([f"l{i}" for i in range(28)], rng.normal(size=(28, 2)).tolist())


@pytest.mark.parametrize(
    "geometry, batch",
    [(LabelGeometry.preset("sentiment5"), 1024), (LabelGeometry.preset("emotion5"), 1024), (_k28_plane(), 64)],
    ids=["1d", "exact-2d", "lp-k28"],
)
@pytest.mark.parametrize("name", ["ot", "entropy", "kl"])
def test_loss_and_gradient_are_bitwise_equal_for_one_and_two_threads(geometry, batch, name):
    # Arrange: fixed random logits and peaked teachers, T = 4, per-example weights
    k = geometry.num_labels
    g = torch.Generator().manual_seed(batch + k)
    logits = torch.randn(batch, k, generator=g)
    y = torch.randint(0, k, (batch, 4), generator=g)
    teachers = torch.softmax(2 * torch.randn(batch, 4, k, generator=g) + 3 * F.one_hot(y, k), -1)
    weights = torch.rand(batch, 4, generator=g)

    # Act: the same loss and gradient under 1 and 2 intra-op threads, in this process
    saved, out = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x = logits.clone().requires_grad_(True)
            loss = distillation_loss(name, x, teachers, weights, geometry)
            loss.backward()
            out.append((loss.detach(), x.grad))
    finally:
        torch.set_num_threads(saved)

    # Assert: bit for bit (the thread dependence of a training run is elsewhere: README)
    (l1, g1), (l2, g2) = out
    assert torch.equal(l1, l2) and torch.equal(g1, g2)
# ---------------------------------------------------------------------------
# newer losses (issue 21): ot_kl, sord, uld, sharpened mixture, schedules
# ---------------------------------------------------------------------------

TWO = LabelGeometry.preset("uniform", labels=["a", "b"])


@pytest.mark.parametrize("name, options", [("ot_kl", {"lam": 0.3}), ("sord", {"tau": 0.7}), ("uld", {})])
@pytest.mark.parametrize("geometry", ["sentiment5", "emotion5"])
def test_newer_losses_pass_gradcheck(name, options, geometry):
    logits, teachers, w = batch(b=3, t=2, seed=5, zeros=False)
    logits = logits.clone().requires_grad_()
    g = GEOMETRIES[geometry]
    assert torch.autograd.gradcheck(lambda z: distillation_loss(name, z, teachers, w, g, **options), (logits,))


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("aggregate", ["per_teacher", "mixture"])
def test_ot_kl_interpolates_between_ot_and_kl(geometry, aggregate):
    logits, teachers, w = batch(seed=3)
    g = GEOMETRIES[geometry]

    def loss(name, **kw):
        return distillation_loss(name, logits, teachers, w, g, aggregate=aggregate, temperature=2.0, **kw)

    assert loss("ot_kl", lam=1.0) == pytest.approx(loss("ot").item(), rel=1e-12)
    assert loss("ot_kl", lam=0.0) == pytest.approx(loss("kl").item(), rel=1e-12)
    assert loss("ot_kl", lam=0.25) == pytest.approx(0.25 * loss("ot").item() + 0.75 * loss("kl").item(), rel=1e-12)
    with pytest.raises(ValueError, match="ot_kl: lam: expected a number in \\[0, 1\\]"):
        loss("ot_kl", lam=1.5)


def test_ot_kl_at_a_hand_computed_point():
    # student 50/50, teacher (1, 0): OT under a 0/1 cost = TV = 0.5, KL(t || s) = log 2
    got = distillation_loss("ot_kl", torch.zeros(1, 2), torch.tensor([[[1.0, 0.0]]]), [1.0], TWO, lam=0.25)
    assert got.item() == pytest.approx(0.25 * 0.5 + 0.75 * math.log(2))


def test_uld_is_the_l1_between_sorted_distributions():
    s = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    t = torch.tensor([[[0.1, 0.1, 0.8]]], dtype=torch.float64)
    g = LabelGeometry.preset("uniform", labels=["x", "y", "z"])
    got = distillation_loss("uld", s.log(), t, [1.0], g)
    assert got.item() == pytest.approx(0.3 + 0.2 + 0.1)  # (0.5, 0.3, 0.2) vs (0.8, 0.1, 0.1)
    # = twice the exact OT with a 0/1 cost (total variation) between the sorted vectors
    sorted_ot = ot_cost(s.sort(-1, descending=True).values, t[:, 0].sort(-1, descending=True).values, g)
    assert got.item() == pytest.approx(2 * sorted_ot.item())
    # label order is ignored: permuting the teacher's labels changes nothing
    assert distillation_loss("uld", s.log(), t[..., [2, 0, 1]], [1.0], g).item() == pytest.approx(got.item())


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_sord_targets_sum_to_one_and_peak_at_the_label(geometry):
    cost = GEOMETRIES[geometry].cost
    q = sord_targets(torch.arange(5), cost, tau=0.5)
    assert torch.allclose(q.sum(-1), torch.ones(5, dtype=q.dtype))
    assert q.argmax(-1).tolist() == list(range(5))
    c = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    e = math.exp(-1.0)
    assert sord_targets(torch.tensor([1]), c)[0].tolist() == pytest.approx([e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])
    with pytest.raises(ValueError, match="sord: tau: expected a positive number"):
        sord_targets(torch.tensor([0]), c, tau=0)


def test_sord_is_kl_to_the_consensus_label_target():
    logits, teachers, w = batch(seed=9)
    g = GEOMETRIES["sentiment5"]
    mix = (w / w.sum())[None, :, None].mul(teachers).sum(1)  # (B, K)
    q = sord_targets(mix.argmax(-1), g.cost, tau=2.0)
    expect = distillation_loss("kl", logits, q[:, None, :], [1.0], g)
    got = distillation_loss("sord", logits, teachers, w, g, aggregate="mixture", tau=2.0)
    assert got.item() == pytest.approx(expect.item(), rel=1e-12)


def test_sharpened_mixture_is_the_loss_to_the_sharpened_average():
    teachers = torch.tensor([[[0.6, 0.4], [0.2, 0.8]]], dtype=torch.float64)  # average (0.4, 0.6)
    sharpened = torch.tensor([[[0.16 / 0.52, 0.36 / 0.52]]], dtype=torch.float64)  # squared, renormalised
    logits = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    got = distillation_loss("kl", logits, teachers, [1, 1], TWO, aggregate="mixture", sharpen=0.5)
    assert got.item() == pytest.approx(distillation_loss("kl", logits, sharpened, [1], TWO).item(), rel=1e-12)
    plain = distillation_loss("kl", logits, teachers, [1, 1], TWO, aggregate="mixture")
    assert distillation_loss("kl", logits, teachers, [1, 1], TWO, aggregate="mixture", sharpen=1.0) == plain
    with pytest.raises(ValueError, match="sharpen: only with aggregate 'mixture'"):
        distillation_loss("kl", logits, teachers, [1, 1], TWO, sharpen=0.5)
    with pytest.raises(ValueError, match="sharpen: expected a temperature in \\(0, 1\\]"):
        distillation_loss("kl", logits, teachers, [1, 1], TWO, aggregate="mixture", sharpen=0.0)


def test_lambda_schedules():
    assert [lambda_schedule("linear", 1.0, 0.0)(u) for u in (0, 0.5, 1)] == [1.0, 0.5, 0.0]
    cos = lambda_schedule("cosine", 0.8, 0.2)
    assert [cos(u) for u in (0, 1, 2)] == pytest.approx([0.8, 0.2, 0.2])  # clipped past the end
    assert cos(0.25) == pytest.approx(0.2 + 0.6 * (1 + math.cos(math.pi / 4)) / 2)
    assert lambda_schedule("constant", 0.4, 0.0)(0.9) == 0.4
    with pytest.raises(ValueError, match="schedule.kind"):
        lambda_schedule("step")
    assert "lam" in loss_options("ot_kl") and "tau" in loss_options("sord")
