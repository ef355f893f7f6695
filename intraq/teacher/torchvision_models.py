"""Any torchvision classification architecture as a teacher, by name: `teacher.name=torchvision:resnet50`.

The GDFQ-lineage quantizer puts one activation quantizer after each ReLU/ReLU6 module (methods §1.1), so a
teacher must call each such module at one site and apply no activation as a function. torchvision's ResNets
reuse one ReLU per block (three times in a Bottleneck): the model is traced with `torch.fx` and every further
call site gets its own copy of the module. Architectures whose activations the quantizer would leave in full
precision (SiLU, GELU, Hardswish, a functional ReLU, ...) are refused with the reason, never run silently.
The model is traced in eval mode, so a branch on `self.training` keeps its eval path (the ReLU architectures
torchvision offers have none that changes the computation; GoogLeNet and Inception, whose auxiliary heads do,
apply ReLU as a function and are refused).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from intraq.errors import UserInputError

PREFIX = "torchvision:"
QUANTIZED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
OTHER_ACTIVATIONS = (nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
                     nn.PReLU, nn.Mish, nn.Hardtanh)
FUNCTIONAL_ACTIVATIONS = ("relu", "relu_", "relu6", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid", "tanh",
                          "leaky_relu", "elu", "mish", "hardtanh")


def is_torchvision_name(name: str) -> bool:
    return name.startswith(PREFIX)


def classification_models() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)


def _first_conv_takes(model: nn.Module, in_channels: int) -> None:
    """Replace the first 3-channel convolution by one for `in_channels` (grayscale data), same shape otherwise."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, leaf, nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode,
            ))
            return
    raise UserInputError("no 3-channel input convolution to adapt to the data's channels")


def _function_name(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _check_activations(arch: str, traced: fx.GraphModule) -> None:
    found_quantized = False
    for node in traced.graph.nodes:
        if node.op == "call_module":
            module = traced.get_submodule(node.target)
            if isinstance(module, OTHER_ACTIVATIONS) and not isinstance(module, QUANTIZED_ACTIVATIONS):
                raise UserInputError(
                    f"teacher torchvision:{arch} uses {type(module).__name__} ({node.target}); the GDFQ-lineage "
                    "quantizer quantizes activations after ReLU/ReLU6 modules only, so its activations would stay "
                    "in full precision. Choose an architecture with ReLU activations (e.g. resnet, vgg, mobilenet_v2)"
                )
            found_quantized |= isinstance(module, QUANTIZED_ACTIVATIONS)
        elif node.op in ("call_function", "call_method") and _function_name(node.target) in FUNCTIONAL_ACTIVATIONS:
            raise UserInputError(
                f"teacher torchvision:{arch} applies {_function_name(node.target)} as a function (at {node.name}); "
                "the quantizer only sees activation modules, so that activation would stay in full precision"
            )
    if not found_quantized:
        raise UserInputError(f"teacher torchvision:{arch} has no ReLU/ReLU6 module for the activation quantizers")


def _one_module_per_call_site(traced: fx.GraphModule) -> int:
    """Give every further call of an activation module its own copy (`<name>_site<k>`); returns how many."""
    seen: dict[str, int] = {}
    added = 0
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(traced.get_submodule(node.target), QUANTIZED_ACTIVATIONS):
            continue
        count = seen.get(node.target, 0)
        seen[node.target] = count + 1
        if count:
            target = f"{node.target}_site{count}"
            traced.add_submodule(target, copy.deepcopy(traced.get_submodule(node.target)))
            node.target = target
            added += 1
    traced.recompile()
    return added


def _feature_module(arch: str, traced: fx.GraphModule) -> str:
    """The module whose output feeds the Linear head (through flatten/reshape): the penultimate features. A
    Dropout there is the identity in eval mode, where the teacher always runs. Without a Linear head (SqueezeNet's
    head is a convolution whose pool gives the logits) there are no penultimate features to tap: refused."""
    heads = [n for n in traced.graph.nodes if n.op == "call_module"
             and isinstance(traced.get_submodule(n.target), nn.Linear)]
    source = heads[-1].args[0] if heads else None
    while isinstance(source, fx.Node) and source.op in ("call_function", "call_method") and _function_name(
        source.target
    ) in ("flatten", "reshape", "view"):
        source = source.args[0]
    if not (isinstance(source, fx.Node) and source.op == "call_module"):
        raise UserInputError(
            f"teacher torchvision:{arch}: no module gives its penultimate features (the input of a Linear head), "
            "which MDC and the feature figures tap"
        )
    return str(source.target)


class TracedTeacher(fx.GraphModule):
    """A traced torchvision model that keeps `feature_module_name` through `copy.deepcopy` and `copy.copy` (fx's
    copies drop attributes they do not know, and the quantizer makes the student by a deep copy)."""

    def __init__(self, root: nn.Module, graph: fx.Graph, feature_module_name: str, class_name: str) -> None:
        super().__init__(root, graph, class_name)
        self.feature_module_name = feature_module_name
        self.class_name = class_name

    def __deepcopy__(self, memo: dict) -> TracedTeacher:
        plain = fx.GraphModule.__deepcopy__(self, memo)
        return TracedTeacher(plain, plain.graph, self.feature_module_name, self.class_name)

    def __copy__(self) -> TracedTeacher:
        plain = fx.GraphModule.__copy__(self)
        return TracedTeacher(plain, plain.graph, self.feature_module_name, self.class_name)


def build_torchvision(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision's `name` (after the `torchvision:` prefix), randomly initialized for the data's classes and
    channels, with one activation module per call site; weights come from a checkpoint (see teacher.load)."""
    from torchvision import models

    arch = name.removeprefix(PREFIX)
    known = classification_models()
    if arch not in known:
        raise UserInputError(
            f"teacher.name={name!r}: torchvision has no classification model {arch!r}; known: {', '.join(known)}"
        )
    model = models.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _first_conv_takes(model, in_channels)
    try:
        traced = fx.symbolic_trace(model.eval())
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the structure cannot be checked
        raise UserInputError(f"teacher {name}: cannot trace its graph to check its activations ({exc})") from None
    _check_activations(arch, traced)
    _one_module_per_call_site(traced)
    return TracedTeacher(traced, traced.graph, _feature_module(arch, traced), type(model).__name__)


def pretrained_state_dict(name: str, num_classes: int) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's default weights for `name` (downloads; a failed download raises), after checking that their
    class count is the data's."""
    from torchvision import models

    weights = models.get_model_weights(name.removeprefix(PREFIX)).DEFAULT
    classes = len(weights.meta["categories"])
    if classes != num_classes:
        raise UserInputError(
            f"torchvision's {weights} weights have {classes} classes, the data has {num_classes}: use them on "
            "ImageNet, or give a checkpoint trained on your data (teacher.source=local, teacher.checkpoint=FILE)"
        )
    return weights.get_state_dict(progress=True), str(weights)
