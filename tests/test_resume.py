"""Mid-run resume of every long loop, exactly: synthesis batches (IntraQ, ADI, DeepInversion) interrupted inside
a batch, KD fine-tuning and Qimera interrupted inside an epoch; the divergence stop and the explosion flag of the
shared stage-2 loop; its MultiStepLR against the lineage's policy; SIGTERM through the CLI."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_finetune import _setup
from torch import nn

import intraq.synthesis.driver as driver_mod
from intraq.baselines.qimera import run_qimera
from intraq.config import FinetuneConfig, RunConfig
from intraq.data.base import DataSplits, Normalization, TensorImageDataset
from intraq.finetune.augment import make_finetune_augment
from intraq.finetune.loop import EXPLOSION_FACTOR, MultiStepLR, flag_losses, seek
from intraq.finetune.trainer import finetune, multi_step_lr
from intraq.quantize import quantize_model
from intraq.synthesis.base import SynthContext
from intraq.synthesis.deepinversion import DeepInversionConfig, generate_deepinversion
from intraq.synthesis.gdfq import GdfqCalibrationSource, synthesize_gdfq
from intraq.synthesis.intraq import generate
from intraq.teacher.models import build_model

REPO = Path(__file__).resolve().parents[1]
NORM = Normalization((0.5,) * 3, (0.25,) * 3)


def _teacher(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_model("digits_cnn", num_classes).eval()


class Interrupt:
    """A forward hook that raises on the model's n-th forward call (Ctrl-C, or a crash, mid-iteration)."""

    def __init__(self, model: nn.Module, at_call: int, error: type[BaseException] = KeyboardInterrupt) -> None:
        self.calls, self.at_call, self.error = 0, at_call, error
        self.handle = model.register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == self.at_call:
            raise self.error("simulated interruption")

    def __enter__(self) -> Interrupt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


# ----------------------------------------------------------------------------------------------- synthesis


def _synth_ctx(method: str, work: Path, teacher: nn.Module, student: nn.Module | None = None) -> SynthContext:
    cfg = RunConfig()
    cfg.synth.method = method
    cfg.synth.num_images, cfg.synth.batch_size, cfg.synth.iterations = 16, 8, 8
    cfg.synth.margin_low = 0.3  # MDC active in batch 1
    data = DataSplits("digits", None, None, teacher.output.out_features, NORM, 16)
    return SynthContext(cfg, teacher, data, torch.device("cpu"), work, student=student, progress=False)


def _synthesize(method: str, work: Path, teacher: nn.Module, student: nn.Module | None = None):
    ctx = _synth_ctx(method, work, teacher, student)
    if method == "deepinversion":
        base = DeepInversionConfig.cifar_preset().for_image_size(16)
        di = dataclasses.replace(base, num_images=16, batch_size=8, iterations=8, lr=0.1, lr_schedule="warmup-cosine",
                                 warmup_iterations=2, flip=True)
        return generate_deepinversion(ctx, di)
    return generate(ctx, method)


