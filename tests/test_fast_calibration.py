"""The fast path's calibration (`intraq.fast.calibration`) equals the reference `calibrate` exactly on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from intraq.config import QuantConfig
from intraq.fast.calibration import FastCalibration
from intraq.finetune.trainer import ImageSetCalibration, calibrate
from intraq.quantize import act_quantizers, quantize_model
from intraq.synthesis.gdfq import GdfqCalibrationSource
from intraq.teacher.models import build_model

CPU = torch.device("cpu")


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("digits_cnn", 10).eval()


def _gdfq(teacher: torch.nn.Module, conditional_bn: bool = True) -> GdfqCalibrationSource:
    return GdfqCalibrationSource(teacher, 10, 16, 16, 1e-3, 8, CPU, torch.Generator().manual_seed(3), conditional_bn)


def _gdfq_embedding(teacher: torch.nn.Module) -> GdfqCalibrationSource:
    return _gdfq(teacher, conditional_bn=False)  # CIFAR's generator (label embedding)


def _images(_teacher: torch.nn.Module) -> ImageSetCalibration:
    g = torch.Generator().manual_seed(1)
    return ImageSetCalibration(torch.randn(40, 3, 16, 16, generator=g), 8, torch.Generator().manual_seed(2), CPU)


class _Plain:
    """A source of no kind the fast path knows: it must get the reference loop."""

    def __init__(self, _teacher: torch.nn.Module) -> None:
        self.g = torch.Generator().manual_seed(4)

    def next_batch(self) -> torch.Tensor:
        return torch.randn(8, 3, 16, 16, generator=self.g)

    def state_dict(self) -> dict:
        return {"rng": self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["rng"])


def _state(student: torch.nn.Module, source) -> dict[str, torch.Tensor]:
    out = {f"student.{k}": v for k, v in student.state_dict().items()}
    if isinstance(source, GdfqCalibrationSource):
        out |= {f"generator.{k}": v for k, v in source.model.state_dict().items()}
        for i, s in enumerate(source.optimizer.state.values()):
            out |= {f"adam.{i}.{k}": v for k, v in s.items()}
    return out


@pytest.mark.parametrize("make_source", [_gdfq, _gdfq_embedding, _images, _Plain],
                         ids=["gdfq-ccbn", "gdfq-embedding", "image-set", "other"])
def test_fast_calibration_equals_the_reference_exactly(make_source):
    torch.set_num_threads(1)
    teacher = _teacher()
    student = quantize_model(teacher, QuantConfig())
    ref_student, fast_student = copy.deepcopy(student), copy.deepcopy(student)
    ref_source, fast_source = make_source(copy.deepcopy(teacher)), make_source(copy.deepcopy(teacher))
    fast = FastCalibration(fast_student, fast_source, CPU, "cudagraph")  # no CUDA here: the same step, eager
    for _ in range(2):  # two epochs: the second goes through the step runner alone
        calibrate(ref_student, ref_source, 5)
        fast.epoch(5)
    ref, got = _state(ref_student, ref_source), _state(fast_student, fast_source)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert torch.equal(ref_source.state_dict()["rng"], fast_source.state_dict()["rng"])  # the same draws
    assert all(not q.calibrating for q in act_quantizers(fast_student))  # frozen after each epoch
    assert all(int(q.steps) == 10 for q in act_quantizers(fast_student))
    if isinstance(ref_source, GdfqCalibrationSource):
        assert fast_source.last_loss == pytest.approx(ref_source.last_loss, rel=0, abs=0)


def test_a_captured_runs_adam_state_loads_back_into_the_plain_reference():
    """A checkpoint written mid-calibration by a captured GPU run (Adam capturable, step counts on the device)
    resumes in the reference path: the loaded optimizer is plain Adam again, its step counts on the host."""
    teacher = _teacher()
    source = _gdfq(teacher)
    source.next_batch()
    state = copy.deepcopy(source.state_dict())
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True
    again = _gdfq(copy.deepcopy(teacher))
    again.load_state_dict(state)
    assert all(not g["capturable"] for g in again.optimizer.param_groups)
    assert all(s["step"].device.type == "cpu" for s in again.optimizer.state.values())
    again.next_batch()  # plain Adam steps on (a capturable one would refuse CPU parameters)
    assert all(float(s["step"]) == 2 for s in again.optimizer.state.values())
