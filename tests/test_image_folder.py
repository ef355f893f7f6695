"""A user's own ImageFolder data set (`data.loader=image-folder`): any size, 1 or 3 channels, any class count."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from intraq.config import DataConfig, RunConfig, config_hash, from_dict
from intraq.data import build_data
from intraq.errors import UserInputError

REPO = Path(__file__).resolve().parent.parent


def make_tree(root: Path, side: int, classes: int, per_class: int, grey: bool, seed: int = 0,
              test_name: str = "test") -> None:
    """train/ and test/ (or val/) with `per_class` random PNGs per class folder c000, c001, ..."""
    rng = np.random.default_rng(seed)
    for split in ("train", test_name):
        for c in range(classes):
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (side, side) if grey else (side, side, 3)
                pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(pixels, mode="L" if grey else "RGB").save(folder / f"{i}.png")


def cfg_for(root: Path, cache: Path, name: str = "mine", **extra) -> DataConfig:
    return DataConfig(name=name, loader="image-folder", root=str(root), cache_dir=str(cache), **extra)


@pytest.mark.parametrize(
    ("side", "classes", "grey"), [(28, 10, True), (32, 100, False), (64, 7, False)],
    ids=["28px-grey-10", "32px-rgb-100", "64px-rgb-7"],
)
def test_shapes_classes_and_channels_come_from_the_files(tmp_path: Path, side: int, classes: int, grey: bool):
    make_tree(tmp_path / "data", side, classes, per_class=2, grey=grey)
    data = build_data(cfg_for(tmp_path / "data", tmp_path / "cache"))
    channels = 1 if grey else 3
    assert (data.num_classes, data.image_size, data.channels) == (classes, side, channels)
    assert tuple(data.train.images.shape) == (2 * classes, channels, side, side)
    assert data.train.images.dtype == torch.uint8 and len(data.test) == 2 * classes
    assert data.class_names == [f"c{c:03d}" for c in range(classes)]
    assert data.name == "mine" and data.identity.startswith("mine-")
    x, y = data.train.batch(slice(0, 4))
    assert x.shape == (4, channels, side, side) and y.dtype == torch.long


def test_normalization_is_the_train_split_mean_and_std(tmp_path: Path):
    make_tree(tmp_path / "data", 8, 3, per_class=4, grey=False)
    data = build_data(cfg_for(tmp_path / "data", tmp_path / "cache"))
    pixels = data.train.images.double() / 255.0
    expected_mean = pixels.mean(dim=(0, 2, 3))
    expected_std = pixels.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    assert np.allclose(data.norm.mean, expected_mean.numpy(), atol=1e-9)
    assert np.allclose(data.norm.std, expected_std.numpy(), atol=1e-9)
    fixed = build_data(cfg_for(tmp_path / "data", tmp_path / "cache", mean=(0.5,) * 3, std=(0.25,) * 3))
    assert fixed.norm.mean == (0.5,) * 3 and fixed.norm.std == (0.25,) * 3


def test_val_split_archive_and_folder_holding_the_archive(tmp_path: Path):
    make_tree(tmp_path / "tree", 16, 4, per_class=2, grey=False, test_name="val")
    archive = tmp_path / "holder" / "mine.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="mine")
    from_tree = build_data(cfg_for(tmp_path / "tree", tmp_path / "cache"))
    from_archive = build_data(cfg_for(archive, tmp_path / "cache"))
    from_holder = build_data(cfg_for(archive.parent, tmp_path / "cache"))
    for data in (from_archive, from_holder):
        assert torch.equal(data.train.images, from_tree.train.images)
        assert torch.equal(data.test.labels, from_tree.test.labels)
        assert data.identity == from_tree.identity


def test_identity_depends_on_content_and_name_not_on_location(tmp_path: Path):
    make_tree(tmp_path / "a", 8, 3, per_class=2, grey=True, seed=1)
    make_tree(tmp_path / "copy", 8, 3, per_class=2, grey=True, seed=1)
    for path in (tmp_path / "copy").rglob("*.png"):
        os.utime(path, (1, 1))  # other timestamps: still the same data
    make_tree(tmp_path / "b", 8, 3, per_class=2, grey=True, seed=2)
    a = build_data(cfg_for(tmp_path / "a", tmp_path / "cache"))
    copy = build_data(cfg_for(tmp_path / "copy", tmp_path / "cache"))
    b = build_data(cfg_for(tmp_path / "b", tmp_path / "cache"))
    renamed = build_data(cfg_for(tmp_path / "a", tmp_path / "cache", name="other"))
    assert a.identity == copy.identity
    assert len({a.identity, b.identity, renamed.identity}) == 3


def test_mixed_sizes_need_resize(tmp_path: Path):
    make_tree(tmp_path / "data", 12, 2, per_class=1, grey=False)
    odd = tmp_path / "data" / "train" / "c000" / "odd.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(UserInputError, match=r"odd\.png is 20x20.*data\.resize"):
        build_data(cfg_for(tmp_path / "data", tmp_path / "cache"))
    data = build_data(cfg_for(tmp_path / "data", tmp_path / "cache", resize=16))
    assert data.image_size == 16 and tuple(data.train.images.shape[1:]) == (3, 16, 16)


def test_bad_settings_are_errors_that_name_the_fix(tmp_path: Path):
    make_tree(tmp_path / "data", 8, 3, per_class=1, grey=False)
    with pytest.raises(UserInputError, match=r"train/ has 3 class folders.*needs 5"):
        build_data(cfg_for(tmp_path / "data", tmp_path / "cache", num_classes=5))
    with pytest.raises(UserInputError, match="data.mean and data.std"):
        build_data(cfg_for(tmp_path / "data", tmp_path / "cache", mean=(0.5, 0.5, 0.5)))
    with pytest.raises(UserInputError, match="2/2 values but the images have 3 channels"):
        build_data(cfg_for(tmp_path / "data", tmp_path / "cache", mean=(0.5, 0.5), std=(0.2, 0.2)))
    with pytest.raises(UserInputError, match="matches no mine layout"):
        build_data(cfg_for(tmp_path, tmp_path / "cache"))


def test_grey_data_forced_to_rgb(tmp_path: Path):
    make_tree(tmp_path / "data", 8, 2, per_class=1, grey=True)
    data = build_data(cfg_for(tmp_path / "data", tmp_path / "cache", channels=3))
    assert data.channels == 3
    assert torch.equal(data.train.images[:, 0], data.train.images[:, 1])


def test_new_data_fields_keep_every_published_case_name():
    """Fields added for user data sets leave the hash of every earlier case unchanged while at their defaults."""
    from intraq.pipeline import case_hash

    records = sorted((REPO / "results").glob("*/*-seed*.json"))
    checked = 0
    for path in records:
        record = json.loads(path.read_text())
        if "config" not in record or "case" not in record:
            continue
        assert case_hash(from_dict(RunConfig, record["config"])) == record["case"], path
        checked += 1
    assert checked >= 30
    base = RunConfig()
    changed = RunConfig(data=DataConfig(loader="image-folder"))
    assert config_hash(base) != config_hash(changed)


# The three shapes of issue 19: 28x28 grey / 10 classes, 32x32 RGB / 100 classes, 64x64 RGB / 7 classes (the last
# with a torchvision architecture by name).
SHAPES = {
    "grey28": dict(side=28, classes=10, grey=True, teacher="digits_cnn"),
    "rgb32c100": dict(side=32, classes=100, grey=False, teacher="digits_cnn"),
    "rgb64c7": dict(side=64, classes=7, grey=False, teacher="torchvision:resnet18"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SHAPES)
def test_pipeline_end_to_end_on_each_shape(tmp_path: Path, name: str):
    """Teacher recipe, IntraQ images, W4A4, calibration and fine-tuning on a user's data set of each shape."""
    from intraq.config import apply_overrides
    from intraq.pipeline import RunPaths, run_case
    from intraq.profiles import get_profile

    shape = SHAPES[name]
    make_tree(tmp_path / name, shape["side"], shape["classes"], per_class=2, grey=shape["grey"])
    cfg = apply_overrides(get_profile("smoke"), [
        f"data.name={name}", "data.loader=image-folder", f"data.root={tmp_path / name}",
        f"data.cache_dir={tmp_path / 'cache'}", f"teacher.name={shape['teacher']}", "teacher.checkpoint=none",
        "teacher.auto_train=true", "teacher.train_epochs=1", "teacher.train_batch_size=10",
        "synth.num_images=20", "synth.batch_size=10", "synth.iterations=3", "finetune.epochs=3",
        "finetune.iters_per_epoch=2", "finetune.calib_epochs=1", "finetune.batch_size=10",
        "finetune.calib_batch_size=4",
    ])
    paths = RunPaths(artifacts=tmp_path / "artifacts", results=tmp_path / "results")
    record = run_case(cfg, paths, torch.device("cpu"), progress=False)
    assert record["data_identity"].startswith(f"{name}-")
    assert record["config"]["data"]["loader"] == "image-folder"
    assert record["teacher"]["name"] == shape["teacher"]
    for key in ("after_calibration", "final_epoch", "best_epoch", "teacher"):
        assert 0.0 <= record["accuracy"][key] <= 100.0
    images = torch.load(next((tmp_path / "artifacts" / "synthesis").rglob("batch00000-n10.pt")), weights_only=True)
    assert tuple(images["images"].shape[1:]) == (1 if shape["grey"] else 3, shape["side"], shape["side"])