@pytest.mark.parametrize("method", ["intraq", "adi", "deepinversion"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_batch_interrupted_mid_optimization_resumes_exactly(tmp_path, monkeypatch, method, error):
    """Ctrl-C inside batch 1 saves its state at the last finished iteration; a crash (RuntimeError, like a
    SIGKILL) leaves the last periodic checkpoint (here one per iteration). Both resume to the same set."""
    teacher = _teacher()
    student = copy.deepcopy(teacher) if method == "adi" else None
    direct = _synthesize(method, tmp_path / "direct", teacher, student)
    if error is RuntimeError:
        monkeypatch.setattr(driver_mod, "CHECKPOINT_SECONDS", 0.0)
    # Teacher forwards: 8 per batch + 1 accuracy check (+ MDC centres for IntraQ): call 15 is mid-batch 1.
    with Interrupt(teacher, at_call=15, error=error), pytest.raises(error):
        _synthesize(method, tmp_path / "run", teacher, student)
    (partial,) = (tmp_path / "run").rglob("*.partial.pt")
    assert torch.load(partial, weights_only=True)["iteration"] > 0
    resumed = _synthesize(method, tmp_path / "run", teacher, student)
    assert resumed.meta["reused_batches"] == 1
    assert torch.equal(resumed.images, direct.images) and torch.equal(resumed.labels, direct.labels)
    strip = ("seconds", "ran_on")
    for a, b in zip(resumed.meta["batches"], direct.meta["batches"], strict=True):
        assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
    assert not list((tmp_path / "run").rglob("*.partial.pt*"))  # deleted, checksum too, once the batch is written


def test_gdfq_generator_training_resumes_exactly(tmp_path, monkeypatch):
    """A GDFQ step changes its state throughout, so an interrupt keeps the last periodic checkpoint."""
    monkeypatch.setattr(driver_mod, "CHECKPOINT_SECONDS", 0.0)
    teacher = _teacher(10)
    direct = synthesize_gdfq(_synth_ctx("gdfq", tmp_path / "direct", teacher))
    with Interrupt(teacher, at_call=5), pytest.raises(KeyboardInterrupt):
        synthesize_gdfq(_synth_ctx("gdfq", tmp_path / "run", teacher))
    (partial,) = (tmp_path / "run").glob("gdfq-*.partial.pt")
    assert torch.load(partial, weights_only=True)["iteration"] == 4
    resumed = synthesize_gdfq(_synth_ctx("gdfq", tmp_path / "run", teacher))
    assert torch.equal(resumed.images, direct.images) and torch.equal(resumed.labels, direct.labels)
    assert resumed.meta == direct.meta and not partial.exists()


# ----------------------------------------------------------------------------------------------- stage 2


@pytest.mark.parametrize(
    ("base", "steps", "decay"), [(1e-4, (20, 40, 60), 0.1), (1e-3, (2,), 0.1), (0.01, (1, 1, 3), 0.3), (0.5, (), 0.1)]
)
def test_multistep_lr_is_the_lineage_policy_exactly(base, steps, decay):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    schedule = MultiStepLR(optimizer, list(steps), decay)
    for epoch in range(80):
        seek([schedule], epoch)
        assert optimizer.param_groups[0]["lr"] == multi_step_lr(base, epoch, steps, decay)  # ==, not approx


FT = FinetuneConfig(epochs=5, iters_per_epoch=3, batch_size=16, lr=1e-3, lr_steps=(3,), calib_epochs=2)


def _finetune(path: Path, cfg: FinetuneConfig = FT, evaluate=None):
    teacher, student, images, labels, calibration = _setup()
    result = finetune(
        student, teacher, images, labels, evaluate or (lambda m: 50.0), calibration, make_finetune_augment(cfg), cfg,
        torch.device("cpu"), seed=3, checkpoint_path=path, progress=False,
    )
    return student, result


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_finetune_interrupted_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    straight_student, straight = _finetune(tmp_path / "straight.pt")
    import intraq.finetune.trainer as trainer_mod

    calls = {"n": 0}
    original = trainer_mod.kd_backward

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # second step of epoch 3 (epochs 0-1 calibrate)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "kd_backward", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _finetune(tmp_path / "resumed.pt")
    monkeypatch.setattr(trainer_mod, "kd_backward", original)
    assert torch.load(tmp_path / "resumed.pt", weights_only=True)["epoch"] == 2
    student, resumed = _finetune(tmp_path / "resumed.pt")
    assert resumed.history == straight.history  # losses, lrs and accuracies: ==
    assert _same_state(student, straight_student)
    assert [s["first_epoch"] for s in resumed.sittings] == [0, 3]


@pytest.mark.parametrize("source", ["images", "gdfq"])
def test_finetune_interrupted_in_calibration_resumes_exactly(tmp_path, source):
    """The calibration source's state is checkpointed too: epoch 1 of 2 calibration epochs is interrupted."""

    def run(path: Path, interrupt_at: int | None = None):
        teacher, student, images, labels, calibration = _setup()
        if source == "gdfq":
            rng = torch.Generator().manual_seed(5)
            calibration = GdfqCalibrationSource(teacher, 10, 16, 16, 1e-3, 8, torch.device("cpu"), rng, False)
        hook = Interrupt(student, interrupt_at) if interrupt_at else None
        try:
            result = finetune(
                student, teacher, images, labels, lambda m: 50.0, calibration, make_finetune_augment(FT), FT,
                torch.device("cpu"), seed=3, checkpoint_path=path, progress=False,
            )
        finally:
            if hook is not None:
                hook.handle.remove()
        return student, result

    straight_student, straight = run(tmp_path / "straight.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed.pt", interrupt_at=5)  # student forward 5: calibration epoch 1, step 2
    waiting = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert waiting["epoch"] == 0 and "calibration" in waiting
    student, resumed = run(tmp_path / "resumed.pt")
    assert resumed.history == straight.history and _same_state(student, straight_student)
    # Once calibration is over its source's state is never needed again, and checkpoints leave it out.
    assert "calibration" not in torch.load(tmp_path / "straight.pt", weights_only=True)


def test_explosion_is_flagged_without_stopping(tmp_path):
    """lr 1.0 on the tiny model: the KD loss grows from ~2.5 to thousands while staying finite."""
    cfg = dataclasses.replace(FT, epochs=6, lr=1.0, lr_steps=(), calib_epochs=1, momentum=0.9)
    _, result = _finetune(tmp_path / "ft.pt", cfg)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.diverged_at_epoch is None and len(result.history) == cfg.epochs  # it ran to the end
    assert result.exploded_at_epoch is not None
    first_flagged = result.history[result.exploded_at_epoch]
    assert first_flagged["exploded"] and first_flagged["loss"] > EXPLOSION_FACTOR * losses[0]
    assert not any(h.get("exploded") for h in result.history[: result.exploded_at_epoch])
    _, stable = _finetune(tmp_path / "stable.pt")
    assert stable.exploded_at_epoch is None and stable.diverged_at_epoch is None


def test_flag_rule():
    history = [{"epoch": 0}, {"epoch": 1, "loss": 2.0}]
    for loss, exploded, diverged in [(19.9, False, False), (20.1, True, False), (float("inf"), False, True)]:
        record = {"epoch": 2, "loss": loss}
        flag_losses(record, history, ("loss",))
        assert (record["exploded"], record["diverged"]) == (exploded, diverged)
    calibration = {"epoch": 0}
    flag_losses(calibration, [], ("loss",))
    assert "exploded" not in calibration and "diverged" not in calibration
    warmup = {"epoch": 0, "loss_student": None, "loss_generator": float("nan")}  # Qimera before the student trains
    flag_losses(warmup, [], ("loss_student", "loss_generator"))
    assert warmup["diverged"] and not warmup["exploded"]


def _qimera_setup(lr: float = 1e-3):
    torch.manual_seed(0)
    teacher = build_model("digits_cnn", 10).eval()
    cfg = RunConfig(seed=2)
    q = cfg.qimera
    q.epochs, q.iters_per_epoch, q.batch_size, q.latent_dim, q.mix_prob = 5, 3, 8, 16, 0.5
    q.warmup_epochs, q.calib_epochs, q.lr_steps, q.lr = 1, 2, (3,), lr
    student = quantize_model(copy.deepcopy(teacher), cfg.quant)
    images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.zeros(4, dtype=torch.long), NORM)
    data = DataSplits(name="digits", train=ds, test=ds, num_classes=10, norm=NORM, image_size=16)
    return teacher, student, data, cfg


def _weights_stub(model: nn.Module) -> float:
    return float(sum(p.double().sum() for p in model.parameters()).item() % 100)


@pytest.mark.parametrize("at_call", [5, 8])
def test_qimera_interrupted_mid_epoch_resumes_exactly(tmp_path, at_call):
    teacher, student, data, cfg = _qimera_setup()
    straight = run_qimera(teacher, student, data, cfg, torch.device("cpu"), _weights_stub, False, tmp_path / "a.pt")
    teacher2, student2, data, cfg = _qimera_setup()
    # Teacher forwards: 3 per epoch; call 5 is inside epoch 1 (calibrating, student trained), call 8 in epoch 2.
    with Interrupt(teacher2, at_call=at_call), pytest.raises(KeyboardInterrupt):
        run_qimera(teacher2, student2, data, cfg, torch.device("cpu"), _weights_stub, False, tmp_path / "b.pt")
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == (at_call - 1) // 3 - 1
    resumed = run_qimera(teacher2, student2, data, cfg, torch.device("cpu"), _weights_stub, False, tmp_path / "b.pt")
    assert resumed["history"] == straight["history"]
    assert {k: v for k, v in resumed.items() if k not in ("seconds", "sittings")} == {
        k: v for k, v in straight.items() if k not in ("seconds", "sittings")
    }
    assert _same_state(student2, student)
    assert [s["first_epoch"] for s in resumed["sittings"]] == [0, (at_call - 1) // 3]


def test_qimera_stops_on_divergence(tmp_path):
    teacher, student, data, cfg = _qimera_setup(lr=1e12)
    out = run_qimera(teacher, student, data, cfg, torch.device("cpu"), lambda m: 10.0, False, tmp_path / "q.pt")
    stop = out["diverged_at_epoch"]
    assert stop is not None and 1 <= stop < cfg.qimera.epochs - 1
    assert [h["epoch"] for h in out["history"]] == list(range(stop + 1)) and out["history"][-1]["diverged"]
    again = run_qimera(teacher, student, data, cfg, torch.device("cpu"), lambda m: 10.0, False, tmp_path / "q.pt")
    assert again["diverged_at_epoch"] == stop and len(again["history"]) == len(out["history"])


# ----------------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_checkpoints_and_exits_like_ctrl_c(tmp_path):
    """What Slurm sends before its time limit: the CLI saves the batch in progress and exits 130."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", INTRAQ_ARTIFACTS=str(tmp_path / "art"))
    settings = ["teacher.train_epochs=1", "synth.num_images=8", "synth.batch_size=8", "synth.iterations=5000"]
    command = [sys.executable, "-m", "intraq.cli", "run", "--profile", "smoke", "--method", "intraq",
               "--threads", "1", "--results", str(tmp_path / "results")]
    for item in settings:
        command += ["--set", item]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr_file)
        deadline = time.monotonic() + 240
        while not re.search(r"intraq synthesis: .*\| *[1-9][0-9]*/5000", log.read_text()):  # into the loop
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    stderr = log.read_text()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    (partial,) = (tmp_path / "art" / "synthesis").rglob("*.partial.pt")
    assert torch.load(partial, weights_only=True)["iteration"] > 0
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


def test_sigterm_stops_a_bench_case_like_ctrl_c(tmp_path):
    """`pytest bench` under Slurm: SIGTERM mid-case saves the batch in progress, as the CLI does, and no result."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", INTRAQ_ARTIFACTS=str(tmp_path / "art"))
    command = [sys.executable, "-m", "pytest", str(REPO / "bench" / "test_tables.py"), "-q", "-p", "no:cacheprovider",
               "--profile", "smoke", "--seeds", "1", "--results", str(tmp_path / "results"), "-k", "mdc_vs_adi-mdc-"]
    for item in ["teacher.train_epochs=1", "synth.num_images=8", "synth.batch_size=8", "synth.iterations=50000"]:
        command += ["--set", item]
    log = tmp_path / "out.txt"
    with log.open("w") as out_file:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not list((tmp_path / "art").glob("synthesis/*/")):  # the case reached its synthesis
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(15)  # past the set's setup (the bench shows no progress bar to wait for), into its loop
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, log.read_text()
    (partial,) = (tmp_path / "art" / "synthesis").rglob("*.partial.pt")
    assert torch.load(partial, weights_only=True)["iteration"] > 0
    assert not list((tmp_path / "results").rglob("*-seed0.json"))


def test_a_checkpoint_of_older_code_past_calibration_resumes_and_later_ones_stay_small(tmp_path, monkeypatch):
    """Older code kept the calibration source's state in every checkpoint; resumed at the last calibration epoch,
    such a checkpoint gives the same run, and the checkpoints written after it leave that state out."""
    from intraq.artifacts import save_torch

    straight_student, straight = _finetune(tmp_path / "straight.pt")
    import intraq.finetune.trainer as trainer_mod

    original = trainer_mod.kd_backward

    def interrupting(*args, **kwargs):
        raise KeyboardInterrupt  # the first fine-tuning step: the checkpoint is the last calibration epoch's

    monkeypatch.setattr(trainer_mod, "kd_backward", interrupting)
    path = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        _finetune(path)
    monkeypatch.setattr(trainer_mod, "kd_backward", original)
    blob = torch.load(path, weights_only=True)
    assert blob["epoch"] == FT.calib_epochs - 1 and "calibration" not in blob
    blob["calibration"] = _setup()[4].state_dict()  # as older code wrote it
    save_torch(blob, path)
    student, resumed = _finetune(path)
    assert resumed.history == straight.history and _same_state(student, straight_student)
    assert "calibration" not in torch.load(path, weights_only=True)
