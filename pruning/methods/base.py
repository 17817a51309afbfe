"""Registry machinery shared by every method module."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from ..errors import PruneBenchError, unknown_choice

CRITERION = "criterion"    # pruning stage: scores channels
SPARSIFIER = "sparsifier"  # sparsify stage: a regulariser applied during sparse training


@dataclass(frozen=True)
class Method:
    name: str
    stage: str
    needs_data: bool
    builder: Callable
    summary: str
    reference: str = ""
    needs_bn: bool = False

    def build(self, **options):
        """Build the Torch-Pruning ``Importance`` (criterion) or ``Sparsifier`` (sparsifier)."""
        return self.builder(**options)

    def defaults(self) -> dict:
        """The builder's keyword options and their defaults (a sparsifier's own ``reg``, say)."""
        return {k: p.default for k, p in inspect.signature(self.builder).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def describe(self) -> dict:
        return {"name": self.name, "stage": self.stage, "needs_data": self.needs_data,
                "needs_bn": self.needs_bn, "summary": self.summary, "reference": self.reference}


@dataclass(frozen=True)
class MethodPair:
    """A benchmark method: a criterion and, optionally, the sparsifier run before it."""
    criterion: Method
    sparsifier: Optional[Method] = None

    @property
    def name(self) -> str:
        return self.criterion.name + (f"+{self.sparsifier.name}" if self.sparsifier else "")

    @property
    def needs_data(self) -> bool:
        return self.criterion.needs_data


_REGISTRY: Dict[str, Method] = {}


def register(name: str, stage: str, *, needs_data: bool, summary: str, reference: str = "", needs_bn: bool = False):
    """Decorator registering a builder function as a method."""
    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = Method(name, stage, needs_data, builder, summary, reference, needs_bn)
        return builder
    return wrap


def list_methods(stage: Optional[str] = None) -> list[Method]:
    return [m for _, m in sorted(_REGISTRY.items()) if stage is None or m.stage == stage]


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise unknown_choice("method", name, _REGISTRY)
    return _REGISTRY[name]


def resolve(name: str) -> MethodPair:
    """Parse ``criterion`` or ``criterion+sparsifier`` into a :class:`MethodPair`, checking each part's stage."""
    parts = name.split("+")
    if len(parts) > 2 or not all(parts):
        raise PruneBenchError(f"method {name!r} must be 'criterion' or 'criterion+sparsifier'")
    criterion = get_method(parts[0])
    if criterion.stage != CRITERION:
        raise PruneBenchError(f"{criterion.name!r} is a sparsifier; pair it with a criterion, e.g. "
                              f"'l2+{criterion.name}'")
    sparsifier = get_method(parts[1]) if len(parts) == 2 else None
    if sparsifier is not None and sparsifier.stage != SPARSIFIER:
        choices = [m.name for m in list_methods(SPARSIFIER)]
        raise PruneBenchError(f"{sparsifier.name!r} is a criterion, not a sparsifier; sparsifiers: {', '.join(choices)}")
    return MethodPair(criterion, sparsifier)
