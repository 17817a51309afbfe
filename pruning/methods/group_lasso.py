"""Group-LASSO sparsifier on whole DepGraph channel groups (convolution and linear weights, not only BN scales).

For every channel ``g`` of every group the penalised vector ``W_g`` gathers all the group members' parameters that
belong to that channel: the output rows of the producing convolutions / linear layers, the input columns of the
consuming ones, and the BatchNorm scales.  The penalty is ``reg * sum_g ||W_g||_2`` (Wen et al., "Learning
Structured Sparsity in Deep Neural Networks", NeurIPS 2016; PruningBench's "GroupLASSO"); its (sub)gradient
``reg * w / ||W_g||`` is added to ``.grad`` after every backward pass by :meth:`GroupLassoPruner.regularize`.
A weight that belongs to two groups (a convolution's rows to its output group, its columns to its input group) is
penalised in both, as the sum over groups says.  Biases are not penalised (as in Torch-Pruning's group norm).
"""
from __future__ import annotations

import torch
import torch_pruning as tp

from ..tp_adapter import BN_FNS, IN_FNS, OUT_FNS, group_members
from .base import SPARSIFIER, register
from .sparsifiers import Sparsifier


PENALISED = ("out", "in", "bn")  # member kinds: producers' output rows, consumers' input columns, BatchNorm scales


def channel_members(group, kinds: tuple = PENALISED) -> list:
    """(layer, kind, idxs, root_idxs) for each member of a group whose parameters count in its channels' norms;
    kind is 'out', 'in' or 'bn' (only those in ``kinds``).  Transposed convolutions, grouped convolutions' input
    columns and non-affine norms are left out."""
    seen, members = set(), []
    for member in group_members(group):
        layer, fn = member.layer, member.handler
        if fn in OUT_FNS and not getattr(layer, "transposed", False):
            kind = "out"
        elif fn in IN_FNS and not getattr(layer, "transposed", False) and getattr(layer, "groups", 1) == 1:
            kind = "in"
        elif fn in BN_FNS and getattr(layer, "affine", False):
            kind = "bn"
        else:
            continue
        key = (id(layer), kind)
        if kind not in kinds or key in seen:
            continue
        seen.add(key)
        members.append((layer, kind, torch.as_tensor(list(member.idxs), dtype=torch.long),
                        torch.as_tensor(list(member.root_idxs), dtype=torch.long)))
    return members


def _channel_view(weight: torch.Tensor, kind: str, idxs: torch.Tensor) -> torch.Tensor:
    """The member's weights of the selected channels, one row per channel."""
    if kind == "in":
        return weight.index_select(1, idxs).transpose(0, 1).flatten(1)
    return weight.index_select(0, idxs).reshape(len(idxs), -1)


def _squared_norms(group, members) -> torch.Tensor:
    n_root = len(group[0].idxs)
    sq = None
    for layer, kind, idxs, root in members:
        rows = _channel_view(layer.weight, kind, idxs).pow(2).sum(1)
        sq = rows.new_zeros(n_root).index_add(0, root, rows) if sq is None else sq.index_add(0, root, rows)
    return sq


def channel_norms(group, kinds: tuple = PENALISED):
    """||W_g||_2 for every root channel ``g`` of the group over its members' parameters of ``kinds`` (differentiable;
    None when no member has such parameters)."""
    members = channel_members(group, kinds)
    return _squared_norms(group, members).sqrt() if members else None


class GroupLassoPruner(tp.pruner.BasePruner):
    """Torch-Pruning pruner whose :meth:`regularize` adds the group-LASSO gradient to ``.grad``."""

    def __init__(self, model, example_inputs, importance, reg: float = 5e-4, eps: float = 1e-8, **kwargs):
        super().__init__(model, example_inputs, importance=importance, **kwargs)
        self.reg = reg
        self.eps = eps
        self.update_regularizer()

    def update_regularizer(self) -> None:
        self._groups = list(self.DG.get_all_groups(root_module_types=self.root_module_types,
                                                   ignored_layers=self.ignored_layers))

    def group_norms(self) -> list:
        """||W_g||_2 for every channel of every group (one tensor per group), differentiable."""
        return [n for n in map(channel_norms, self._groups) if n is not None]

    def penalty(self) -> torch.Tensor:
        """reg * sum_g ||W_g||_2 (differentiable: autograd of it is the gradient :meth:`regularize` adds)."""
        norms = self.group_norms()
        if not norms:
            return torch.zeros(())
        return self.reg * sum(n.sum() for n in norms)

    @torch.no_grad()
    def regularize(self, model=None, loss=None) -> None:
        for group in self._groups:
            members = channel_members(group)
            if not members:
                continue
            inv = 1.0 / (_squared_norms(group, members).sqrt() + self.eps)
            for layer, kind, idxs, root in members:
                w = layer.weight
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
                scale = inv.index_select(0, root)
                if kind == "in":
                    shape = (1, -1) + (1,) * (w.dim() - 2)
                    w.grad.index_add_(1, idxs, self.reg * w.index_select(1, idxs) * scale.view(shape))
                else:
                    shape = (-1,) + (1,) * (w.dim() - 1)
                    w.grad.index_add_(0, idxs, self.reg * w.index_select(0, idxs) * scale.view(shape))


def group_lasso_penalty(pruner: GroupLassoPruner) -> torch.Tensor:
    """The penalty value ``reg * sum_g ||W_g||_2`` of a :class:`GroupLassoPruner`'s model."""
    return pruner.penalty()


@register("group_lasso", SPARSIFIER, needs_data=True,
          summary="group-LASSO on the conv/linear weights and BN scales of whole DepGraph channel groups",
          reference="Wen et al., Learning Structured Sparsity in Deep Neural Networks, NeurIPS 2016")
def group_lasso(reg: float = 0.1, **_):  # see sparsifiers.py on the defaults; ~0.3 costs 5 points
    return Sparsifier("group_lasso", GroupLassoPruner, {"reg": reg})
