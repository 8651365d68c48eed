"""What knot loads and what it never executes: no custom code from a model folder, no
pickled weights, clear one-line errors on a full disk, files that follow the umask.

Hostile folders are crafted here: a checkpoint or encoder folder that asks transformers
for its own code (``auto_map`` beside a ``.py`` file), a ``pytorch_model.bin`` or
``trainer.pt`` pickle. Each would write a marker file if it ran; the marker must never
appear. Two subprocess tests drive the real CLI with stdin closed and with a ``y``
waiting on it (transformers' "run the custom code? [y/N]" prompt must never be asked).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from helpers import write_pipeline_case
from knot.config import ModelConfig, TrainConfig, load_config
from knot.encoders import load_pretrained, load_tokenizer, minilm_path
from knot.geometry import LabelGeometry
from knot.models import build_model, load, save_checkpoint
from knot.utils import atomic_write_json

GEOMETRY = LabelGeometry.from_mapping({"neg": [-1.0], "pos": [1.0]})

#: MiniLM's small files: a Hugging Face folder without weights (tokenizer + BERT config).
SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


class Payload:
    """Pickles to a call that writes ``marker``: what an unpickled weights file can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def encoder_folder_without_weights(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in SMALL_FILES:
        shutil.copy(minilm_path() / name, folder / name)
    return folder


def plant_code(folder: Path, marker: Path, json_name: str = "tokenizer_config.json") -> Path:
    """Make ``folder`` ask for its own code: ``evil.py`` (writes ``marker`` when imported)
    named by an ``auto_map`` in ``json_name``; a tokenizer config loses its class, so
    transformers has only the remote one."""
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig, BertModel, BertTokenizerFast\n"
        "class EvilConfig(BertConfig):\n    pass\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(BertTokenizerFast):\n    pass\n"
    )
    file = folder / json_name
    data = json.loads(file.read_text()) if file.is_file() else {}
    if json_name == "tokenizer_config.json":
        data.pop("tokenizer_class", None)
        data["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    else:
        data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    file.write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="tiny", max_length=16), GEOMETRY)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture
def hostile_checkpoint(checkpoint, tmp_path):
    folder = shutil.copytree(checkpoint, tmp_path / "hostile")
    return plant_code(folder, tmp_path / "MARKER")


def tiny_experiment(tmp_path: Path) -> None:
    """The pipeline tests' corpus in ``tmp_path/data`` and config in ``tmp_path/tiny.yaml``."""
    write_pipeline_case(tmp_path)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------------------
# no custom code
# ---------------------------------------------------------------------------


def test_the_minilm_folder_passes_the_check():
    from knot.encoders import check_no_remote_code

    assert check_no_remote_code(minilm_path()) == minilm_path()


@pytest.mark.parametrize("json_name", ["config.json", "tokenizer_config.json", "processor_config.json"])
def test_an_encoder_folder_asking_for_its_code_is_refused_before_anything_loads(tmp_path, json_name):
    folder = plant_code(encoder_folder_without_weights(tmp_path / "enc"), tmp_path / "MARKER", json_name)
    (folder / "evil.py").unlink()  # the auto_map alone is enough to refuse

    with pytest.raises(ValueError) as exc:
        build_model(ModelConfig(encoder=str(folder), max_length=16), GEOMETRY)

    assert one_line(exc) == (
        f"{folder}: refused: {json_name} asks for custom code (auto_map); knot never runs code from a model folder"
    )


def test_a_python_file_in_the_folder_is_refused_by_every_loader(tmp_path):
    folder = encoder_folder_without_weights(tmp_path / "enc")
    (folder / "sub").mkdir()
    (folder / "sub" / "helper.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w')\n")

    for loader in (load_tokenizer, load_pretrained):
        with pytest.raises(ValueError, match=r"enc: refused: sub/helper\.py is Python code; knot never runs"):
            loader(folder)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("mode", ["finetune", "frozen"])
