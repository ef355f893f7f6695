import json

import pytest
import torch

from intraq.config import DataConfig, TeacherConfig
from intraq.data import build_data
from intraq.errors import UserInputError
from intraq.teacher.checkpoint import load_teacher_weights, save_teacher, sha256_file
from intraq.teacher.load import get_teacher
from intraq.teacher.models import build_model
from intraq.teacher.torchvision_models import TracedTeacher
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
    (tmp_path / "t.json").unlink()  # a user's own file has no sidecar: its hash is computed at load instead
    info = load_teacher_weights(build_model("digits_cnn", 10), path)
    assert info["sidecar"] is None and len(info["sha256"]) == 64
    with pytest.raises(UserInputError, match="does not fit architecture"):
        load_teacher_weights(build_model("resnet20", 10), path)


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
    assert [(s["first_epoch"], s["last_epoch"]) for s in sidecar["sittings"]] == [(0, 3)]
    assert {"hostname", "torch", "torch_threads", "git_commit", "started"} <= set(sidecar["sittings"][0])
    assert not out.with_suffix(".state").exists()
    # every epoch's loss; test top-1 only at the end with the default eval_every (10 > 4 epochs), equal to the result
    assert [h["epoch"] for h in sidecar["history"]] == [0, 1, 2, 3]
    assert all(h["train_loss"] > 0 for h in sidecar["history"])
    assert [h.get("test_top1") for h in sidecar["history"]] == [None, None, None, sidecar["test_top1"]]
    assert sidecar["history_from_epoch"] == 0

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
    resumed, resumed_sidecar = train_teacher(cfg2, data, partial, seed=0, device=torch.device("cpu"), progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # each stretch says which epochs it ran (and where); the history survives the restart
    assert [(s["first_epoch"], s["last_epoch"]) for s in resumed_sidecar["sittings"]] == [(0, 0), (1, 1)]
    assert [h["epoch"] for h in resumed_sidecar["history"]] == [0, 1] and resumed_sidecar["history_from_epoch"] == 0


def test_evaluating_during_training_is_kept_in_the_history_and_does_not_change_the_weights(tmp_path):
    data = build_data(DataConfig("digits"))
    cfg = TeacherConfig(name="digits_cnn", train_epochs=3, train_batch_size=64)
    cpu = torch.device("cpu")
    quiet, quiet_car = train_teacher(cfg, data, tmp_path / "a.pt", seed=0, device=cpu, progress=False, eval_every=0)
    every, every_car = train_teacher(cfg, data, tmp_path / "b.pt", seed=0, device=cpu, progress=False, eval_every=1)
    for a, b in zip(quiet.state_dict().values(), every.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert every_car["sha256"] == quiet_car["sha256"]
    accuracies = [h["test_top1"] for h in every_car["history"]]
    assert len(accuracies) == 3 and all(0.0 <= a <= 100.0 for a in accuracies)
    assert accuracies[-1] == every_car["test_top1"]
    assert [h.get("test_top1") for h in quiet_car["history"]] == [None, None, quiet_car["test_top1"]]
    with pytest.raises(UserInputError, match="eval_every"):
        train_teacher(cfg, data, tmp_path / "c.pt", seed=0, device=cpu, progress=False, eval_every=-1)


def test_a_teacher_state_from_before_sittings_resumes_and_says_its_first_epochs_are_unrecorded(tmp_path, monkeypatch):
    import intraq.teacher.train as train_module
    from intraq.artifacts import load_torch

    data = build_data(DataConfig("digits"))
    cfg = TeacherConfig(name="digits_cnn", train_epochs=2, train_batch_size=64)
    real_save = train_module.save_torch

    def stop_after_first(obj, path):
        real_save({k: v for k, v in obj.items() if k not in ("sittings", "history", "history_from_epoch")}, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_torch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg, data, tmp_path / "t.pt", seed=0, device=torch.device("cpu"), progress=False)
    monkeypatch.setattr(train_module, "save_torch", real_save)
    assert "sittings" not in load_torch(tmp_path / "t.state")
    _, sidecar = train_teacher(cfg, data, tmp_path / "t.pt", seed=0, device=torch.device("cpu"), progress=False)
    first, second = sidecar["sittings"]
    assert (first["first_epoch"], first["last_epoch"], second["first_epoch"], second["last_epoch"]) == (0, 0, 1, 1)
    assert "unrecorded" in first and "git_commit" in second
    # nor its history: the record says where that starts
    assert sidecar["history_from_epoch"] == 1 and [h["epoch"] for h in sidecar["history"]] == [1]


def test_a_teacher_path_that_does_not_exist_is_an_error_not_a_new_teacher(tmp_path):
    data = build_data(DataConfig("digits"))
    typo = tmp_path / "teachers" / "digits-cnn.pt"
    cfg = TeacherConfig(name="digits_cnn", checkpoint=str(typo), auto_train=True, train_epochs=1)
    with pytest.raises(UserInputError, match=rf"{typo} does not exist.*intraq teacher train .*--out {typo}"):
        get_teacher(cfg, data, torch.device("cpu"), tmp_path / "artifacts", progress=False)
    assert not typo.exists() and not (tmp_path / "artifacts" / "teachers").exists()  # nothing was trained


def test_a_teacher_that_fails_its_check_is_not_told_to_be_deleted(tmp_path):
    path = tmp_path / "mine.pt"
    save_teacher(build_model("digits_cnn", 10), path, {"test_top1": 90.0})
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UserInputError) as changed:
        load_teacher_weights(build_model("digits_cnn", 10), path)
    # weights that are not a torch file at all, with a sidecar that matches them (a user's own file)
    path.write_bytes(b"not a checkpoint")
    (tmp_path / "mine.pt.sha256").unlink()
    sidecar = json.loads((tmp_path / "mine.json").read_text())
    (tmp_path / "mine.json").write_text(json.dumps(dict(sidecar, sha256=sha256_file(path))))
    with pytest.raises(UserInputError) as unreadable:
        load_teacher_weights(build_model("digits_cnn", 10), path)
    for error in (changed.value, unreadable.value):
        assert "delete" not in str(error) and "recompute" not in str(error)
        assert "Restore the original file" in str(error) and "--out NEW_PATH" in str(error)
    assert "could not be read" in str(unreadable.value)


def _git(cwd, *args):
    import subprocess

    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_training_never_replaces_a_committed_file_without_out_and_force(tmp_path):
    from intraq.teacher.load import REPO_ROOT
    from intraq.teacher.train import check_train_target

    committed = REPO_ROOT / "teachers" / "resnet20-cifar10.pt"
    for explicit, force in ((False, False), (False, True), (True, False)):
        with pytest.raises(UserInputError, match="committed teachers.*--out .*resnet20-cifar10.pt --force"):
            check_train_target(committed, explicit=explicit, force=force)
    check_train_target(committed, explicit=True, force=True)  # asked for by name: allowed

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "t.pt").write_bytes(b"weights")
    _git(repo, "add", "t.pt")
    with pytest.raises(UserInputError, match="git tracks it"):
        check_train_target(repo / "t.pt", explicit=False, force=True)
    check_train_target(repo / "t.pt", explicit=True, force=True)

    mine = tmp_path / "mine.pt"
    check_train_target(mine, explicit=True, force=False)  # a new file: nothing to replace
    mine.write_bytes(b"weights")
    with pytest.raises(UserInputError, match="exists; pass --force"):
        check_train_target(mine, explicit=False, force=False)
    check_train_target(mine, explicit=False, force=True)


