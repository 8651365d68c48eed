import pytest

from knot.config import ConfigError, ExperimentConfig, apply_overrides, load_config


def test_defaults_follow_the_reference():
    cfg = ExperimentConfig()
    assert (cfg.local.batch_size, cfg.local.epochs, cfg.local.lr) == (64, 10, 5e-4)
    assert (cfg.distill.train.epochs, cfg.distill.train.lr) == (20, 1e-3)
    assert cfg.data.seed == 2021 and cfg.data.split_ratios == [0.7, 0.1, 0.2]


def test_round_trip_through_yaml(tmp_path):
    cfg = ExperimentConfig.from_dict(
        {
            "name": "rt",
            "data": {"domains": [{"name": "toy", "sources": [{"reader": "marc", "path": "x"}]}]},
            "distill": {"methods": [{"name": "ot-mix", "loss": "ot", "aggregate": "mixture"}]},
        }
    )
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"locl": {}}, "locl"),
        ({"local": {"epochs": "ten"}}, "local.epochs"),
        ({"local": {"lr": -1}}, "lr"),
        ({"data": {"domains": [{"name": "a", "role": "teacher", "sources": [{}]}]}}, "data.domains[0].role"),
        ({"distill": {"methods": [{"loss": "wasserstein"}]}}, "distill.methods[0].loss"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        ExperimentConfig.from_dict(raw)


def test_overrides_address_nested_keys_and_list_items():
    raw = {"data": {"domains": [{"name": "a", "max_train": 5}]}}
    out = apply_overrides(raw, ["data.domains.0.max_train=7", "local.lr=1e-3"])
    assert out["data"]["domains"][0]["max_train"] == 7
    assert out["local"]["lr"] == 1e-3
    assert raw["data"]["domains"][0]["max_train"] == 5  # input untouched
    with pytest.raises(ConfigError, match="list index"):
        apply_overrides(raw, ["data.domains.3.max_train=1"])


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)
