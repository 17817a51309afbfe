"""Data-free criteria: random, magnitude (L1, L2), FPGM, LAMP and BN scaling factors (Torch-Pruning importances)."""
import torch
import torch_pruning as tp

from ..tp_adapter import OUT_FNS, group_members, reduce_and_normalize
from .base import CRITERION, register


@register("random", CRITERION, needs_data=False, summary="uniformly random channel scores (the control)")
def random(seed: int = 0, **_):
    return SeededRandomImportance(seed)


@register("l1", CRITERION, needs_data=False, summary="group L1 norm of the channel's weights",
          reference="Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017")
def l1(**_):
    return tp.importance.GroupMagnitudeImportance(p=1)


@register("l2", CRITERION, needs_data=False, summary="group L2 norm (squared) of the channel's weights",
          reference="Li et al., ICLR 2017; Fang et al., DepGraph, CVPR 2023")
def l2(**_):
    return tp.importance.GroupMagnitudeImportance(p=2)


@register("fpgm", CRITERION, needs_data=False, summary="sum of distances from the filter to its layer's other filters",
          reference="He et al., Filter Pruning via Geometric Median, CVPR 2019")
def fpgm(**_):
    return GeometricMedianImportance()


@register("lamp", CRITERION, needs_data=False, summary="L2 score normalised by the sum of the larger scores",
          reference="Lee et al., Layer-adaptive Sparsity for the Magnitude-based Pruning, ICLR 2021")
def lamp(**_):
    return tp.importance.LAMPImportance(p=2)


@register("bnscale", CRITERION, needs_data=False, needs_bn=True, summary="|gamma| of the channel's BatchNorm",
          reference="Liu et al., Network Slimming, ICCV 2017")
def bnscale(**_):
    return BNScaleImportance()


class BNScaleImportance(tp.importance.BNScaleImportance):
    """Torch-Pruning's BN-scale score with ties broken by channel order.

    Freshly initialised BatchNorm scales are all 1; a global threshold then selects every channel of a group, which
    Torch-Pruning refuses to prune, so nothing would ever be removed.
    """

    def __call__(self, group):
        scores = super().__call__(group)
        if scores is None or len(scores) < 2:
            return scores
        return scores + torch.linspace(0, 1e-6, len(scores)) * scores.abs().mean()


class GeometricMedianImportance(tp.importance.GroupMagnitudeImportance):
    """FPGM as published: each filter of a conv/linear layer whose out-channels the group prunes scores the sum of
    Euclidean distances from its signed weights to the layer's other filters; the layers' scores are reduced (mean)
    and normalised (mean) like Torch-Pruning's. Its ``FPGMImportance`` measures distances between squared weights
    (signs lost) and also scores the consumers' input columns."""

    def __init__(self):
        super().__init__(p=2, group_reduction="mean", normalizer="mean")

    @torch.no_grad()
    def __call__(self, group, **kwargs):
        scores, root_idxs = [], []
        for member in group_members(group, OUT_FNS):
            weight = member.layer.weight.detach()
            filters = (weight.transpose(0, 1) if getattr(member.layer, "transposed", False) else weight).flatten(1)
            distances = torch.cdist(filters.float(), filters.float(), p=2).sum(1)
            scores.append(distances[torch.as_tensor(member.idxs, dtype=torch.long, device=distances.device)])
            root_idxs.append(member.root_idxs)
        return reduce_and_normalize(self, scores, root_idxs) if scores else None


class SeededRandomImportance(tp.importance.RandomImportance):
    """Torch-Pruning's random score drawn from the criterion's own generator, not torch's global one: the scores
    depend on ``seed`` alone, also when other trials draw random numbers on other threads."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group, **kwargs):
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)