def _plain_teacher(path: Path, channels: int, classes: int, wrap: str | None = None, arch: str = "digits_cnn") -> Path:
    """A user's own checkpoint: a plain state dict (or a full checkpoint / DataParallel names), no sidecar."""
    from intraq.teacher.models import build_model

    torch.manual_seed(0)
    state = build_model(arch, classes, channels).state_dict()
    if wrap == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    blob = {"epoch": 3, "state_dict": state} if wrap == "full" else state
    torch.save(blob, path)
    return path


@pytest.mark.parametrize("wrap", [None, "full", "module"])
def test_a_plain_state_dict_teacher_needs_no_sidecar(tmp_path: Path, wrap: str | None):
    from intraq.config import TeacherConfig
    from intraq.teacher.load import get_teacher

    make_tree(tmp_path / "data", 16, 3, per_class=2, grey=True)
    data = build_data(cfg_for(tmp_path / "data", tmp_path / "cache"))
    path = _plain_teacher(tmp_path / "mine.pt", channels=1, classes=3, wrap=wrap)
    teacher = get_teacher(TeacherConfig(checkpoint=str(path)), data, torch.device("cpu"), tmp_path / "a", False)
    assert teacher.info["sidecar"] is None and len(teacher.info["sha256"]) == 64
    assert 0.0 <= teacher.info["test_top1"] <= 100.0


