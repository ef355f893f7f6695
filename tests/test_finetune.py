import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intraq.config import FinetuneConfig, QuantConfig
from intraq.finetune.augment import make_finetune_augment
from intraq.finetune.kd import kd_loss_intraq
from intraq.finetune.trainer import EpochSampler, ImageSetCalibration, finetune, multi_step_lr, summarize
from intraq.quantize import quantize_model
from intraq.teacher.models import build_model


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([1, 0])
    T, alpha = 2.0, 3.0
    p_t = torch.softmax(t / T, 1)
    log_p_s = torch.log_softmax(s / T, 1)
    kl_rows = (p_t * (p_t.log() - log_p_s)).sum(1)
    ce = -torch.log_softmax(s, 1)[torch.arange(2), y]
    expected = alpha * T * T * kl_rows.mean() + ce.mean()
    assert kd_loss_intraq(s, t, y, T, alpha).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kd_loss_is_cross_entropy_when_student_equals_teacher():
    logits = torch.randn(4, 5)
    y = torch.randint(0, 5, (4,))
    # KL is 0 up to float32 rounding, which the alpha*T^2 = 8000 factor amplifies to ~1e-4.
    assert kd_loss_intraq(logits, logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-3)


def test_multi_step_policy_is_the_lineage_one():
    # Epoch e (0-based) uses base * 0.1^(#steps s with e + 1 > s): epochs 0..19 at base, 20..39 at base/10, ...
    lrs = [multi_step_lr(1e-4, e, (20, 40, 60), 0.1) for e in (0, 19, 20, 39, 40, 60, 150)]
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-7, 1e-7])


def test_epoch_sampler_drops_last_and_reshuffles():
    sampler = EpochSampler(10, 4, torch.Generator().manual_seed(0))
    sampler.new_epoch()
    first_pass = [sampler.next() for _ in range(2)]
    assert all(len(b) == 4 for b in first_pass)
    assert len(set(torch.cat(first_pass).tolist())) == 8  # no repeats inside a pass
    assert len(sampler.next()) == 4  # the third batch comes from a fresh shuffle (2 leftovers dropped)
    assert EpochSampler(3, 16, torch.Generator()).batch_size == 3  # batch = min(batch_size, N)


def test_summary_labels_and_later_ties():
    history = [
        {"epoch": 0, "acc": 50.0}, {"epoch": 1, "acc": 60.0}, {"epoch": 2, "acc": 70.0},
        {"epoch": 3}, {"epoch": 4, "acc": 70.0}, {"epoch": 5, "acc": 65.0},
    ]
    result = summarize(history, calib_epochs=2, seconds={})
    assert result.acc_after_calibration == 60.0
    assert result.acc_final == 65.0
    assert (result.acc_best, result.best_epoch) == (70.0, 4)


def test_augment_keeps_shape_and_is_seeded():
    augment = make_finetune_augment(FinetuneConfig())
    x = torch.randn(8, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    teacher = build_model("digits_cnn", 10).eval().requires_grad_(False)
    images = torch.randn(48, 3, 16, 16)
    labels = torch.randint(0, 10, (48,))
    student = quantize_model(teacher, QuantConfig(weight_bits=4, act_bits=4))
    calibration = ImageSetCalibration(images, 16, torch.Generator().manual_seed(5), torch.device("cpu"))
    return teacher, student, images, labels, calibration


CFG = FinetuneConfig(epochs=5, iters_per_epoch=3, batch_size=16, lr=1e-3, lr_steps=(3,), calib_epochs=2)


def _run(tmp_path, evaluate, name="ft.pt"):
    teacher, student, images, labels, calibration = _setup()
    result = finetune(
        student, teacher, images, labels, evaluate, calibration, make_finetune_augment(CFG), CFG,
        torch.device("cpu"), seed=3, checkpoint_path=tmp_path / name, progress=False,
    )
    return student, result


def _accuracy_stub(model: nn.Module) -> float:
    # A deterministic function of the weights, standing in for test accuracy.
    return float(sum(p.double().sum() for p in model.parameters()).item() % 100)


def test_finetune_trains_and_records_phases(tmp_path):
    teacher, student, images, labels, calibration = _setup()
    before = [p.clone() for p in student.parameters()]
    student, result = _run(tmp_path, _accuracy_stub)
    phases = [h["phase"] for h in result.history]
    assert phases == ["calibration", "calibration", "finetune", "finetune", "finetune"]
    assert [h["lr"] for h in result.history[2:]] == pytest.approx([1e-3, 1e-4, 1e-4])
    assert all(math.isfinite(h["loss"]) for h in result.history[2:])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert not student.training  # eval mode throughout (frozen BN statistics)


def test_interrupted_finetune_resumes_to_the_same_result(tmp_path):
    _, straight = _run(tmp_path, _accuracy_stub, name="straight.pt")

    calls = {"n": 0}

    def interrupting(model):
        calls["n"] += 1
        if calls["n"] == 4:  # during epoch 3's evaluation
            raise KeyboardInterrupt
        return _accuracy_stub(model)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, interrupting, name="resumed.pt")
    assert (tmp_path / "resumed.pt").exists()
    _, resumed = _run(tmp_path, _accuracy_stub, name="resumed.pt")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4]
    assert [h.get("acc") for h in resumed.history] == [h.get("acc") for h in straight.history]
    assert [h.get("loss") for h in resumed.history] == [h.get("loss") for h in straight.history]  # exactly


