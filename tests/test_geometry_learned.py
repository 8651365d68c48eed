"""Learned label costs (issue 21): soft-label and output-layer costs as cost-matrix geometries,
their serialisation, and the exact OT solvers they must reach (never the 1-D closed form)."""

from __future__ import annotations

import json
import math

import numpy as np
import ot as pot
import pytest
import torch

from knot.geometry import LabelGeometry, head_cost, parse_learned_spec, soft_label_cost
from knot.heads import PooledHead, TokenHead
from knot.losses import distillation_loss
from knot.models import FrozenClassifier, class_weight_rows
from knot.ot import GroundCost, ot_cost, resolve_method

LABELS = ["a", "b", "c", "d"]


def co_occurring_soft_labels(n=40, t=3, seed=0):
    """Classes a and b always share the mass of an item; c and d each take items alone."""
    rng = np.random.default_rng(seed)
    probs = np.zeros((n, t, 4))
    for i in range(n):
        for j in range(t):
            kind = i % 3
            if kind == 0:
                share = rng.uniform(0.3, 0.7)
                probs[i, j] = [share * 0.9, (1 - share) * 0.9, 0.05, 0.05]
            else:
                probs[i, j] = [0.02, 0.02, 0.0, 0.0]
                probs[i, j, 1 + kind] = 0.96
    return probs


def test_soft_label_cost_puts_co_occurring_classes_close():
    c = soft_label_cost(co_occurring_soft_labels())
    assert c.shape == (4, 4) and torch.equal(c, c.T) and (c.diagonal() == 0).all()
    assert ((c >= 0) & (c <= 1)).all()
    assert c[0, 1] < 0.25 < 0.5 < c[2, 3]  # a-b move together; c and d exclude each other
    assert c[0, 1] == c[:, :].masked_fill(torch.eye(4, dtype=torch.bool), 9).min()


def test_soft_label_cost_by_hand():
    # columns x0 = (1, 0, 1), x1 = (1, 0, 1), x2 = (0, 1, 0): r01 = 1, r02 = -1
    p = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    c = soft_label_cost(p)
    assert torch.allclose(c, torch.tensor([[0.0, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.float64), atol=1e-12)
    # a class the teachers never vary has no correlation: cost 1/2 to every other class
    q = torch.tensor([[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.9, 0.1, 0.0]])
    assert soft_label_cost(q)[2, :2].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="expected an \\(N, T, K\\) or \\(N, K\\) array"):
        soft_label_cost(torch.zeros(3))


def test_head_cost_is_one_minus_cosine_optionally_sharpened():
    rows = [[1.0, 0.0], [1.0, math.sqrt(3)], [-1.0, math.sqrt(3)]]  # at 0, 60 and 120 degrees
    d = head_cost(rows)
    assert torch.allclose(d, torch.tensor([[0, 0.5, 1.5], [0.5, 0, 0.5], [1.5, 0.5, 0]], dtype=torch.float64))
    assert torch.allclose(head_cost(rows, kappa=2.0), 1 - torch.exp(-2.0 * d))
    assert not GroundCost(d).is_metric  # 1.5 > 0.5 + 0.5
    with pytest.raises(ValueError, match="non-zero"):
        head_cost([[1.0, 0.0], [0.0, 0.0]])


def test_class_weight_rows_finds_the_output_layer_of_every_head():
    pooled, token = PooledHead(8, 3, units=6), TokenHead(8, 3)
    assert torch.equal(class_weight_rows(pooled), pooled.net[-1].weight.double())
    assert torch.equal(class_weight_rows(token), token.classifier.weight.double())
    frozen = FrozenClassifier(pooled, None, LabelGeometry.preset("uniform", labels=["x", "y", "z"]))
    assert class_weight_rows(frozen).shape == (3, 6)
    with pytest.raises(ValueError, match="no output layer"):
        class_weight_rows(torch.nn.ReLU())


def test_a_cost_matrix_geometry_round_trips_and_has_no_coordinates():
    cost = head_cost([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.2]], kappa=3.0)
    g = LabelGeometry.from_cost(LABELS, cost, name="learned:head", origin={"learned": "head", "kappa": 3.0})
    back = LabelGeometry.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g and back.origin == g.origin and back.name == "learned:head"
    assert not g.has_coords and not g.is_1d and "cost matrix" in repr(g)
    with pytest.raises(ValueError, match="only a distillation loss can use it"):
        g.coords
    r = g.reorder(["d", "c", "b", "a"])
    assert r.cost[0, 3] == g.cost[3, 0] and r.origin == g.origin
    assert g != LabelGeometry.preset("uniform", labels=LABELS)
    with pytest.raises(ValueError, match="non-zero cost 1 to itself"):
        LabelGeometry.from_cost(["x", "y"], [[1.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="expected shape \\(2, 2\\)"):
        LabelGeometry.from_cost(["x", "y"], [[0.0]])


def test_a_non_metric_cost_goes_to_the_exact_solvers_not_the_1d_form():
    # |i - j|^2 on a line: not a metric, and the 1-D closed form would be wrong for it
    x = torch.arange(5, dtype=torch.float64)
    g = LabelGeometry.from_cost([str(i) for i in range(5)], (x[:, None] - x[None, :]) ** 2)
    assert not g.ground_cost.is_metric and resolve_method(g) == "exact"
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), -1)
    expect = [pot.emd2(p[i].numpy(), q[i].numpy(), g.cost.numpy()) for i in range(6)]
    assert ot_cost(p, q, g).tolist() == pytest.approx(expect, abs=1e-9)
    loss = distillation_loss("ot", p.log(), q[:, None, :], [1.0], g)
    assert loss.item() == pytest.approx(float(np.mean(expect)), abs=1e-9)
    # a learned cost over 28 labels: the exact per-pair LP
    big = head_cost(torch.randn(28, 6, generator=gen))
    assert resolve_method(LabelGeometry.from_cost([f"e{i}" for i in range(28)], big)) == "lp"


