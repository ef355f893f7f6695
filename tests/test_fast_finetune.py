"""Stage 2 fast path (intraq.fast.finetune) against the reference trainer, and stacked runs against runs alone.

Tiny settings on the embedded digits data: a random digits CNN as teacher, 64 random images, a few hundred
KD steps. The fast path replays the reference's random draws, so losses, accuracies and weights agree up to
float rounding (the fast path's SGD and loss sums reorder a few float operations).
"""

from __future__ import annotations

import copy

import pytest
import torch

from intraq.config import DataConfig, FinetuneConfig, QuantConfig
from intraq.data import build_data
from intraq.evaluate import evaluate
from intraq.fast.finetune import FinetuneRun, check_stackable, finetune_fast
from intraq.fast.schedule import epoch_schedule, finetune_lor_settings
from intraq.fast.settings import FastSettings
from intraq.finetune.augment import make_finetune_augment
from intraq.finetune.trainer import EpochSampler, ImageSetCalibration, finetune
from intraq.quantize import quantize_model
from intraq.teacher.models import build_model

CFG = FinetuneConfig(epochs=5, calib_epochs=1, iters_per_epoch=60, batch_size=16, lr=1e-2, lr_steps=(3,),
                     calib_source="train", calib_batch_size=16, eval_every=1)  # 240 KD steps


@pytest.fixture(scope="module")
def setting():
    data = build_data(DataConfig("digits"))
    torch.manual_seed(0)
    teacher = build_model("digits_cnn", 10).eval()
    for bn in teacher.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    test_x, test_y = data.test.batch(slice(0, 300))
    return data, teacher, test_x, test_y


