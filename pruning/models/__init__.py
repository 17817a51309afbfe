"""Models by name: the registry (:mod:`.registry`) and the families that register themselves on import.

* :mod:`.cifar`: CIFAR-style ResNets (``resnet20``, ``resnet56``, ``resnet18``, ``resnet50``) and ``vgg19``;
* :mod:`.timm`: any timm model as ``timm/<name>``;
* :mod:`.yolo`: ``yolov8n|s|m`` detection models from ultralytics' yaml, made prunable.
"""
from __future__ import annotations

from . import cifar, timm, yolo  # noqa: F401  (importing registers the families)
from ..heads import classifier_layers
from .registry import create_model, is_known_model, list_models, register_family, register_model

__all__ = ["classifier_layers", "create_model", "is_known_model", "list_models", "register_family", "register_model"]