def test_a_checkpoint_asking_for_its_code_is_refused_before_its_weights_are_read(tmp_path, mode, monkeypatch):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="tiny", max_length=16, encoder_mode=mode)
    folder = plant_code(save_checkpoint(build_model(cfg, GEOMETRY), tmp_path / "ck"), tmp_path / "MARKER")
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("weights read"))

    with pytest.raises(ValueError) as exc:
        load(folder)

    assert one_line(exc).startswith(f"{folder}: refused: evil.py is Python code")
    assert not (tmp_path / "MARKER").exists()


def test_transformers_is_told_no_custom_code_and_safetensors_only(monkeypatch):
    import transformers

    calls = {}

    def record(name):
        def from_pretrained(folder, **kwargs):
            calls[name] = kwargs
            return object()

        return from_pretrained

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record("tokenizer"))
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", record("model"))
    load_tokenizer(minilm_path())
    load_pretrained(minilm_path())

    assert calls["tokenizer"]["trust_remote_code"] is False
    assert calls["model"]["trust_remote_code"] is False and calls["model"]["use_safetensors"] is True


def knot_cli(*args, stdin: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "knot.cli", *map(str, args)],
        env=env,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("stdin", [None, "y\n"], ids=["stdin-closed", "stdin-says-y"])
def test_cli_predict_on_a_hostile_checkpoint_never_prompts_nor_runs_it(hostile_checkpoint, tmp_path, stdin):
    res = knot_cli("predict", hostile_checkpoint, "good film", stdin=stdin)

    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == (
        f"error: {hostile_checkpoint}: refused: evil.py is Python code; knot never runs code from a model "
        "folder (remove the file to load the folder)"
    )
    assert "[y/N]" not in res.stdout + res.stderr
    assert not (tmp_path / "MARKER").exists()


def test_cli_train_with_a_hostile_encoder_folder_never_runs_it(tmp_path):
    folder = plant_code(encoder_folder_without_weights(tmp_path / "enc"), tmp_path / "MARKER", "config.json")
    tiny_experiment(tmp_path)

    res = knot_cli("train", tmp_path / "tiny.yaml", "--role", "global", "--out", tmp_path / "run",
                   "--data-root", tmp_path / "data", "--set", f"model.encoder={folder}", stdin="y\n")

    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: {folder}: refused: evil.py is Python code; knot never runs code from a model folder "
        "(remove the file to load the folder)"
    )
    assert not (tmp_path / "MARKER").exists()


# ---------------------------------------------------------------------------
# no pickles
# ---------------------------------------------------------------------------


def test_pickled_encoder_weights_are_refused_unread(tmp_path):
    folder = encoder_folder_without_weights(tmp_path / "enc")
    torch.save({"w": Payload(tmp_path / "MARKER")}, folder / "pytorch_model.bin")

    with pytest.raises(ValueError) as exc:
        build_model(ModelConfig(encoder=str(folder), max_length=16), GEOMETRY)

    assert one_line(exc) == (
        f"{folder / 'pytorch_model.bin'}: refused: knot loads only safetensors weights (model.safetensors) "
        "and never unpickles a weights file; convert it to safetensors"
    )
    assert "weights_only" not in str(exc.value)
    assert not (tmp_path / "MARKER").exists()


def test_a_resume_state_holding_code_is_refused_in_one_line(tmp_path):
    from knot.batching import TextDataset, make_loader
    from knot.training import fit

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="tiny", max_length=16), GEOMETRY)
    loader = make_loader(TextDataset(["good", "bad"], model.tokenizer, 16, torch.tensor([1, 0])), 2, shuffle=False)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-3)

    def ce(logits, batch):
        return torch.nn.functional.cross_entropy(logits, batch["target"])

    fit(model, ce, loader, loader, cfg, out_dir=tmp_path / "fit", keep_last_state=True)
    last = tmp_path / "fit" / "last"
    state = json.loads((last / "state.json").read_text())
    state["complete"] = False  # resumable again
    (last / "state.json").write_text(json.dumps(state))
    torch.save({"optimizer": Payload(tmp_path / "MARKER")}, last / "trainer.pt")

    with pytest.raises(ValueError) as exc:
        fit(model, ce, loader, loader, TrainConfig(epochs=2, batch_size=2, lr=1e-3), out_dir=tmp_path / "fit",
            resume=True)

    assert one_line(exc).startswith(f"{last / 'trainer.pt'}: refused: holds more than tensors and plain data")
    assert "weights_only=False" not in str(exc.value)
    assert not (tmp_path / "MARKER").exists()


