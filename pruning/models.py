"""Model registry: CIFAR-style ResNets and VGG built here, and any timm model as ``timm/<name>``.

Every model is built without pretrained weights; a local checkpoint is the way to bring weights
(see :mod:`pruning.checkpoint`).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

from .errors import PruneBenchError, unknown_choice
from .yolo import YOLO_MODELS

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: make a builder ``fn(num_classes, in_chans, input_size) -> nn.Module`` available by name."""
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_BUILDERS) + list(YOLO_MODELS) + ["timm/<name>"]


def create_model(name: str, num_classes: int, in_chans: int = 3, input_size: int = 32) -> nn.Module:
    """Build a model by registry name (``resnet20``, ``vgg19``, ``timm/deit_tiny_patch16_224``, ...)."""
    if name.startswith("timm/"):
        return _create_timm(name[len("timm/"):], num_classes, in_chans, input_size)
    if name in YOLO_MODELS:  # detection: ultralytics' yaml, C2f made prunable (see pruning.yolo)
        from .yolo import build_yolo
        return build_yolo(name, num_classes, input_size)
    if name not in _BUILDERS:
        raise unknown_choice("model", name, list_models())
    return _BUILDERS[name](num_classes=num_classes, in_chans=in_chans, input_size=input_size)


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The output layers that must keep their width: timm's classifier, else layers emitting ``num_classes``."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return [head]
    found = [m for m in model.modules()
             if (isinstance(m, nn.Linear) and m.out_features == num_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]
    return found[-1:]


def _create_timm(name: str, num_classes: int, in_chans: int, input_size: int) -> nn.Module:
    import timm
    if not timm.list_models(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PruneBenchError(f"unknown timm model {name!r}{hint}")
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans)
    try:
        try:
            return timm.create_model(name, img_size=input_size, **kwargs)
        except TypeError:  # convolutional families take any input size and have no img_size argument
            return timm.create_model(name, **kwargs)
    except Exception as e:  # e.g. a window or patch size that does not fit the input size
        text = str(e).strip().splitlines()
        raise PruneBenchError(f"timm model {name!r} cannot be built for {input_size}x{input_size} inputs: "
                              f"{type(e).__name__}: {text[0] if text else ''}")


# --------------------------------------------------------------------------- CIFAR ResNets
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stem and no max-pool, as used on 32x32 inputs."""

    def __init__(self, block, num_blocks, widths, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        for i, (width, blocks) in enumerate(zip(widths, num_blocks)):
            stages.append(self._make_stage(block, width, blocks, stride=1 if i == 0 else 2))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_stage(self, block, planes, blocks, stride):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x)).flatten(1)
        return self.fc(x)


@register_model("resnet20")
def resnet20(num_classes, in_chans=3, **_):
    return CifarResNet(BasicBlock, [3, 3, 3], [16, 32, 64], num_classes, in_chans)


@register_model("resnet56")
def resnet56(num_classes, in_chans=3, **_):
    return CifarResNet(BasicBlock, [9, 9, 9], [16, 32, 64], num_classes, in_chans)


@register_model("resnet18")
def resnet18(num_classes, in_chans=3, **_):
    return CifarResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_chans)


@register_model("resnet50")
def resnet50(num_classes, in_chans=3, **_):
    return CifarResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_chans)


# --------------------------------------------------------------------------- VGG
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


class VGG(nn.Module):
    """VGG with BatchNorm; global average pooling makes it independent of the input size."""

    def __init__(self, cfg, num_classes: int, in_chans: int = 3):
        super().__init__()
        layers, channels = [], in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg19")
def vgg19(num_classes, in_chans=3, **_):
    return VGG(_VGG19, num_classes, in_chans)
