import pytest
import torch

from intraq.finetune.stability import momentum_lr_bound, top_hessian_eigenvalue


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.9, True)])
def test_the_lr_bound_is_where_torchs_sgd_starts_to_diverge(momentum, nesterov):
    curvature = 250.0
    bound = momentum_lr_bound(curvature, momentum, nesterov)

    def final_distance(lr: float) -> float:
        w = torch.nn.Parameter(torch.ones(()))
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=nesterov)
        for _ in range(400):
            opt.zero_grad()
            (0.5 * curvature * w * w).backward()
            opt.step()
        return abs(w.item())

    assert final_distance(0.97 * bound) < 1.0  # shrinks (slowly, this close to the bound)
    assert not final_distance(1.03 * bound) <= 1e3  # grows without limit (to inf/NaN for the fast growers)
    assert momentum_lr_bound(0.0, momentum, nesterov) == float("inf")
    # weight decay adds its coefficient to the curvature
    assert momentum_lr_bound(curvature - 5.0, momentum, nesterov, weight_decay=5.0) == pytest.approx(bound)


def test_power_iteration_finds_the_largest_eigenvalue_of_a_known_hessian():
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator))
    eigenvalues = torch.tensor([40.0, 12.0, 5.0, 1.0, 0.5, 0.1])
    hessian = q @ torch.diag(eigenvalues) @ q.T
    a = torch.nn.Parameter(torch.randn(4, generator=generator))
    b = torch.nn.Parameter(torch.randn(2, generator=generator))

    def loss():
        w = torch.cat([a, b])
        return 0.5 * w @ hessian @ w  # a quadratic: its Hessian is `hessian` everywhere

    result = top_hessian_eigenvalue(loss, [a, b], iterations=200, tolerance=1e-7, generator=generator)
    assert result.converged
    assert result.top_eigenvalue == pytest.approx(40.0, rel=1e-4)


def test_power_iteration_through_the_straight_through_quantizer():
    # The lineage's STE passes gradients unchanged, so second derivatives go through it too (no error, finite).
    from intraq.config import QuantConfig
    from intraq.quantize import quantize_model, set_act_calibration

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    student = quantize_model(model, QuantConfig(weight_bits=4, act_bits=4))
    x = torch.randn(8, 3, 8, 8)
    set_act_calibration(student, True)
    with torch.no_grad():
        student(x)
    set_act_calibration(student, False)
    result = top_hessian_eigenvalue(lambda: student(x).pow(2).mean(), list(student.parameters()), iterations=10)
    assert torch.isfinite(torch.tensor(result.estimates)).all() and result.top_eigenvalue > 0