# ---------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def safetensors_disk_full(*args, **kwargs):
    """How safetensors' save_file reports a full disk: not an OSError."""
    from safetensors import SafetensorError

    raise SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


@pytest.mark.parametrize("writer", [disk_full, safetensors_disk_full])
def test_a_full_disk_while_saving_soft_labels_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, writer):
    import safetensors.numpy

    from knot.soft_labels import SoftLabels

    monkeypatch.setattr(safetensors.numpy, "save_file", writer)
    labels = SoftLabels(np.full((3, 1, 2), 0.5, dtype=np.float32), ["t"], ["neg", "pos"])

    with pytest.raises(OSError) as exc:
        labels.save(tmp_path / "soft", "train")

    assert exc.value.errno == errno.ENOSPC
    assert one_line(exc) == (
        f"{tmp_path / 'soft' / 'train.safetensors'}: could not write it (No space left on device); "
        "no partial file was left"
    )
    assert list((tmp_path / "soft").iterdir()) == []


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(checkpoint, tmp_path, monkeypatch):
    import safetensors.torch

    target = shutil.copytree(checkpoint, tmp_path / "ck")
    before = sorted(p.name for p in target.iterdir())
    model = load(target)
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)

    with pytest.raises(OSError) as exc:
        save_checkpoint(model, target)

    assert one_line(exc) == f"{target}: could not write it (No space left on device); no partial file was left"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left
    assert sorted(p.name for p in target.iterdir()) == before
    load(target)


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import knot.utils
    from knot.cli import app

    tiny_experiment(tmp_path)
    monkeypatch.setattr(knot.utils.os, "replace", disk_full)

    res = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"),
                                   "--data-root", str(tmp_path / "data")])

    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'run'}")
    assert lines[0].endswith(": could not write it (No space left on device); no partial file was left")
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"]  # the run lock stays


# ---------------------------------------------------------------------------
# file modes follow the umask
# ---------------------------------------------------------------------------


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in [root, *root.rglob("*")]:
        out.setdefault(oct(stat.S_IMODE(path.stat().st_mode)), set()).add(str(path.relative_to(root)))
    return out


#: Enough of a run to write every kind of file: data, checkpoints, metrics, soft labels.
STAGES = ["prepare", "local", "global", "soft-labels"]


def test_every_file_of_a_run_follows_the_umask(tmp_path, umask):
    from knot.pipeline import run_pipeline

    tiny_experiment(tmp_path)
    cfg = load_config(tmp_path / "tiny.yaml", ["local.epochs=1"])
    umask(0o022)
    run_pipeline(cfg, tmp_path / "run", data_root=tmp_path / "data", stages=STAGES)
    umask(0o077)  # a stricter umask is kept, not widened (the global model: a checkpoint, metrics)
    run_pipeline(cfg, tmp_path / "private", data_root=tmp_path / "data", stages=["prepare", "global"])

    run = modes(tmp_path / "run")
    assert set(run) == {"0o644", "0o755"}, {m: sorted(p)[:5] for m, p in run.items()}
    files = run["0o644"]
    assert any(p.endswith("model.safetensors") for p in files)  # the weights
    assert any(p.endswith(".safetensors") and "soft" in p for p in files)  # the soft labels
    private = modes(tmp_path / "private")
    assert set(private) == {"0o600", "0o700"}, {m: sorted(p)[:5] for m, p in private.items()}
    assert any(p.endswith("model.safetensors") for p in private["0o600"])


def test_atomic_writers_follow_the_umask_whatever_the_writer_does(tmp_path, umask):
    from knot.utils import atomic_dir, atomic_path

    umask(0o027)
    with atomic_path(tmp_path / "a.bin") as tmp:
        os.chmod(tmp, 0o600)  # as safetensors' save_file leaves its file
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        atomic_write_json(tmp / "sub" / "x.json", {})
        os.chmod(tmp / "sub" / "x.json", 0o600)

    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d" / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "d" / "sub" / "x.json").stat().st_mode) == 0o640