def test_cli_teacher_train_writes_under_the_artifacts_by_default(tmp_path, capsys):
    from intraq.cli import main

    args = ["teacher", "train", "--profile", "cifar10-cpu", "--set", "data.name=digits", "--set",
            "teacher.name=digits_cnn", "--set", "teacher.train_epochs=1", "--quiet", "--artifacts", str(tmp_path)]
    assert main(args) == 0  # cifar10-cpu names the committed teachers/resnet20-cifar10.pt: not the default target
    out = capsys.readouterr().out
    written = list((tmp_path / "teachers").glob("digits_cnn-digits-*.pt"))
    assert len(written) == 1 and str(written[0]) in out and "thread count" in out
    assert (tmp_path / "teachers" / (written[0].name + ".sha256")).exists()
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err


# ------------------------------------------------------------------------------ torchvision architectures by name


def test_torchvision_by_name_has_one_activation_module_per_call_site():
    """A Bottleneck calls its one ReLU three times: traced, every call site gets its own module, the function is
    unchanged, a deep copy keeps the feature module, and the quantizer puts one quantizer per site."""
    import copy

    from torchvision.models import resnet50

    from intraq.config import QuantConfig
    from intraq.quantize import quantize_model
    from intraq.teacher.torchvision_models import QUANTIZED_ACTIVATIONS

    torch.manual_seed(0)
    reference = resnet50(num_classes=7).eval()
    model = build_model("torchvision:resnet50", 7).eval()
    model.load_state_dict(reference.state_dict())  # same parameter names as torchvision's
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), reference(x))
    calls: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED_ACTIVATIONS):
            module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    model(x)
    assert len(calls) == 49 and set(calls.values()) == {1}  # 1 stem + 16 blocks x 3
    assert copy.deepcopy(model).feature_module_name == model.feature_module_name == "avgpool"
    shallow = copy.copy(model)
    assert shallow.feature_module_name == "avgpool" and isinstance(shallow, TracedTeacher)
    quantized = quantize_model(model, QuantConfig())
    assert sum(type(m).__name__ == "QuantAct" for m in quantized.modules()) == 49