def test_measuring_sharpness_when_calibration_ends_changes_nothing_and_survives_a_resume(tmp_path, monkeypatch):
    # a diagnostic: the same run with and without it (exactly, at one thread), and not part of the case's hash
    import dataclasses

    import intraq.finetune.trainer as trainer
    from intraq.config import RunConfig, config_hash

    _, plain = _run(tmp_path, _accuracy_stub, name="plain.pt")
    measured_cfg = dataclasses.replace(CFG, sharpness_iters=4)

    def run(evaluate, name):
        teacher, student, images, labels, calibration = _setup()
        return finetune(student, teacher, images, labels, evaluate, calibration, make_finetune_augment(measured_cfg),
                        measured_cfg, torch.device("cpu"), seed=3, checkpoint_path=tmp_path / name, progress=False)

    measured = run(_accuracy_stub, "measured.pt")
    assert plain.sharpness is None and measured.history == plain.history  # no entry keeps the measurement
    sharp = measured.sharpness
    assert sharp["iterations"] <= 4 and len(sharp["estimates"]) == sharp["iterations"]
    assert sharp["top_eigenvalue"] == sharp["estimates"][-1] > 0
    assert sharp["lr_over_bound"] == pytest.approx(CFG.lr / sharp["lr_bound"])
    calls = {"n": 0}

    def interrupting(model):  # evaluated every epoch: call 3 is epoch 2's, after the measurement's epoch 1 was saved
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return _accuracy_stub(model)

    measurements = []
    real = trainer.kd_sharpness
    monkeypatch.setattr(trainer, "kd_sharpness", lambda *a, **k: measurements.append(1) or real(*a, **k))
    with pytest.raises(KeyboardInterrupt):
        run(interrupting, "resumed.pt")
    assert len(measurements) == 1
    resumed = run(_accuracy_stub, "resumed.pt")
    assert len(measurements) == 1  # the resumed run took it from the checkpoint, not measured again
    def without_time(measurement):
        return {k: v for k, v in measurement.items() if k != "seconds"}

    assert without_time(resumed.sharpness) == without_time(sharp) and resumed.history == plain.history
    base = RunConfig()
    assert config_hash(dataclasses.replace(base, finetune=measured_cfg)) == config_hash(
        dataclasses.replace(base, finetune=CFG))


def test_divergence_stops_the_run_and_is_flagged(tmp_path):
    teacher, student, images, labels, calibration = _setup()
    cfg = FinetuneConfig(epochs=8, iters_per_epoch=3, batch_size=16, lr=1e12, lr_steps=(), calib_epochs=2)
    evaluated = []

    def record_eval(model):
        evaluated.append(len(evaluated))
        return 10.0

    result = finetune(
        student, teacher, images, labels, record_eval, calibration, make_finetune_augment(cfg), cfg,
        torch.device("cpu"), seed=3, checkpoint_path=tmp_path / "ft.pt", progress=False,
    )
    stop = result.diverged_at_epoch
    assert stop is not None and 2 <= stop < 7  # a finetune epoch, and before the end
    assert [h["epoch"] for h in result.history] == list(range(stop + 1))  # nothing after the diverged epoch
    assert result.history[-1]["diverged"] and "acc" in result.history[-1]  # evaluated once more, then stopped
    again = finetune(  # resuming a diverged run does not train on NaN weights
        student, teacher, images, labels, record_eval, calibration, make_finetune_augment(cfg), cfg,
        torch.device("cpu"), seed=3, checkpoint_path=tmp_path / "ft.pt", progress=False,
    )
    assert again.diverged_at_epoch == stop and len(again.history) == len(result.history)


def test_a_stable_run_is_not_flagged(tmp_path):
    _, result = _run(tmp_path, _accuracy_stub)
    assert result.diverged_at_epoch is None
    assert not any(h.get("diverged") for h in result.history)
