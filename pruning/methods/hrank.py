"""HRank (Lin et al., CVPR 2020): a channel's score is the mean matrix rank of its feature maps."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..modes import eval_mode
from ..tp_adapter import OUT_FNS, group_members
from .activations import Batches, ActivationImportance, dependency_graph, pruner_groups, is_plain_conv
from .base import CRITERION, register

def batched_matrix_rank(maps: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``torch.linalg.matrix_rank`` of every (H, W) map of a (B, H, W) tensor, many maps per call (chunked)."""
    return torch.cat([torch.linalg.matrix_rank(part) for part in maps.split(chunk)]) if len(maps) else \
        torch.zeros(0, dtype=torch.long)


class HRankImportance(ActivationImportance):
    """HRank (Lin et al., CVPR 2020): a channel's score is the mean matrix rank of its feature maps.

    The feature map of a convolution's output channel is taken where HRank takes it, after the activation: the
    output of the BatchNorm that directly follows the convolution (if any), passed through ReLU
    (``activation='relu'``; ``None`` uses the raw map).  Ranks are ``torch.linalg.matrix_rank`` of the (H, W) maps,
    computed batched: all N x C maps of a layer and batch in one call (chunked for memory).  A group's score is the
    mean over its producing convolutions (several in a residual group).
    """

    side = "out"

    def __init__(self, activation: Optional[str] = "relu", normalizer="mean", tie_break: float = 1e-6,
                 chunk: int = 8192):
        super().__init__(normalizer=normalizer, tie_break=tie_break)
        self.activation = activation
        self.chunk = chunk

    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        batches = list(batches)
        graph = dependency_graph(model, batches, pruner)
        producers = {}
        for g in pruner_groups(model, batches, pruner):
            for member in group_members(g, OUT_FNS):
                if is_plain_conv(member.layer):  # a linear layer's outputs have no feature maps
                    producers[member.layer] = None
        hooks, sums = [], {}
        for conv in producers:
            node = graph.module2node.get(conv)
            nxt = [n.module for n in node.outputs] if node is not None else []
            where = nxt[0] if len(nxt) == 1 and isinstance(nxt[0], nn.modules.batchnorm._BatchNorm) else conv
            sums[conv] = torch.zeros(conv.out_channels, dtype=torch.float64)
            hooks.append(where.register_forward_hook(self._hook(conv, sums)))
        count = 0
        try:
            with eval_mode(model):
                for x, _ in batches:
                    model(x)
                    count += len(x)
        finally:
            for h in hooks:
                h.remove()
        for conv, total in sums.items():
            self.codes.tag(conv, "out")
            self.scores[conv] = (total / max(count, 1)).float()
        return count

    def _hook(self, conv, sums):
        def hook(module, inputs, output):
            maps = output.detach()
            if self.activation == "relu":
                maps = torch.relu(maps)
            n, c = maps.shape[:2]
            ranks = batched_matrix_rank(maps.reshape(n * c, *maps.shape[2:]).float(), self.chunk)
            sums[conv] += ranks.view(n, c).sum(0).double().cpu()
        return hook


@register("hrank", CRITERION, needs_data=True,
          summary="mean matrix rank of the channel's (post-ReLU) feature maps",
          reference="Lin et al., HRank: Filter Pruning using High-Rank Feature Map, CVPR 2020")
def hrank(activation: Optional[str] = "relu", **_):
    return HRankImportance(activation=activation)
