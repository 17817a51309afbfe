"""First-order Taylor expansion (Molchanov et al., CVPR 2019): |w * dL/dw| over the calibration set."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .base import CRITERION, register
from .gradient_scores import Batches, ElementwiseScores, score_group


class TaylorImportance(tp.importance.GroupTaylorImportance):
    """|w * dL/dw| summed over the channel's weights, with the gradient of the mean loss over the calibration set.

    Unlike Torch-Pruning 1.6.1's ``GroupTaylorImportance``, BatchNorm members count (its BN branch tests the
    GroupNorm pruning function and never matches).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._elementwise = ElementwiseScores(lambda w, g: (w * g).abs())

    @torch.no_grad()
    def __call__(self, group):
        return score_group(self, group, self._elementwise)

    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        model.eval()
        model.zero_grad(set_to_none=True)
        batches = list(batches)
        total = sum(len(y) for _, y in batches)
        for x, y in batches:
            (F.cross_entropy(model(x), y, reduction="sum") / total).backward()
        return total


@register("taylor", CRITERION, needs_data=True, summary="first-order Taylor expansion |w * grad|",
          reference="Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019")
def taylor(**_):
    return TaylorImportance()
