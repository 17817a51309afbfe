"""Data-free criteria: random, magnitude (L1, L2), FPGM, LAMP and BN scaling factors (Torch-Pruning importances)."""
import torch
import torch_pruning as tp

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


@register("fpgm", CRITERION, needs_data=False, summary="distance of each filter to the layer's geometric median",
          reference="He et al., Filter Pruning via Geometric Median, CVPR 2019")
def fpgm(**_):
    return tp.importance.FPGMImportance(p=2)


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


class SeededRandomImportance(tp.importance.RandomImportance):
    """Torch-Pruning's random score drawn from the criterion's own generator, not torch's global one: the scores
    depend on ``seed`` alone, also when other trials draw random numbers on other threads."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group, **kwargs):
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)
