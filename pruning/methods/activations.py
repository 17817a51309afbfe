"""Shared machinery of the activation-based criteria (:mod:`.hrank`, :mod:`.thinet`, :mod:`.cp`).

Each is a Torch-Pruning importance with ``calibrate(model, batches, pruner) -> n_samples``, run once before the
iterative pruning steps.  Calibration is one forward pass (no backward) over the calibration batches, with hooks:

* ``hrank`` hooks every convolution that produces a group's channels;
* ``thinet`` and ``cp`` hook every convolution / linear layer that *consumes* a group's channels (the next layer).

**Keeping statistics aligned while channels are removed.**  Calibration writes an integer *channel code* into the
``.grad`` of each hooked layer's weight: ``code[o, c] = o * C0 + c`` (original output index ``o``, original input
index ``c``, ``C0`` the original input width), exact in float32.  Torch-Pruning slices ``.grad`` together with the
weight whenever a layer loses input or output channels, so at any later step the surviving original indices are
read back from the codes, and the per-original-channel scores computed once at calibration are looked up by them.
This works in every scope (local, global, protected, isomorphic), at every iterative step and for a sub-group
(protected scope re-scores part of a group).  Layers wider than 2**24 codes keep only the code of the dimension
that their criterion needs.

**Groups.**  Scores are reduced over the members of a DepGraph group like Torch-Pruning's
``GroupMagnitudeImportance`` with ``group_reduction='mean'`` and ``normalizer='mean'`` (``_reduce``/``_normalize``),
so scores of different groups are comparable in global scopes.  A group that has no hooked member (e.g. channels
produced only by linear layers for ``hrank``) falls back to the group L2 magnitude, normalised the same way.
A tiny tie-break (``tie_break`` times the normalised L2 magnitude) separates equal scores: average ranks are often
tied, and a group whose channels all tie at the global threshold would be selected whole, which Torch-Pruning refuses.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

import torch
import torch_pruning as tp
from torch import nn

from ..tp_adapter import IN_FNS, OUT_FNS, group_members, reduce_and_normalize

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]
_EXACT = 2 ** 24  # float32 represents every integer below this exactly


# --------------------------------------------------------------------------- channel codes in .grad
def is_plain_conv(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and not layer.transposed


def _tag(layer: nn.Module, need: str) -> str:
    """Write the channel code into ``layer.weight.grad``; return the code mode ('both', 'out' or 'in')."""
    w = layer.weight
    o0, c0 = w.shape[0], w.shape[1]
    o = torch.arange(o0, dtype=torch.float64).view(-1, 1)
    c = torch.arange(c0, dtype=torch.float64).view(1, -1)
    if o0 * c0 < _EXACT:
        mode, code = "both", o * c0 + c
    elif need == "out" and o0 < _EXACT:
        mode, code = "out", o + 0 * c
    elif need == "in" and c0 < _EXACT:
        mode, code = "in", c + 0 * o
    else:
        raise ValueError(f"layer too wide for channel codes: {tuple(w.shape)}")
    code = code.to(torch.float32).view(o0, c0, *([1] * (w.dim() - 2))).expand_as(w)
    w.grad = code.to(w.device).contiguous()
    return mode


class _Codes:
    """The original width and code mode of every tagged layer; decodes surviving original indices."""

    def __init__(self):
        self.info: Dict[nn.Module, Tuple[int, str]] = {}

    def tag(self, layer: nn.Module, need: str) -> None:
        if layer not in self.info:
            self.info[layer] = (layer.weight.shape[1], _tag(layer, need))

    def out_ids(self, layer: nn.Module) -> Optional[torch.Tensor]:
        c0, mode = self.info.get(layer, (None, None))
        g = layer.weight.grad
        if mode not in ("both", "out") or g is None:
            return None
        v = g.detach().flatten(1)[:, 0].double()
        return (torch.div(v, c0, rounding_mode="floor") if mode == "both" else v).long()

    def in_ids(self, layer: nn.Module) -> Optional[torch.Tensor]:
        c0, mode = self.info.get(layer, (None, None))
        g = layer.weight.grad
        if mode not in ("both", "in") or g is None:
            return None
        v = g.detach()[0].reshape(g.shape[1], -1)[:, 0].double()
        return (torch.remainder(v, c0) if mode == "both" else v).long()


def pruner_groups(model: nn.Module, batches: list, pruner) -> list:
    if pruner is not None:
        return list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                             root_module_types=pruner.root_module_types))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=batches[0][0][:1])
    return list(graph.get_all_groups())


def dependency_graph(model: nn.Module, batches: list, pruner):
    if pruner is not None:
        return pruner.DG
    return tp.DependencyGraph().build_dependency(model, example_inputs=batches[0][0][:1])


# --------------------------------------------------------------------------- common base
class ActivationImportance(tp.importance.GroupMagnitudeImportance):
    """Shared machinery: per-original-channel scores on hooked layers, looked up through the channel codes."""

    side = "out"  # 'out': scores of producers' output channels; 'in': scores of consumers' input channels

    def __init__(self, normalizer="mean", tie_break: float = 1e-6):
        super().__init__(p=2, group_reduction="mean", normalizer=normalizer)
        self.tie_break = tie_break
        self.codes = _Codes()
        self.scores: Dict[nn.Module, torch.Tensor] = {}  # layer -> score per original out (or in) index

    def _member_scores(self, group):
        imps, idxs_list = [], []
        for member in group_members(group, OUT_FNS if self.side == "out" else IN_FNS):
            layer = member.layer
            if layer not in self.scores:
                continue
            ids = self.codes.out_ids(layer) if self.side == "out" else self.codes.in_ids(layer)
            if ids is None:
                continue
            ids = ids.cpu()  # the codes live in .grad, on the model's device; the scores on the CPU
            imps.append(self.scores[layer][ids[torch.as_tensor(member.idxs, dtype=torch.long)]].float())
            idxs_list.append(member.root_idxs)
        return imps, idxs_list

    @torch.no_grad()
    def __call__(self, group):
        magnitude = super().__call__(group)  # group L2 (mean-normalised): fallback and tie-break
        imps, root_idxs = self._member_scores(group)
        if not imps:
            return magnitude
        scores = reduce_and_normalize(self, imps, root_idxs)
        if magnitude is not None and self.tie_break:
            scores = scores + self.tie_break * magnitude / (magnitude.max() + 1e-12)
        return scores
