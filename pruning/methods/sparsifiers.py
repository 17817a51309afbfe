"""Sparsify-stage regularisers: network slimming, DepGraph's group norm, and growing regularisation."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch_pruning as tp

from .base import SPARSIFIER, register

# Each sparsifier's default strength is its own: an L1 on BatchNorm scales, a group LASSO on whole channel vectors
# and DepGraph's group-norm decay (up to 16x on the weakest channels) act on different quantities, so one ``reg``
# cannot serve them all.  The defaults are sized for a short budget (5 epochs at lr 0.01, weight decay off) on the
# embedded default (resnet20, digits 8x8): strong enough that every pairing prunes a different allocation than its
# criterion alone at 2x and 4x, weak enough that val accuracy stays within ~0.5 points of the dense model's
# (``benchmarks/sparsify_defaults.py``, table in benchmarks/README.md).  The papers' values (1e-4 .. 5e-4) assume
# 100+ epochs; at 5 epochs they leave the network unchanged.


@dataclass
class Sparsifier:
    """A regularised Torch-Pruning pruner class and its options, applied during sparse training.

    The training loop calls :meth:`after_backward` after every ``loss.backward()`` and :meth:`after_epoch` once per epoch.
    ``penalises`` names the group members whose parameters the penalty shrinks (``"out"``: producers' output rows,
    ``"in"``: consumers' input columns, ``"bn"``: BatchNorm scales), the norms :mod:`pruning.sparsity` reports.
    """
    name: str
    pruner_cls: type
    options: dict = field(default_factory=dict)
    penalises: tuple = ("out", "in", "bn")

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
def bnscale_reg(reg: float = 0.15, **_):  # accuracy collapses from ~0.25 on the default
    return Sparsifier("bnscale_reg", tp.pruner.BNScalePruner, {"reg": reg}, penalises=("bn",))


@register("group_norm", SPARSIFIER, needs_data=True,
          summary="group-norm sparse training over whole DepGraph groups",
          reference="Fang et al., DepGraph, CVPR 2023")
def group_norm(reg: float = 5e-3, **_):
    return Sparsifier("group_norm", tp.pruner.GroupNormPruner, {"reg": reg})


@register("growing_reg", SPARSIFIER, needs_data=True,
          summary="L2 penalty that grows each epoch on unimportant channels",
          reference="Wang et al., Neural Pruning via Growing Regularization, ICLR 2021")
def growing_reg(reg: float = 1e-3, delta_reg: float = 0.05, **_):  # per epoch, on the least important
    # Torch-Pruning 1.6 adds the BatchNorm part to a copy (``grad.data[idxs].add_``): only conv/linear weights move
    return Sparsifier("growing_reg", tp.pruner.GrowingRegPruner, {"reg": reg, "delta_reg": delta_reg},
                      penalises=("out", "in"))
