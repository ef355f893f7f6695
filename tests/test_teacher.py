import json

import pytest
import torch

from intraq.config import DataConfig, TeacherConfig
from intraq.data import build_data
from intraq.errors import UserInputError
from intraq.teacher.checkpoint import load_teacher_weights, save_teacher, sha256_file
from intraq.teacher.load import get_teacher
from intraq.teacher.models import build_model
from intraq.teacher.train import train_teacher


def test_sidecar_records_hash_and_loading_checks_it(tmp_path):
    model = build_model("digits_cnn", 10)
    path = tmp_path / "t.pt"
    sidecar = save_teacher(model, path, {"test_top1": 12.5, "seed": 0})
    assert sidecar["sha256"] == sha256_file(path)
    assert json.loads((tmp_path / "t.json").read_text())["test_top1"] == 12.5
    fresh = build_model("digits_cnn", 10)
    load_teacher_weights(fresh, path)
    pairs = zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)

    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(UserInputError, match=r"sha256 .* but its sidecar .* records"):
        load_teacher_weights(fresh, path)


def test_missing_sidecar_and_wrong_architecture_are_explained(tmp_path):
    path = tmp_path / "t.pt"
    save_teacher(build_model("digits_cnn", 10), path, {})
    with pytest.raises(UserInputError, match="does not fit architecture"):
        load_teacher_weights(build_model("resnet20", 10), path)
    (tmp_path / "t.json").unlink()
    with pytest.raises(UserInputError, match="has no sidecar"):
        load_teacher_weights(build_model("digits_cnn", 10), path)


def test_missing_local_teacher_names_the_train_command(tmp_path):
    data = build_data(DataConfig("digits"))
    with pytest.raises(UserInputError, match="intraq teacher train"):
        get_teacher(TeacherConfig(name="digits_cnn"), data, torch.device("cpu"), tmp_path, progress=False)


def test_recipe_learns_digits_and_resumes(tmp_path, monkeypatch):
    data = build_data(DataConfig("digits"))
    cfg = TeacherConfig(name="digits_cnn", train_epochs=4, train_batch_size=64)
    out = tmp_path / "teacher.pt"
    _, sidecar = train_teacher(cfg, data, out, seed=0, device=torch.device("cpu"), progress=False)
    assert sidecar["test_top1"] > 60.0  # chance is 10%
    assert {"sha256", "seed", "command", "torch", "wall_seconds"} <= set(sidecar)
    assert not out.with_suffix(".state").exists()

    # Interrupted after epoch 0 of 2 (the save of epoch 1 fails): the rerun resumes at epoch 1 and ends with
    # the same weights as a straight run.
    cfg2 = TeacherConfig(name="digits_cnn", train_epochs=2, train_batch_size=64)
    straight, _ = train_teacher(cfg2, data, tmp_path / "a.pt", seed=0, device=torch.device("cpu"), progress=False)
    import intraq.teacher.train as train_module

    real_save, calls = train_module.save_torch, {"n": 0}

    def failing_second_save(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(obj, path)

    partial = tmp_path / "b.pt"
    monkeypatch.setattr(train_module, "save_torch", failing_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg2, data, partial, seed=0, device=torch.device("cpu"), progress=False)
    monkeypatch.setattr(train_module, "save_torch", real_save)
    assert partial.with_suffix(".state").exists() and not partial.exists()
    resumed, _ = train_teacher(cfg2, data, partial, seed=0, device=torch.device("cpu"), progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
