"""Sparsify-stage regularisers: network slimming, DepGraph's group norm, and growing regularisation."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch_pruning as tp

from .base import SPARSIFIER, register


@dataclass
class Sparsifier:
    """A regularised Torch-Pruning pruner class and its options, applied during sparse training.

    The training loop calls :meth:`after_backward` after every ``loss.backward()`` and :meth:`after_epoch` once per epoch.
    """
    name: str
    pruner_cls: type
    options: dict = field(default_factory=dict)

    def make_pruner(self, model, example_inputs, importance, **pruner_kwargs) -> tp.pruner.BasePruner:
        return self.pruner_cls(model, example_inputs, importance=importance, **self.options, **pruner_kwargs)

    @staticmethod
    def after_backward(pruner, model) -> None:
        pruner.regularize(model)

    @staticmethod
    def after_epoch(pruner) -> None:
        if hasattr(pruner, "update_reg"):  # growing regularisation raises its strength each epoch
            pruner.update_reg()


@register("bnscale_reg", SPARSIFIER, needs_data=True, needs_bn=True,
          summary="L1 penalty on BatchNorm scales (network slimming)",
          reference="Liu et al., Network Slimming, ICCV 2017")
def bnscale_reg(reg: float = 1e-4, **_):
    return Sparsifier("bnscale_reg", tp.pruner.BNScalePruner, {"reg": reg})


@register("group_norm", SPARSIFIER, needs_data=True,
          summary="group-norm sparse training over whole DepGraph groups",
          reference="Fang et al., DepGraph, CVPR 2023")
def group_norm(reg: float = 5e-4, **_):
    return Sparsifier("group_norm", tp.pruner.GroupNormPruner, {"reg": reg})


@register("growing_reg", SPARSIFIER, needs_data=True,
          summary="L2 penalty that grows each epoch on unimportant channels",
          reference="Wang et al., Neural Pruning via Growing Regularization, ICLR 2021")
def growing_reg(reg: float = 5e-4, delta_reg: float = 1e-4, **_):
    return Sparsifier("growing_reg", tp.pruner.GrowingRegPruner, {"reg": reg, "delta_reg": delta_reg})
