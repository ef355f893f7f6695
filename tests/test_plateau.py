import pytest
import torch

from intraq.synthesis.plateau import DevicePlateau


def _torch_lrs(losses, **kw):
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, **kw)
    out = []
    for loss in losses:
        sched.step(loss)
        out.append(opt.param_groups[0]["lr"])
    return out


def _device_lrs(losses, **kw):
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.5)
    sched = DevicePlateau(opt, factor=0.1, **kw)
    out = []
    for loss in losses:
        sched.step(torch.tensor(loss))
        out.append(sched.current_lr())
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_reduce_lr_on_plateau(seed):
    g = torch.Generator().manual_seed(seed)
    # Falling, then noisy-flat, then rising losses, plus exact repeats and a NaN.
    losses = torch.cat([torch.linspace(5, 1, 30), 1 + 0.01 * torch.randn(150, generator=g), torch.linspace(1, 2, 40)])
    losses = losses.tolist() + [1.0] * 20 + [float("nan")] * 3
    kw = {"patience": 7, "min_lr": 1e-4}
    expected = _torch_lrs(losses, **kw)
    assert _device_lrs(losses, **kw) == pytest.approx(expected, rel=1e-6)
    assert min(expected) == pytest.approx(1e-4)  # the floor was reached, so the test covers it


def test_optimizer_uses_the_tensor_lr():
    x = torch.ones(1, requires_grad=True)
    opt = torch.optim.SGD([x], lr=1.0)
    sched = DevicePlateau(opt, patience=0)
    sched.step(torch.tensor(1.0))
    sched.step(torch.tensor(2.0))  # worse once with patience 0: lr 1.0 -> 0.1
    x.grad = torch.ones(1)
    opt.step()
    assert x.item() == pytest.approx(0.9)
