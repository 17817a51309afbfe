"""Scoring a DepGraph group from each member's weight and the statistic calibration left in its ``.grad``.

Calibration leaves its statistics in the parameters' ``.grad``, which Torch-Pruning slices along with the weights
whenever channels are removed, so iterative pruning needs one calibration pass, not one per step.
"""
from __future__ import annotations

import functools
import weakref
from typing import Iterable, Tuple

import torch
import torch_pruning as tp
from torch import nn

from ..tp_adapter import IN_FNS, NORM_FNS, OUT_FNS, group_members, reduce_and_normalize

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]



def trainable_parameters(model: nn.Module):
    return [p for p in model.parameters() if p.requires_grad]


class ElementwiseScores:
    """``member_score(weight, weight.grad)`` per layer, computed once while the weight stays as it is.

    A step scores every group, and a layer's weight belongs to two of them (its output channels' and the next
    layer's input channels'); pruning replaces the weight, which ends its entry."""

    def __init__(self, member_score):
        self.member_score = member_score
        self._scores: dict = {}  # id(weight) -> (weak reference, statistic, version, scores)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        stat = weight.grad
        cached = self._scores.get(id(weight))
        if cached is not None and cached[0]() is weight and cached[1] is stat and cached[2] == weight._version:
            return cached[3]
        scores = self.member_score(weight.data, stat.data)
        # a weight that is gone takes its entry with it (before its id can be reused)
        forget = functools.partial(self._scores.pop, id(weight), None)
        self._scores[id(weight)] = (weakref.ref(weight, lambda _: forget()), stat, weight._version, scores)
        return scores


def score_group(importance, group, member_score: ElementwiseScores) -> torch.Tensor | None:
    """Per-channel score of a group from each member's weight and its ``.grad`` statistic.

    ``member_score`` is elementwise (see :class:`ElementwiseScores`); it is summed over each channel's weights
    (conv/linear rows for output channels, columns for input channels, one value for norm layers), then reduced
    over the group's members and normalised as the importance is configured (Torch-Pruning's mean reduction and
    mean normaliser by default).
    """
    scores, root_idxs = [], []
    for member in group_members(group):
        layer, fn, idxs = member.layer, member.handler, member.idxs
        if not isinstance(layer, tuple(importance.target_types)) or getattr(layer, "weight", None) is None \
                or layer.weight.grad is None:
            continue
        # elementwise over the whole weight once, then summed per channel: slicing or flattening a transposed
        # weight first would copy it for every member at every step
        elementwise = member_score(layer.weight)
        out_dim = 1 if getattr(layer, "transposed", False) else 0
        if fn in OUT_FNS:
            local = _sum_except(elementwise, out_dim)[idxs]
        elif fn in IN_FNS:
            local = _sum_except(elementwise, 1 - out_dim)
            if fn == tp.prune_conv_in_channels and layer.groups not in (1, layer.in_channels):
                local = local.repeat(layer.groups)
            local = local[idxs]
        elif fn in NORM_FNS:
            local = elementwise[idxs]
        else:
            continue
        scores.append(local)
        root_idxs.append(member.root_idxs)
    if not scores:
        return None
    return reduce_and_normalize(importance, scores, root_idxs)


def _sum_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` summed over every dimension but ``dim``."""
    return t.sum(dim=[d for d in range(t.dim()) if d != dim])
