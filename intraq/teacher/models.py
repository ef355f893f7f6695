"""Teacher architectures by name. Each declares `feature_module_name`, its global-pool module.

Every activation is its own `nn.ReLU` module (never a functional call, never one module used twice), so the
quantizer can put one activation quantizer after each ReLU call site, as the GDFQ lineage does (methods §1.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from intraq.registry import Registry

MODELS: Registry[Callable[[int], nn.Module]] = Registry("teacher architecture")


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; 1x1 projection when the shape changes (pytorchcv `ResUnit` layout)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.identity_conv = None
        if stride != 1 or cin != cout:
            self.identity_conv = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.identity_conv is None else self.identity_conv(x)
        return self.activ(self.body(x) + identity)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of the paper's lineage: 3 stages of basic blocks, global average pool, linear head."""

    feature_module_name = "features.final_pool"

    def __init__(self, blocks_per_stage: int, widths: tuple[int, ...], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {"init_block": conv_bn_relu(in_channels, widths[0])}
        cin = widths[0]
        for i, width in enumerate(widths):
            first_stride = 2 if i > 0 else 1
            blocks = [BasicBlock(cin, width, first_stride)]
            blocks += [BasicBlock(width, width, 1) for _ in range(blocks_per_stage - 1)]
            stage = nn.Sequential(*blocks)
            layers[f"stage{i + 1}"] = stage
            cin = width
        layers["final_pool"] = nn.AdaptiveAvgPool2d(1)
        self.features = nn.Sequential()
        for name, module in layers.items():
            self.features.add_module(name, module)
        self.output = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x).flatten(1))


@MODELS.register("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels, 64-d feature (0.27M parameters)."""
    return CifarResNet(3, (16, 32, 64), num_classes, in_channels)


class DigitsCNN(nn.Module):
    """A small BN-ReLU CNN for 16x16 digits: 4 convs, global average pool, 64-d feature."""

    feature_module_name = "features.final_pool"

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("init_block", conv_bn_relu(in_channels, 16))
        self.features.add_module("stage1", nn.Sequential(conv_bn_relu(16, 32, 2), conv_bn_relu(32, 32)))
        self.features.add_module("stage2", nn.Sequential(conv_bn_relu(32, 64, 2), conv_bn_relu(64, 64)))
        self.features.add_module("final_pool", nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x).flatten(1))


@MODELS.register("digits_cnn")
def digits_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return DigitsCNN(num_classes, in_channels)


class _TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock reuses one ReLU module twice; this wrapper gives each call site its own."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + identity)


def split_shared_relus(model: nn.Module) -> nn.Module:
    """Rewrite torchvision ResNet basic blocks in place so that no ReLU module serves two call sites."""
    from torchvision.models.resnet import BasicBlock as TvBasicBlock

    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, name)
        for i, block in enumerate(layer):
            if isinstance(block, TvBasicBlock):
                layer[i] = _TorchvisionBlock(block)
    return model


@MODELS.register("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 (random init; weights come from a file or the weight enum, see teacher.load)."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model = split_shared_relus(model)
    model.feature_module_name = "avgpool"
    return model


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A registered architecture, or any torchvision classification model as `torchvision:<name>`, for the
    data's class count and channels (1 for grayscale, 3 for RGB)."""
    from intraq.teacher.torchvision_models import build_torchvision, is_torchvision_name

    if is_torchvision_name(name):
        return build_torchvision(name, num_classes, in_channels)
    return MODELS.get(name)(num_classes, in_channels)
