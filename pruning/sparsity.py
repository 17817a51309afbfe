"""How sparse sparse training made a model: per-channel group norms, and the share of channels near zero.

A channel's *group norm* is the L2 norm of every parameter that belongs to it across its DepGraph group (the
producing layers' output rows, the consuming layers' input columns, the BatchNorm scales), the very vector that
group-LASSO penalises (:func:`pruning.methods.group_lasso.channel_norms`); ``kinds`` restricts it to what a
sparsifier penalises (network slimming: the BatchNorm scales alone, see ``Sparsifier.penalises``).  The groups
are those pruning sees: every prunable DepGraph group, the classifier left out (:func:`pruning.heads.ignored_layers`).

Norms are compared *within their group*: a channel counts as sparse when its norm is below ``threshold`` times the
largest norm of its group.  Raw norms are not comparable across groups (a residual group couples a dozen layers,
a block-internal one three, so its channels' vectors are several times longer), and the criteria compare channels
within a group as well (``l2`` divides by its group's mean before the global ranking).  So :func:`relative_norms`,
the histograms and :func:`sparsity_share` all use norm / largest norm of the same group.

    before = group_norms(dense, x)
    ... sparse training ...
    sparsity_summary(before, group_norms(model, x))   # {"sparsity_before": 0.0, "sparsity_after": 0.08, ...}

    kinds = penalised("bnscale_reg")                  # what a sparsifier shrinks: ("bn",)
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .device import device_of
from .heads import ignored_layers as pruning_ignored_layers, num_classes as output_classes
from .methods import get_method
from .methods.group_lasso import PENALISED, channel_norms
from .modes import eval_mode

THRESHOLD = 0.01          # "below 1% of its group's largest norm": the headline sparsity figure
EXTRA_THRESHOLDS = (0.1,)  # a milder one: a few epochs of sparse training rarely push a channel below 1%

Norms = Sequence[np.ndarray]


def penalised(sparsifier: str) -> tuple:
    """The member kinds the named sparsifier's penalty shrinks (``("bn",)`` for network slimming)."""
    return get_method(sparsifier).build().penalises


def group_norms(model: nn.Module, example_inputs: torch.Tensor, kinds: Sequence[str] = PENALISED,
                ignored_layers=None) -> list[np.ndarray]:
    """The L2 norm of every channel of every prunable group (one array per group, in DepGraph's group order) over
    the group members' parameters of ``kinds`` (``"out"``, ``"in"``, ``"bn"``); groups without such parameters are
    left out.  ``ignored_layers`` adds to the classifier, as in :func:`pruning.prune`."""
    kinds = tuple(kinds)
    example_inputs = example_inputs.to(device_of(model))
    with eval_mode(model):  # tracing runs a forward pass: leave BatchNorm statistics alone
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        ignored = pruning_ignored_layers(model, output_classes(model, example_inputs), ignored_layers)
    norms = []
    with torch.no_grad():
        for group in graph.get_all_groups(ignored_layers=ignored):
            n = channel_norms(group, kinds)
            if n is not None:
                norms.append(n.detach().cpu().double().numpy())
    return norms


def relative_norms(norms: Union[Norms, np.ndarray]) -> np.ndarray:
    """Every channel's norm divided by the largest norm of its group, concatenated (a group of zeros gives 0)."""
    out = []
    for n in _groups(norms):
        top = float(n.max()) if n.size else 0.0
        out.append(n / top if top > 0 else np.zeros_like(n))
    return np.concatenate(out) if out else np.zeros(0)


def sparsity_share(norms: Union[Norms, np.ndarray], threshold: float = THRESHOLD) -> float:
    """The share of channels (over all groups) whose norm is below ``threshold`` times the largest norm *of the
    same group*.  A single array counts as one group."""
    rel = relative_norms(norms)
    return float((rel < threshold).mean()) if rel.size else 0.0


def sparsity_summary(before: Union[nn.Module, Norms], after: Union[nn.Module, Norms],
                     example_inputs: Optional[torch.Tensor] = None, kinds: Sequence[str] = PENALISED,
                     thresholds: Sequence[float] = (THRESHOLD, *EXTRA_THRESHOLDS)) -> dict:
    """How sparse training moved the group norms, from two models (give ``example_inputs``) or two
    :func:`group_norms` lists, as metrics MLflow accepts:

    ``sparsity_before`` / ``sparsity_after``: :func:`sparsity_share` at the first threshold (1%), and
    ``sparsity_before_10pct``-style keys for the others; ``rel_norm_p10_before`` / ``_after``: the 10th
    percentile of norm / largest norm of its group (the weak tail against the strong: it falls when the penalty
    separates them long before any channel nears zero); ``norm_ratio_median``: the median over channels of norm
    after / norm before (1: unchanged; only when both lists have the same groups, i.e. the same model).
    """
    pair = [group_norms(m, example_inputs, kinds) if isinstance(m, nn.Module) else _groups(m) for m in (before, after)]
    out = {}
    for i, t in enumerate(thresholds):
        suffix = "" if i == 0 else f"_{t * 100:g}pct".replace(".", "p")
        for label, norms in zip(("before", "after"), pair):
            out[f"sparsity_{label}{suffix}"] = sparsity_share(norms, t)
    for label, norms in zip(("before", "after"), pair):
        rel = relative_norms(norms)
        out[f"rel_norm_p10_{label}"] = float(np.quantile(rel, 0.1)) if rel.size else 0.0
    b, a = (_groups(n) for n in pair)
    if len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b)) and b:
        b, a = np.concatenate(b), np.concatenate(a)
        keep = b > 0
        out["norm_ratio_median"] = float(np.median(a[keep] / b[keep])) if keep.any() else 1.0
    return out


def _groups(norms) -> list[np.ndarray]:
    if isinstance(norms, (np.ndarray, torch.Tensor)):
        norms = [norms]
    return [np.asarray(n.detach().cpu() if isinstance(n, torch.Tensor) else n, dtype=float).ravel() for n in norms]