def test_torchvision_by_name_adapts_to_grey_data_and_taps_penultimate_features():
    from intraq.teacher.features import logits_and_features

    model = build_model("torchvision:mobilenet_v2", 7, in_channels=1).eval()
    logits, features = logits_and_features(model, torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 7) and features.shape == (2, model.get_submodule("classifier.1").in_features)


@pytest.mark.parametrize(("name", "reason"), [
    ("torchvision:efficientnet_b0", "uses SiLU"),
    ("torchvision:densenet121", "applies relu as a function"),
    ("torchvision:resnet_nothing", "no classification model 'resnet_nothing'"),
    ("torchvision:squeezenet1_0", "no module gives its penultimate features"),
])
def test_torchvision_architectures_the_quantizer_cannot_cover_are_refused(name, reason):
    with pytest.raises(UserInputError, match=reason):
        build_model(name, 10)


def test_torchvision_weights_for_other_class_counts_are_refused_before_any_download(tmp_path):
    from intraq.teacher.load import recipe_checkpoint_path
    from intraq.teacher.torchvision_models import pretrained_state_dict

    with pytest.raises(UserInputError, match=r"1000 classes, the data has 10"):
        pretrained_state_dict("torchvision:resnet18", 10)
    path = recipe_checkpoint_path(TeacherConfig(name="torchvision:resnet50"), "mine", tmp_path)
    assert ":" not in path.name and path.name.startswith("torchvision-resnet50-mine-")


