"""LabelGeometry: presets, user mappings and files, validation, round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from knot.geometry import PRESETS, LabelGeometry


def test_sentiment5_is_stars_on_a_line():
    g = LabelGeometry.preset("sentiment5")
    assert g.labels == ["1", "2", "3", "4", "5"]
    assert g.coords.shape == (5, 1) and g.coords.dtype == torch.float64
    assert g.coords[:, 0].tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert g.is_1d
    # cost |i - j|
    assert g.cost.tolist() == [[float(abs(i - j)) for j in range(5)] for i in range(5)]


def test_knot6d_off_diagonal_cost_is_sqrt_2_plus_gap_squared():
    g = LabelGeometry.preset("sentiment5-knot6d")
    assert g.coords.shape == (5, 6) and not g.is_1d
    for i in range(5):
        for j in range(5):
            expected = 0.0 if i == j else math.sqrt(2 + (i - j) ** 2)
            assert g.cost[i, j].item() == pytest.approx(expected, abs=1e-12)


def test_emotion5_circumplex_points():
    g = LabelGeometry.preset("emotion5")
    assert g.labels == ["anger", "joy", "neutral", "sadness", "surprise"]
    assert g.coords[g.index("joy")].tolist() == [0.9, 0.2]
    assert g.coords[g.index("sadness")].tolist() == [-0.9, -0.4]
    # anger (-0.4, 0.8) to joy (0.9, 0.2): sqrt(1.3^2 + 0.6^2)
    assert g.cost[0, 1].item() == pytest.approx(math.hypot(1.3, 0.6), abs=1e-12)


def test_uniform_has_unit_off_diagonal_costs_and_needs_labels():
    g = LabelGeometry.preset("uniform", labels=["a", "b", "c", "d"])
    assert torch.equal(g.cost, 1 - torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs labels"):
        LabelGeometry.preset("uniform")


def test_squared_cost():
    g = LabelGeometry.preset("sentiment5", p=2)
    assert g.cost[0].tolist() == [0.0, 1.0, 4.0, 9.0, 16.0]
    with pytest.raises(ValueError, match="p: expected 1 or 2"):
        LabelGeometry.preset("sentiment5", p=3)


def test_preset_with_labels_reorders_and_rejects_other_labels():
    g = LabelGeometry.preset("sentiment5", labels=["5", "4", "3", "2", "1"])
    assert g.labels == ["5", "4", "3", "2", "1"]
    assert g.cost[0, 4].item() == 4.0  # 5 stars to 1 star
    with pytest.raises(ValueError, match=r"missing: \['5'\], unknown: \['6'\]"):
        LabelGeometry.preset("sentiment5", labels=["1", "2", "3", "4", "6"])


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="expected one of: " + ", ".join(PRESETS)):
        LabelGeometry.preset("stars")


@pytest.mark.parametrize(
    "labels, coords, match",
    [
        (["a"], [[0.0]], "at least 2 labels"),
        (["a", "a"], [[0.0], [1.0]], "'a' appears twice"),
        (["a", "b"], [[0.0], [float("nan")]], "label 'b': coordinates must be finite"),
        (["a", "b"], [[0.0], [0.0]], "'a' and 'b' have the same coordinates"),
        (["a", "b", "c"], [[0.0], [1.0]], r"expected shape \(3, D\)"),
        (["a", "b"], "xy", "coords: expected"),
    ],
)
def test_bad_geometry_is_rejected(labels, coords, match):
    with pytest.raises(ValueError, match=match):
        LabelGeometry(labels, coords)


def test_from_mapping_keeps_order_and_validates():
    g = LabelGeometry.from_mapping({"neg": [-1.0, 0.0], "neu": [0.0, 0.0], "pos": [1.0, 0.0]})
    assert g.labels == ["neg", "neu", "pos"] and g.coords.shape == (3, 2)
    with pytest.raises(ValueError, match="label 'neu' has 1 coordinates, the labels before it 2"):
        LabelGeometry.from_mapping({"neg": [-1.0, 0.0], "neu": [0.0]})
    with pytest.raises(ValueError, match="label 'x': expected a list of numbers"):
        LabelGeometry.from_mapping({"x": ["a"], "y": [1.0]})
    with pytest.raises(ValueError, match="label 'y': coordinates must be finite"):
        LabelGeometry.from_mapping({"x": [0.0], "y": [float("inf")]})
    with pytest.raises(ValueError, match="non-empty mapping"):
        LabelGeometry.from_mapping({})


def test_from_spec_reads_yaml_and_json_files(tmp_path):
    yml = tmp_path / "geo.yaml"
    yml.write_text("low: [0, 0]\nmid: [1, 0]\nhigh: [1, 1]\n")
    g = LabelGeometry.from_spec(str(yml))
    assert g.labels == ["low", "mid", "high"]
    assert g.cost[0, 2].item() == pytest.approx(math.sqrt(2))
    js = tmp_path / "geo.json"
    js.write_text(json.dumps({"1": [0], "2": [1]}))
    assert LabelGeometry.from_spec(js, p=2).labels == ["1", "2"]


def test_from_spec_errors_name_the_file_and_label(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [0]\nb: [oops]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: label 'b': expected a list of numbers"):
        LabelGeometry.from_spec(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": [0],\n "b": }')
    with pytest.raises(ValueError, match=r"broken\.json, line 2: invalid JSON"):
        LabelGeometry.from_spec(str(broken))
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a non-empty mapping"):
        LabelGeometry.from_spec(str(notmap))
    with pytest.raises(ValueError, match="not a preset .* and no such file"):
        LabelGeometry.from_spec(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="expected a preset name, a mapping"):
        LabelGeometry.from_spec(3)


def test_from_spec_uniform_uses_labels_and_mapping_reorders():
    assert LabelGeometry.from_spec("uniform", labels=["x", "y"]).labels == ["x", "y"]
    g = LabelGeometry.from_spec({"a": [0.0], "b": [2.0]}, labels=["b", "a"])
    assert g.labels == ["b", "a"] and g.coords[:, 0].tolist() == [2.0, 0.0]


@pytest.mark.parametrize("name", ["sentiment5", "sentiment5-knot6d", "emotion5"])
def test_dict_round_trip_through_json(name):
    g = LabelGeometry.preset(name, p=2)
    back = LabelGeometry.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g and back.p == 2 and back.name == name
    assert torch.equal(back.cost, g.cost)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        LabelGeometry.from_dict({"labels": ["a", "b"], "coords": [[0], [1]], "power": 2})


def test_index_and_accessors_return_copies():
    g = LabelGeometry.preset("sentiment5")
    assert g.index("3") == 2 and g.index(3) == 2
    with pytest.raises(ValueError, match="unknown label '6'"):
        g.index("6")
    c = g.cost
    c[0, 1] = 99.0
    assert g.cost[0, 1].item() == 1.0
    labels = g.labels
    labels.append("x")
    assert g.num_labels == 5


def test_ground_cost_is_built_once():
    g = LabelGeometry.preset("emotion5")
    assert g.ground_cost is g.ground_cost
    assert torch.equal(g.ground_cost.matrix(torch.float64, "cpu"), g.cost)
    assert not g.ground_cost.is_1d and LabelGeometry.preset("sentiment5").ground_cost.is_1d


@pytest.mark.parametrize("preset", ["sentiment5", "emotion5", "ekman7"])
@pytest.mark.parametrize("p", [1, 2])
def test_permuted_control_keeps_the_costs_and_destroys_the_order(preset, p):
    task = LabelGeometry.preset(preset, p=p)
    g = LabelGeometry.from_spec({"permuted": 11}, labels=task.labels, p=p, reference=task)
    assert g.labels == task.labels and g.p == p
    # same points, each label on another label's point
    pts = sorted(map(tuple, task.coords.tolist()))
    assert sorted(map(tuple, g.coords.tolist())) == pts
    assert all(g.coords[i].tolist() != task.coords[i].tolist() for i in range(task.num_labels))
    # same multiset of costs, different matrix
    assert sorted(g.cost.flatten().tolist()) == pytest.approx(sorted(task.cost.flatten().tolist()))
    assert not torch.allclose(g.cost, task.cost)
    # fixed: the same seed gives the same geometry, another seed (here) another one
    assert LabelGeometry.from_spec({"permuted": 11}, reference=task) == g


def test_permuted_control_refuses_two_labels():
    task = LabelGeometry.from_mapping({"neg": [-1.0], "pos": [1.0]})
    with pytest.raises(ValueError, match="no permutation of the 2 labels changes the costs"):
        LabelGeometry.from_spec({"permuted": 0}, reference=task)


@pytest.mark.parametrize("p", [1, 2])
def test_uniform_control_is_scaled_total_variation(p):
    task = LabelGeometry.preset("emotion5", p=p)
    g = LabelGeometry.from_spec({"uniform": {"scale": "task_mean"}}, labels=task.labels, p=p, reference=task)
    k = task.num_labels
    off = ~torch.eye(k, dtype=torch.bool)
    s = float(task.cost[off].mean())
    assert torch.allclose(g.cost, s * (1 - torch.eye(k, dtype=torch.float64)))
    # exact OT between two distributions is then s * TV
    from knot.ot import exact_cost  # the solver the losses use

    a = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1]], dtype=torch.float64)
    b = torch.tensor([[0.1, 0.1, 0.2, 0.3, 0.3]], dtype=torch.float64)
    assert float(exact_cost(a, b, g)) == pytest.approx(s * 0.5 * float((a - b).abs().sum()), rel=1e-6)
    plain = LabelGeometry.from_spec({"uniform": None}, reference=task)
    assert torch.allclose(plain.cost, 1 - torch.eye(k, dtype=torch.float64))


def test_control_specs_need_the_task_geometry_and_are_checked_by_the_config():
    with pytest.raises(ValueError, match="built from the task geometry"):
        LabelGeometry.from_spec({"permuted": 3})
    from knot.config import ConfigError, DistillMethod

    assert DistillMethod(name="c", geometry={"permuted": 3}).to_dict()["geometry"] == {"permuted": 3}
    with pytest.raises(ConfigError, match="uniform.scale"):
        DistillMethod(name="c", geometry={"uniform": {"scale": "max"}})