def make_set(seed: int, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def reference_run(teacher, images, labels, test_x, test_y, seed, cfg=CFG):
    student = quantize_model(teacher, QuantConfig())
    calib = ImageSetCalibration(images, cfg.calib_batch_size, torch.Generator().manual_seed(seed + 1), "cpu")
    dataset = torch.utils.data.TensorDataset(test_x, test_y)

    def acc(model):
        return evaluate(model, dataset, 100, "cpu")

    result = finetune(student, copy.deepcopy(teacher), images, labels, acc, calib, make_finetune_augment(cfg),
                      cfg, torch.device("cpu"), seed, progress=False)
    return result, student


def fast_runs(teacher, sets, seeds, cfg=CFG):
    return [FinetuneRun(quantize_model(teacher, QuantConfig()), images, labels,
                        ImageSetCalibration(images, cfg.calib_batch_size, torch.Generator().manual_seed(seed + 1),
                                            "cpu"), seed, cfg)
            for (images, labels), seed in zip(sets, seeds, strict=True)]


def assert_same_history(fast_history, ref_history, loss_rtol=1e-4):
    assert [h["epoch"] for h in fast_history] == [h["epoch"] for h in ref_history]
    for f, r in zip(fast_history, ref_history, strict=True):
        assert f["phase"] == r["phase"]
        if "loss" in r:
            assert f["lr"] == r["lr"]
            assert f["loss"] == pytest.approx(r["loss"], rel=loss_rtol)
        assert ("acc" in f) == ("acc" in r)
        if "acc" in r:
            assert abs(f["acc"] - r["acc"]) <= 100.0 / 300 + 1e-9  # at most one of 300 test images flips


def test_epoch_schedule_replays_the_reference_draws():
    images = torch.randn(40, 3, 16, 16)
    g_ref, g_fast = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s_ref, s_fast = EpochSampler(40, 16, g_ref), EpochSampler(40, 16, g_fast)
    augment = make_finetune_augment(CFG)
    idx, theta = epoch_schedule(s_fast, g_fast, 7, 16, 16, finetune_lor_settings(CFG))
    s_ref.new_epoch()
    from intraq.synthesis.lor import apply_affine
    for t in range(7):
        i = s_ref.next()
        assert torch.equal(i, idx[t])
        torch.testing.assert_close(apply_affine(images[idx[t]], theta[t]), augment(images[i], g_ref), rtol=0, atol=0)
    assert torch.equal(g_ref.get_state(), g_fast.get_state())


def test_fast_finetune_step_equals_the_reference_for_240_steps(setting):
    data, teacher, test_x, test_y = setting
    images, labels = make_set(1)
    ref, ref_student = reference_run(teacher, images, labels, test_x, test_y, seed=5)
    runs = fast_runs(teacher, [(images, labels)], [5])
    (fast,) = finetune_fast(runs, copy.deepcopy(teacher), test_x, test_y, torch.device("cpu"),
                            FastSettings(capture="none"), progress=False)
    assert_same_history(fast.history, ref.history)
    # 4-bit weights amplify rounding differences over hundreds of steps (a weight that crosses a quantization
    # step changes its whole channel), so here the two end points must be much closer to each other than to the
    # start; after a few steps they agree to float rounding (test below).
    def flat(model):
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    start, end_ref, end_fast = (flat(m) for m in (teacher, ref_student, runs[0].student))
    assert float((end_fast - end_ref).norm()) < 0.1 * float((end_ref - start).norm())  # measured: 3%
    assert fast.acc_best == pytest.approx(ref.acc_best, abs=0.34)
    assert fast.fast["capture"] == "none" and "allow_tf32_cudnn" in fast.fast["numeric"]


def test_fast_finetune_steps_equal_the_reference_steps_to_float_rounding(setting):
    _, teacher, test_x, test_y = setting
    images, labels = make_set(1)
    cfg = FinetuneConfig(**{**CFG.__dict__, "epochs": 2, "iters_per_epoch": 3})
    ref, ref_student = reference_run(teacher, images, labels, test_x, test_y, seed=5, cfg=cfg)
    runs = fast_runs(teacher, [(images, labels)], [5], cfg=cfg)
    finetune_fast(runs, copy.deepcopy(teacher), test_x, test_y, torch.device("cpu"), progress=False)
    for (name, p_ref), p_fast in zip(ref_student.named_parameters(), runs[0].student.parameters(), strict=True):
        torch.testing.assert_close(p_fast, p_ref, rtol=1e-6, atol=1e-8, msg=name)


def test_two_stacked_runs_equal_the_two_runs_alone(setting):
    data, teacher, test_x, test_y = setting
    sets, seeds = [make_set(1), make_set(2)], [5, 6]
    cfg = FinetuneConfig(**{**CFG.__dict__, "epochs": 4, "iters_per_epoch": 30})
    alone = [finetune_fast(fast_runs(teacher, [s], [seed], cfg), copy.deepcopy(teacher), test_x, test_y,
                           torch.device("cpu"), FastSettings(), progress=False)[0]
             for s, seed in zip(sets, seeds, strict=True)]
    runs = fast_runs(teacher, sets, seeds, cfg)
    stacked = finetune_fast(runs, copy.deepcopy(teacher), test_x, test_y, torch.device("cpu"), FastSettings(),
                            progress=False)
    for one, both in zip(alone, stacked, strict=True):
        assert_same_history(both.history, one.history)
        assert both.acc_final == pytest.approx(one.acc_final, abs=0.34)
    assert stacked[0].fast["stacked_runs"] == 2
    assert stacked[0].history != stacked[1].history  # the runs really are different runs


def test_the_fast_path_measures_sharpness_as_the_reference_and_changes_nothing(setting):
    import dataclasses

    data, teacher, test_x, test_y = setting
    cfg = dataclasses.replace(CFG, epochs=2, iters_per_epoch=20)
    measured = dataclasses.replace(cfg, sharpness_iters=5)
    images, labels = make_set(7)
    ref, _ = reference_run(teacher, images, labels, test_x, test_y, 7, measured)
    (plain,) = finetune_fast(fast_runs(teacher, [(images, labels)], [7], cfg), copy.deepcopy(teacher), test_x, test_y,
                             torch.device("cpu"), FastSettings(capture="none"), progress=False)
    (fast,) = finetune_fast(fast_runs(teacher, [(images, labels)], [7], measured), copy.deepcopy(teacher), test_x,
                            test_y, torch.device("cpu"), FastSettings(capture="none"), progress=False)
    assert plain.sharpness is None and fast.history == plain.history
    assert fast.sharpness["top_eigenvalue"] == pytest.approx(ref.sharpness["top_eigenvalue"], rel=1e-3)
    assert fast.sharpness["iterations"] == ref.sharpness["iterations"]


def test_stacked_runs_must_share_the_step_shape(setting):
    _, teacher, _, _ = setting
    sets = [make_set(1), make_set(2)]
    runs = fast_runs(teacher, sets, [1, 2])
    runs[1].cfg = FinetuneConfig(**{**CFG.__dict__, "batch_size": 8})
    with pytest.raises(ValueError, match="batch_size"):
        check_stackable(runs)


def test_cudagraph_capture_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        FastSettings(capture="cudagraph").check_device(torch.device("cpu"))
    with pytest.raises(ValueError, match="capture"):
        FastSettings(capture="graphs")


class Crash(Exception):
    """A failure that is no interrupt: only what was written periodically stands."""


def run_interrupted(teacher, sets, seeds, test_x, test_y, cfg, checkpoint, stop_after, how=KeyboardInterrupt):
    """Stop after epoch `stop_after`: by Ctrl-C (the epoch is written then, though the 60 s between writes have
    not passed), or by a crash with a write after every epoch (`checkpoint_seconds=0`)."""
    def on_epoch(epoch):
        if epoch == stop_after:
            raise how

    with pytest.raises(how):
        finetune_fast(fast_runs(teacher, sets, seeds, cfg), copy.deepcopy(teacher), test_x, test_y,
                      torch.device("cpu"), FastSettings(), progress=False, on_epoch=on_epoch,
                      checkpoint_path=checkpoint, checkpoint_seconds=0.0 if how is Crash else 60.0)
    assert checkpoint.exists()
    runs = fast_runs(teacher, sets, seeds, cfg)  # a new process: fresh students and calibration sources
    results = finetune_fast(runs, copy.deepcopy(teacher), test_x, test_y, torch.device("cpu"), FastSettings(),
                            progress=False, checkpoint_path=checkpoint)
    return results, runs


@pytest.mark.parametrize("stop_after", [0, 1, 3, 5],
                         ids=["in-calibration", "after-calibration", "mid-fine-tuning", "after-the-last-epoch"])
@pytest.mark.parametrize("seeds, how", [([5], KeyboardInterrupt), ([5, 6], KeyboardInterrupt), ([5], Crash)],
                         ids=["one-run", "two-stacked", "one-run-crash"])
def test_fast_finetune_interrupted_after_an_epoch_resumes_exactly(setting, tmp_path, stop_after, seeds, how):
    _, teacher, test_x, test_y = setting
    cfg = FinetuneConfig(**{**CFG.__dict__, "epochs": 6, "calib_epochs": 2, "iters_per_epoch": 5,
                            "lr_steps": (4,), "sharpness_iters": 3})  # measured at epoch 1's end: kept across stops
    sets = [make_set(seed) for seed in seeds]
    whole_runs = fast_runs(teacher, sets, seeds, cfg)
    whole = finetune_fast(whole_runs, copy.deepcopy(teacher), test_x, test_y, torch.device("cpu"), FastSettings(),
                          progress=False)
    resumed, runs = run_interrupted(teacher, sets, seeds, test_x, test_y, cfg, tmp_path / "ft.pt", stop_after, how)
    for one, other, run_a, run_b in zip(whole, resumed, whole_runs, runs, strict=True):
        assert other.history == one.history  # losses and accuracies bit for bit
        assert {k: v for k, v in other.sharpness.items() if k != "seconds"} == {
            k: v for k, v in one.sharpness.items() if k != "seconds"}
        for (name, a), b in zip(run_a.student.state_dict().items(), run_b.student.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        assert [s["first_epoch"] for s in other.sittings] == [0, stop_after + 1][:1 + (stop_after < 5)]
        assert all(s["fast"]["capture"] == "none" for s in other.sittings)


def test_a_fast_checkpoint_of_other_runs_is_refused(setting, tmp_path):
    _, teacher, test_x, test_y = setting
    cfg = FinetuneConfig(**{**CFG.__dict__, "epochs": 3, "iters_per_epoch": 2})
    checkpoint = tmp_path / "ft.pt"
    run_interrupted(teacher, [make_set(1)], [5], test_x, test_y, cfg, checkpoint, stop_after=1)
    from intraq.errors import UserInputError

    with pytest.raises(UserInputError, match="seeds \\[6\\].*delete it"):
        finetune_fast(fast_runs(teacher, [make_set(1)], [6], cfg), copy.deepcopy(teacher), test_x, test_y,
                      torch.device("cpu"), progress=False, checkpoint_path=checkpoint)


def test_the_fast_paths_numeric_flags_hold_inside_its_loops_only(setting):
    from intraq.fast.settings import NumericSettings

    _, teacher, test_x, test_y = setting
    cfg = FinetuneConfig(**{**CFG.__dict__, "epochs": 2, "iters_per_epoch": 2})
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    fast = FastSettings(numeric=NumericSettings(allow_tf32_matmul=not before[0], cudnn_benchmark=not before[1]))
    (result,) = finetune_fast(fast_runs(teacher, [make_set(1)], [5], cfg), copy.deepcopy(teacher), test_x, test_y,
                              torch.device("cpu"), fast, progress=False)
    numeric = result.fast["numeric"]
    assert (numeric["allow_tf32_matmul"], numeric["cudnn_benchmark"]) == (not before[0], not before[1])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == before  # restored