def test_a_second_training_of_the_same_teacher_is_refused_or_waits_for_the_first(tmp_path, monkeypatch):
    import threading

    import intraq.teacher.train as train_module
    from intraq.teacher.train import _train, exclusive_training, training_marker_path

    data = build_data(DataConfig("digits"))
    cfg = TeacherConfig(name="digits_cnn", train_epochs=1, train_batch_size=64)
    cpu = torch.device("cpu")
    out = tmp_path / "t.pt"
    holding, release = threading.Event(), threading.Event()
    first: dict = {}

    def first_process():
        with exclusive_training(out, wait=False):
            holding.set()
            release.wait(30)
            first["sidecar"] = _train(cfg, data, out, 0, cpu, False, 0)[1]

    thread = threading.Thread(target=first_process)
    thread.start()
    assert holding.wait(30)
    assert json.loads(training_marker_path(out).read_text())["pid"] > 0
    # the CLI's way: refused at once, saying who holds it and how to go on
    with pytest.raises(UserInputError, match=r"another process is training the teacher .*pid .*--out NEW_PATH"):
        train_teacher(cfg, data, out, seed=0, device=cpu, progress=False)
    # a run's automatic training: waits, then takes the finished teacher instead of training it again
    def second_training(*args, **kwargs):
        raise AssertionError("the waiting process trained the teacher again")

    monkeypatch.setattr(train_module, "_train", second_training)
    release.set()
    model, sidecar = train_teacher(cfg, data, out, seed=0, device=cpu, progress=False, wait=True)
    thread.join(30)
    assert sidecar["sha256"] == first["sidecar"]["sha256"] and len(sidecar["sittings"]) == 1
    assert not training_marker_path(out).exists() and not out.with_suffix(".state").exists()
    assert not model.training
    # finished between a caller's look and its lock (no wait at all): still taken, not trained again
    _, again = train_teacher(cfg, data, out, seed=0, device=cpu, progress=False, wait=True)
    assert again["sha256"] == first["sidecar"]["sha256"]


def test_an_interrupt_during_the_epochs_evaluation_keeps_the_epoch_and_its_accuracy(tmp_path, monkeypatch):
    import os
    import signal

    import intraq.teacher.train as train_module
    from intraq.artifacts import load_torch

    data = build_data(DataConfig("digits"))
    cfg = TeacherConfig(name="digits_cnn", train_epochs=2, train_batch_size=64)

    def interrupted_evaluation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the epoch's test top-1 is measured
        return 50.0

    monkeypatch.setattr(train_module, "evaluate", interrupted_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg, data, tmp_path / "t.pt", seed=0, device=torch.device("cpu"), progress=False, eval_every=1)
    state = load_torch(tmp_path / "t.state")
    assert state["epoch"] == 0 and state["history"] == [{**state["history"][0], "test_top1": 50.0}]


@pytest.mark.parametrize("channels_last,compile", [(True, False), (True, True)])
def test_channels_last_and_compiled_teacher_training_take_the_same_steps(tmp_path, channels_last, compile):
    # a speed option only: the same draws and recipe, equal to the reference up to float rounding. Compared over
    # two steps (batch 512), as a fraction of what the steps changed: the early convs' and BNs' gradients are sums
    # with heavy cancellation, so another summation order moves them by ~1-3% of the step (eager float32 against
    # float64 too), and SGD at lr 0.1 amplifies that within tens of steps: longer runs are equal only in
    # distribution. Each sitting says which options it used; the checkpoint is in the default memory format.
    data = build_data(DataConfig("digits"))
    cfg = TeacherConfig(name="digits_cnn", train_epochs=1, train_batch_size=512)
    cpu = torch.device("cpu")
    torch.manual_seed(0)  # the recipe's seed: the initial weights the two steps start from
    initial = build_model("digits_cnn", 10).state_dict()
    reference, ref_car = train_teacher(cfg, data, tmp_path / "a.pt", seed=0, device=cpu, progress=False)
    fast, fast_car = train_teacher(cfg, data, tmp_path / "b.pt", seed=0, device=cpu, progress=False,
                                   channels_last=channels_last, compile=compile)
    for (name, a), b in zip(reference.state_dict().items(), fast.state_dict().values(), strict=True):
        assert b.is_contiguous(), name
        if a.is_floating_point():
            assert (b - a).norm() <= 0.05 * (a - initial[name]).norm(), name
    assert fast_car["history"][0]["train_loss"] == pytest.approx(ref_car["history"][0]["train_loss"], rel=1e-5)
    assert [(s["channels_last"], s["compiled"]) for s in fast_car["sittings"]] == [(channels_last, compile)]
    assert [(s["channels_last"], s["compiled"]) for s in ref_car["sittings"]] == [(False, False)]
    load_teacher_weights(build_model("digits_cnn", 10), tmp_path / "b.pt")  # its sidecar's hash matches