def _probe_module():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("probe_finetune", root / "bench" / "probe_finetune.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


SMALL_SMOKE_PROBE = ["--profile", "smoke", "--threads", "1", "--set", "synth.num_images=64", "--set",
                     "synth.iterations=20", "--set", "finetune.iters_per_epoch=5"]


def _run_probe(probe, tmp_path, out, *args: str) -> dict:
    import json

    assert probe.main([*SMALL_SMOKE_PROBE, "--artifacts", str(tmp_path / "artifacts"), "--out", str(out), *args]) == 0
    (record,) = out.glob("*.json")
    return json.loads(record.read_text())


def test_the_probe_records_the_sharpness_without_changing_its_steps(tmp_path):
    probe = _probe_module()

    def run(sharpness: int, out) -> dict:
        return _run_probe(probe, tmp_path, out, "--steps", "3", "--sharpness", str(sharpness))

    with_sharpness, without = run(4, tmp_path / "a"), run(0, tmp_path / "b")
    measured = with_sharpness["sharpness"]
    assert measured["iterations"] >= 2 and measured["top_eigenvalue"] > 0
    ft = with_sharpness["config"]["finetune"]
    assert measured["lr_bound"] == pytest.approx(
        momentum_lr_bound(measured["top_eigenvalue"] + ft["weight_decay"], ft["momentum"], ft["nesterov"]))
    assert "sharpness" not in without
    assert [s["kd_loss"] for s in with_sharpness["steps"]] == [s["kd_loss"] for s in without["steps"]]
    assert with_sharpness["test_top1_after_steps"] == without["test_top1_after_steps"]


def test_the_probe_starts_from_a_stage2_checkpoint_when_given_one(tmp_path):
    # --state measures a run's student along the way (issue 17): the probe must use the checkpoint's weights,
    # not a freshly calibrated student, and say which file it read.
    from intraq.artifacts import sha256_of
    from intraq.config import apply_overrides
    from intraq.data import build_data
    from intraq.device import pick_device
    from intraq.evaluate import evaluate
    from intraq.profiles import get_profile
    from intraq.quantize import quantize_model, set_act_calibration
    from intraq.teacher.load import get_teacher

    probe = _probe_module()
    calibrated = _run_probe(probe, tmp_path, tmp_path / "a", "--steps", "0")
    cfg = apply_overrides(get_profile("smoke"), [])
    device = pick_device("cpu")
    data = build_data(cfg.data)
    teacher = get_teacher(cfg.teacher, data, device, tmp_path / "artifacts", progress=False)
    student = quantize_model(teacher.model, cfg.quant).eval()
    set_act_calibration(student, True)
    with torch.no_grad():  # ranges from noise, then a student unlike any calibrated one: constant logits
        student(torch.randn(16, *data.test[0][0].shape))
        set_act_calibration(student, False)
        for module in student.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
    expected = evaluate(student, data.test, cfg.finetune.eval_batch_size, device)
    state = tmp_path / "finetune.pt"
    torch.save({"student": student.state_dict(), "epoch": 7, "history": [{"epoch": 7, "acc": expected}]}, state)
    def no_calibration(*args, **kwargs):
        raise AssertionError("a student from --state keeps the checkpoint's activation ranges")

    calibrate = probe.calibrate
    probe.calibrate = no_calibration
    try:
        loaded = _run_probe(probe, tmp_path, tmp_path / "b", "--steps", "0", "--state", str(state))
    finally:
        probe.calibrate = calibrate
    assert loaded["test_top1_after_steps"] == pytest.approx(expected)
    assert loaded["test_top1_after_steps"] != pytest.approx(calibrated["test_top1_after_steps"])
    assert loaded["state"]["epoch"] == 7 and loaded["state"]["sha256"] == sha256_of(state)

    def refused(state_file) -> str:
        with pytest.raises(SystemExit) as error:
            probe.main([*SMALL_SMOKE_PROBE, "--artifacts", str(tmp_path / "artifacts"), "--out", str(tmp_path / "c"),
                        "--steps", "0", "--state", str(state_file)])
        return str(error.value)

    torch.save({"weights": {}}, tmp_path / "other.pt")
    assert "not a stage-2 checkpoint" in refused(tmp_path / "other.pt")
    torch.save({"students": [], "epoch": 3}, tmp_path / "finetune-fast.pt")
    assert "fast-path checkpoint" in refused(tmp_path / "finetune-fast.pt")
    assert "no such file" in refused(tmp_path / "missing.pt")


def test_with_frozen_bn_the_sharpness_depends_on_the_weight_scale_not_only_on_the_function():
    # conv -> BN (eval) -> ReLU -> linear. Scaling the conv by c and BN's running mean by c, variance by c^2 keeps
    # the function (eps aside) and its quantized student, and divides the curvature in the conv's weights by c^2:
    # why a teacher's recipe moves the stage-2 lr bound whatever its accuracy.
    nn = torch.nn
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, eps=1e-12)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4))
        bn.running_var.copy_(torch.rand(4) + 0.5)
        bn.weight.copy_(torch.rand(4) + 0.5)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(16, 3, 8, 8)
    target = torch.randn(16, 3)

    def sharpness(m):
        loss = lambda: (m(x) - target).pow(2).mean()  # noqa: E731
        return top_hessian_eigenvalue(loss, [m[0].weight], iterations=200, tolerance=1e-8,
                                      generator=torch.Generator().manual_seed(1)).top_eigenvalue

    import copy

    c = 2.0  # a power of two: the per-channel weight grid scales exactly with it
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[0].weight.mul_(c)
        scaled[1].running_mean.mul_(c)
        scaled[1].running_var.mul_(c * c)
    torch.testing.assert_close(scaled(x), model(x))
    assert sharpness(scaled) == pytest.approx(sharpness(model) / c**2, rel=1e-3)

    # and their W4A4 students (per-channel min/max weights, activation ranges calibrated on the same batch) agree
    from intraq.config import QuantConfig
    from intraq.quantize import quantize_model, set_act_calibration

    students = [quantize_model(m, QuantConfig(weight_bits=4, act_bits=4)).eval() for m in (model, scaled)]
    for student in students:
        set_act_calibration(student, True)
        with torch.no_grad():
            student(x)
        set_act_calibration(student, False)
    torch.testing.assert_close(students[1](x), students[0](x))


def test_a_failed_sharpness_measurement_is_recorded_not_raised(monkeypatch):
    # a diagnostic must not stop the hours-long run it describes (e.g. out of memory at ImageNet scale)
    import intraq.finetune.stability as stability
    from intraq.config import FinetuneConfig

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(stability, "top_hessian_eigenvalue", out_of_memory)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    result = stability.kd_sharpness(net, net, torch.randn(8, 3, 2, 2), torch.randint(0, 10, (8,)),
                                    lambda x, g: x, FinetuneConfig(batch_size=4), 0, 5, torch.device("cpu"))
    assert result["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "top_eigenvalue" not in result and result["seconds"] >= 0
