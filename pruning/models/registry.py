"""The model registry: families register their builders here by name (or by a name prefix, like ``timm/``).

Every model is built without pretrained weights; a local checkpoint is the way to bring weights
(see :mod:`pruning.checkpoint`).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

from torch import nn

from ..errors import PruneBenchError, unknown_choice

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: Dict[str, Tuple[str, Callable[..., nn.Module]]] = {}  # prefix -> (pattern shown, builder)


def register_model(name: str):
    """Decorator: make a builder ``fn(num_classes, in_chans, input_size) -> nn.Module`` available by name."""
    def wrap(fn):
        _claim(name)
        _BUILDERS[name] = fn
        return fn
    return wrap


def register_family(prefix: str, pattern: str):
    """Decorator: every name ``<prefix><rest>`` builds with ``fn(rest, num_classes, in_chans, input_size)``;
    ``pattern`` (e.g. ``timm/<name>``) is what :func:`list_models` shows for the family."""
    def wrap(fn):
        _claim(prefix)
        _FAMILIES[prefix] = (pattern, fn)
        return fn
    return wrap


def _claim(name: str) -> None:
    """A second registration under a name (or one a family prefix already covers) raises, as methods do."""
    if name in _BUILDERS or any(name.startswith(p) or p.startswith(name) for p in _FAMILIES):
        raise ValueError(f"model {name!r} registered twice")


def list_models() -> list[str]:
    return sorted(_BUILDERS) + [pattern for pattern, _ in _FAMILIES.values()]


def is_known_model(name: str) -> bool:
    """Whether ``name`` is a registered model or belongs to a registered family (checked without building it)."""
    return name in _BUILDERS or any(name.startswith(prefix) for prefix in _FAMILIES)


def create_model(name: str, num_classes: int, in_chans: int = 3, input_size: int = 32, **kwargs) -> nn.Module:
    """Build a model by registry name (``resnet20``, ``vgg19``, ``yolov8n``, ``timm/deit_tiny_patch16_224``, ...).

    ``kwargs`` go to the family's builder (for ``timm/<name>``: to ``timm.create_model``, e.g. ``patch_size=4``); a
    builder that takes none refuses them in one line naming them.
    """
    model = _build(name, num_classes, in_chans, input_size, kwargs)
    model.prunebench_kwargs = dict(kwargs)  # checkpoints record them: a reload rebuilds the same geometry
    return model


def _build(name: str, num_classes: int, in_chans: int, input_size: int, kwargs: dict) -> nn.Module:
    for prefix, (_, build) in _FAMILIES.items():
        if name.startswith(prefix):
            return build(name[len(prefix):], num_classes, in_chans, input_size, **kwargs)
    if name not in _BUILDERS:
        raise unknown_choice("model", name, list_models())
    if kwargs:
        raise PruneBenchError(f"model {name!r} takes no model kwargs (got {', '.join(sorted(kwargs))}); "
                              f"they are passed to timm models")
    return _BUILDERS[name](num_classes=num_classes, in_chans=in_chans, input_size=input_size)