def test_a_teacher_of_other_data_is_refused_unless_allowed(tmp_path: Path):
    from intraq.config import TeacherConfig
    from intraq.teacher.checkpoint import sidecar_path
    from intraq.teacher.load import get_teacher

    make_tree(tmp_path / "data", 16, 3, per_class=2, grey=True)
    data = build_data(cfg_for(tmp_path / "data", tmp_path / "cache"))
    path = _plain_teacher(tmp_path / "mine.pt", channels=1, classes=3)
    from intraq.teacher.checkpoint import sha256_file

    sidecar_path(path).write_text(json.dumps({"data": "cifar10", "sha256": sha256_file(path)}))
    with pytest.raises(UserInputError, match=r"trained on data 'cifar10'.*'mine'.*allow_other_data"):
        get_teacher(TeacherConfig(checkpoint=str(path)), data, torch.device("cpu"), tmp_path / "a", False)
    allowed = TeacherConfig(checkpoint=str(path), allow_other_data=True)
    teacher = get_teacher(allowed, data, torch.device("cpu"), tmp_path / "a", False)
    assert teacher.info["used_on_other_data"] == "trained on 'cifar10', used on 'mine'"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHAPES)
def test_a_study_file_runs_a_table_with_pytest_bench(tmp_path: Path, name: str):
    """Issue 19's promise: an ImageFolder tree, a state dict and a study file; then `pytest bench -k data_amount`."""
    import subprocess
    import sys

    shape = SHAPES[name]
    make_tree(tmp_path / name, shape["side"], shape["classes"], per_class=2, grey=shape["grey"])
    channels = 1 if shape["grey"] else 3
    teacher = _plain_teacher(tmp_path / "teacher.pt", channels=channels, classes=shape["classes"],
                             arch=shape["teacher"])
    study = tmp_path / f"{name}-study.toml"
    study.write_text(f"""profile = "{name}-study"
base = "smoke"
[data]
name = "{name}"
loader = "image-folder"
root = "{tmp_path / name}"
cache_dir = "{tmp_path / 'cache'}"
[teacher]
name = "{shape['teacher']}"
checkpoint = "{teacher}"
[synth]
num_images = 20
batch_size = 10
iterations = 2
[finetune]
epochs = 2
iters_per_epoch = 2
calib_epochs = 1
batch_size = 10
calib_batch_size = 4
""")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "bench" / "test_tables.py"),
         "--profile", str(study), "-k", "data_amount", "--seeds", "1", "--results", str(tmp_path / "results"),
         "--artifacts", str(tmp_path / "artifacts"), "--benchmark-disable"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / f"{name}-study").glob("*-seed0.json")]
    assert len(records) == 5 and all(r["data_identity"].startswith(f"{name}-") for r in records)
    assert sorted(r["config"]["synth"]["num_images"] for r in records) == [1, 5, 20, 39, 78]
    assert {r["teacher"]["name"] for r in records} == {shape["teacher"]}


