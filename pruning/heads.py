"""The output layers that keep their width when a model is pruned."""
from __future__ import annotations

from torch import nn


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