def test_learned_specs_from_the_config():
    probs = co_occurring_soft_labels()
    task = LabelGeometry.preset("uniform", labels=LABELS)  # largest cost 1
    task3 = LabelGeometry.from_mapping({"a": [0], "b": [1], "c": [2], "d": [3]})  # largest cost 3
    g = LabelGeometry.from_spec({"learned": "soft_labels"}, labels=LABELS, learned_inputs={"soft_labels": probs})
    assert torch.allclose(g.cost, soft_label_cost(probs)) and g.origin["inputs"] == [40, 3, 4]
    scaled = LabelGeometry.from_spec({"learned": "soft_labels", "scale": "task"}, labels=LABELS, reference=task3,
                                     learned_inputs={"soft_labels": probs})
    assert float(scaled.cost.max()) == pytest.approx(3.0)
    assert torch.allclose(scaled.cost, g.cost * scaled.origin["scale_factor"])
    squared = LabelGeometry.from_spec({"learned": "soft_labels"}, labels=LABELS, p=2, learned_inputs={"soft_labels": probs})
    assert torch.allclose(squared.cost, g.cost**2) and squared.p == 2
    rows = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    h = LabelGeometry.from_spec({"learned": "head", "kappa": 2}, labels=LABELS, reference=task,
                                learned_inputs={"head_rows": rows})
    assert torch.allclose(h.cost, head_cost(rows, 2.0)) and h.name == "learned:head"
    with pytest.raises(ValueError, match="needs the teachers' soft labels"):
        LabelGeometry.from_spec({"learned": "soft_labels"}, labels=LABELS)
    with pytest.raises(ValueError, match="no task geometry to scale to"):
        LabelGeometry.from_spec({"learned": "head", "scale": "task"}, labels=LABELS, learned_inputs={"head_rows": rows})
    with pytest.raises(ValueError, match="head has 4 classes, the task 3"):
        LabelGeometry.learned(["x", "y", "z"], {"learned": "head"}, head_rows=rows)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"learned": "gold"}, "geometry.learned: expected soft_labels or head"),
        ({"learned": "head", "kappa": -1}, "kappa: expected a positive number"),
        ({"learned": "head", "scale": "max"}, "scale: expected 'task' or null"),
        ({"learned": "head", "texts": {}}, "geometry.texts: unknown key"),
    ],
)
def test_bad_learned_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_learned_spec(spec)


def test_a_label_called_learned_is_still_a_coordinate():
    assert parse_learned_spec({"learned": [0.0], "other": [1.0]}) is None
    assert LabelGeometry.from_spec({"learned": [0.0], "other": [1.0]}).labels == ["learned", "other"]


def test_the_report_shows_a_students_learned_cost(tmp_path):
    from knot.config import DistillMethod
    from knot.distill import _save_loss_geometry
    from knot.layout import RunLayout
    from knot.reporting import learned_cost_tables

    layout = RunLayout(tmp_path / "run")
    spec = {"learned": "head", "kappa": 2.0}
    g = LabelGeometry.learned(["x", "y"], spec, head_rows=[[1.0, 0.0], [0.0, 1.0]])
    for name, geometry, method_spec in (("wkd", g, spec), ("ot", LabelGeometry.preset("uniform", labels=["x", "y"]), None)):
        layout.student(name).mkdir(parents=True)
        _save_loss_geometry(DistillMethod(name=name, geometry=method_spec), geometry, "uniform", layout.student(name))
    models = [{"kind": "student", "name": "wkd"}, {"kind": "student", "name": "ot"}, {"kind": "teacher", "name": "t"}]
    lines = learned_cost_tables(layout, models)
    text = "\n".join(lines)
    assert "Student `wkd`: learned loss cost (learned head, kappa 2.0" in text and "`ot`" not in text
    assert f"| x | 0.000 | {1 - math.exp(-2.0):.3f} |" in lines
    assert learned_cost_tables(layout, models[1:]) == []
