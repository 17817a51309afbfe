"""The output layers that keep their width when a model is pruned."""
from __future__ import annotations

import torch
from torch import nn

from .modes import eval_mode


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


def ignored_layers(model: nn.Module, num_classes: int, extra=None) -> list[nn.Module]:
    """The layers pruning leaves alone: the classifier and ``extra``."""
    return classifier_layers(model, num_classes) + list(extra or [])


def num_classes(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """The width of the model's output (one eval-mode forward pass, no gradients)."""
    with eval_mode(model), torch.no_grad():
        out = model(example_inputs)
    return int(out.shape[-1])
