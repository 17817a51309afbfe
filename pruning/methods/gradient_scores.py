"""Scoring a DepGraph group from each member's weight and the statistic calibration left in its ``.grad``.

Calibration leaves its statistics in the parameters' ``.grad``, which Torch-Pruning slices along with the weights
whenever channels are removed, so iterative pruning needs one calibration pass, not one per step.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
import torch_pruning as tp
from torch import nn

from ..tp_adapter import IN_FNS, NORM_FNS, OUT_FNS, group_members, reduce_and_normalize

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]



def trainable_parameters(model: nn.Module):
    return [p for p in model.parameters() if p.requires_grad]


def score_group(importance, group, member_score) -> torch.Tensor | None:
    """Per-channel score of a group from each member's weight and its ``.grad`` statistic.

    ``member_score(w, stat)`` is elementwise; it is summed over each channel's weights (conv/linear rows for output
    channels, columns for input channels, one value for norm layers), then reduced over the group's members and
    normalised as the importance is configured (Torch-Pruning's mean reduction and mean normaliser by default).
    """
    scores, root_idxs = [], []
    for member in group_members(group):
        layer, fn, idxs = member.layer, member.handler, member.idxs
        if not isinstance(layer, tuple(importance.target_types)) or getattr(layer, "weight", None) is None \
                or layer.weight.grad is None:
            continue
        w, stat = layer.weight.data, layer.weight.grad.data
        transposed = getattr(layer, "transposed", False)
        if fn in OUT_FNS:
            pick = (lambda t: t.transpose(0, 1)) if transposed else (lambda t: t)
            local = member_score(pick(w)[idxs].flatten(1), pick(stat)[idxs].flatten(1)).sum(1)
        elif fn in IN_FNS:
            pick = (lambda t: t) if transposed else (lambda t: t.transpose(0, 1))
            local = member_score(pick(w).flatten(1), pick(stat).flatten(1)).sum(1)
            if fn == tp.prune_conv_in_channels and layer.groups not in (1, layer.in_channels):
                local = local.repeat(layer.groups)
            local = local[idxs]
        elif fn in NORM_FNS:
            local = member_score(w[idxs], stat[idxs])
        else:
            continue
        scores.append(local)
        root_idxs.append(member.root_idxs)
    if not scores:
        return None
    return reduce_and_normalize(importance, scores, root_idxs)
