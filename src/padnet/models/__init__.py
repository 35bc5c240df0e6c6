"""Model builders for the vision pipeline: torchvision architectures, adapted for small inputs.

``build(name, num_classes, in_channels=3, small_input=False, **kwargs)`` returns a plain (static)
torchvision model; ``padnet.convert.convert`` then makes it dynamic or PAD. ``small_input`` adapts the
stem for 28x28 / 32x32 images the way CIFAR ResNets do: a 3x3 stride-1 stem conv and no max-pool, so
the feature maps are not reduced to 1x1 before the last stage.

``small_resnet`` is a torchvision-style ResNet (BasicBlock, the same module names ``conv1``, ``bn1``,
``layer1``..., ``fc``) with a configurable number of stages, blocks per stage and base width, for CPU
experiments: ``build("small_resnet", 10, in_channels=1, small_input=True, width=16, layers=[1, 1, 1])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..arch import check_no_weight_keys, register_arch, tag_arch
from ..errors import UsageError

MODELS = ("small_resnet", "resnet18", "resnet34", "resnet50", "mobilenet_v2")


def _torchvision():
    try:
        import torchvision
    except ImportError as err:  # pragma: no cover - torchvision is in the vision extra
        raise ImportError("padnet.models needs torchvision: pip install 'padnet[vision]'") from err
    return torchvision


def _conv(in_planes: int, out_planes: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``, module for module (``conv1``, ``bn1``, ``relu``, ``conv2``,
    ``bn2``, ``downsample``): written here so that a ``small_resnet`` (every CPU run here, and loading
    one from a model file) needs neither torchvision nor its import (torchvision imports torch._dynamo
    through torchvision.ops: about 2.5 s of CPU on this machine)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """ResNet with torchvision's BasicBlock (``BasicBlock``), ``len(layers)`` stages of widths ``width * 2**i``.

    Stage i > 0 halves the resolution. Module names follow torchvision's ResNet, so ``convert`` keeps
    the stem (``conv1``) static and makes every block conv (1x1 projection shortcuts included) dynamic.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 16,
        layers: Sequence[int] = (1, 1, 1),
        small_input: bool = True,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise UsageError(f"width={width!r} must be an integer >= 1")
        layers = list(layers)
        if not layers or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers):
            raise UsageError(f"layers={layers!r} must be a non-empty list of integers >= 1 (blocks per stage)")
        self.inplanes = width
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.num_stages = len(layers)
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(_conv(self.inplanes, planes, 1, stride), nn.BatchNorm2d(planes))
            stage = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            stage += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def builder(num_classes: int, in_channels: int, small_input: bool, **kwargs) -> nn.Module:
        tv = _torchvision()
        model = getattr(tv.models, f"resnet{depth}")(num_classes=num_classes, **kwargs)
        if small_input:
            model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 7, 2, 3, bias=False)
        if small_input or in_channels != 3:
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model

    return builder


def _mobilenet_v2(num_classes: int, in_channels: int, small_input: bool, **kwargs) -> nn.Module:
    tv = _torchvision()
    model = tv.models.mobilenet_v2(num_classes=num_classes, **kwargs)
    stem = model.features[0][0]
    if small_input or in_channels != 3:
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1 if small_input else 2, 1, bias=False)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


def _small_resnet(num_classes: int, in_channels: int, small_input: bool, **kwargs) -> nn.Module:
    return SmallResNet(num_classes, in_channels, small_input=small_input, **kwargs)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "small_resnet": _small_resnet,
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "resnet50": _resnet(50),
    "mobilenet_v2": _mobilenet_v2,
}


def build(name: str, num_classes: int, in_channels: int = 3, small_input: bool = False, **kwargs) -> nn.Module:
    """Build a static model by name (see ``MODELS``); ``kwargs`` go to the torchvision constructor
    (e.g. ``weights=...`` when online) or to ``SmallResNet`` (``width``, ``layers``)."""
    if name not in _BUILDERS:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{key}={value!r} must be an integer >= 1")
    model = _BUILDERS[name](num_classes, in_channels, bool(small_input), **kwargs)
    # Tag it so padnet.save / padnet.load can rebuild it; a file holds every weight, so pretrained
    # ``weights`` are not part of the architecture.
    arch_kwargs = {k: v for k, v in kwargs.items() if k != "weights"}
    return tag_arch(model, f"padnet.{name}", num_classes=num_classes, in_channels=in_channels,
                    small_input=bool(small_input), **arch_kwargs)


def _padnet_builder(rest: str) -> Callable[..., nn.Module]:
    """The ``"padnet.<name>"`` entries of the architecture registry: only ``MODELS`` (the allow-list),
    never with pretrained weights."""
    if rest not in MODELS:
        raise KeyError(f"{rest!r} is not a padnet model; known: {', '.join(MODELS)}")

    def build_from_record(**kwargs):
        check_no_weight_keys(f"padnet.{rest}", kwargs)
        return build(rest, **kwargs)

    return build_from_record


register_arch("padnet.", _padnet_builder)

__all__ = ["MODELS", "BasicBlock", "SmallResNet", "build"]