def test_two_data_sets_never_share_a_result(tmp_path: Path):
    """Data sets A and B with one name and one set of settings (only the files differ): B never gets A's stored
    result and never replaces it, not even with force; under its own study name B gets its own result."""
    from intraq.config import apply_overrides
    from intraq.pipeline import RunPaths, run_case
    from intraq.profiles import get_profile

    for name, seed in (("a", 0), ("b", 1)):
        make_tree(tmp_path / name, 16, 3, per_class=2, grey=True, seed=seed)
    teacher = _plain_teacher(tmp_path / "teacher.pt", channels=1, classes=3)

    def cfg(root: str, profile: str):
        return apply_overrides(get_profile("smoke"), [
            f"profile={profile}", "data.name=mine", "data.loader=image-folder", f"data.root={tmp_path / root}",
            f"data.cache_dir={tmp_path / 'cache'}", f"teacher.checkpoint={teacher}", "synth.method=squant",
        ])

    paths = RunPaths(artifacts=tmp_path / "artifacts", results=tmp_path / "results")
    first = run_case(cfg("a", "study"), paths, torch.device("cpu"), progress=False)
    stored = tmp_path / "results" / "study" / f"{first['case']}-seed0.json"
    before = stored.read_bytes()
    for force in (False, True):
        with pytest.raises(UserInputError, match=r"holds a result on data mine-.*own profile name"):
            run_case(cfg("b", "study"), paths, torch.device("cpu"), progress=False, force=force)
    assert stored.read_bytes() == before
    second = run_case(cfg("b", "study-b"), paths, torch.device("cpu"), progress=False)
    assert second["data_identity"] != first["data_identity"]  # other data: two results, two folders
    assert (tmp_path / "results" / "study-b" / f"{second['case']}-seed0.json").exists()
