"""The one place that touches Torch-Pruning's private API, and the group vocabulary every method shares.

Torch-Pruning (pinned to 1.6.x in pyproject) exposes groups, pruners and importances, but a few things prunebench
needs are private there: a graph's module names, whether a group is an attention group, a group's channel-group
count, the pruner's ratio check, and an importance's reduce/normalise steps.  They are wrapped here, so a
Torch-Pruning upgrade is checked in one module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

# Pruning functions (DepGraph "handlers") by the side of a layer whose channels they remove.
OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)
BN_FNS = (function.prune_batchnorm_out_channels,)
NORM_FNS = BN_FNS + (function.prune_layernorm_out_channels, function.prune_groupnorm_out_channels)


@dataclass(frozen=True)
class Member:
    """One member of a DepGraph group: a layer, the function that prunes it, its channel indices and the indices
    of the group's root channels they correspond to."""
    layer: nn.Module
    handler: Callable
    idxs: list
    root_idxs: list


def group_members(group, handlers: Optional[tuple] = None) -> Iterator[Member]:
    """The members of a group (only those pruned by one of ``handlers``, if given) whose channels all map to root
    channels (a member with an unmapped index cannot be scored per root channel)."""
    for i, (dep, idxs) in enumerate(group):
        if handlers is not None and dep.handler not in handlers:
            continue
        root = group[i].root_idxs
        if any(r is None for r in root):
            continue
        yield Member(dep.target.module, dep.handler, idxs, root)


def module_names(graph: tp.DependencyGraph) -> dict:
    """Module -> its qualified name in the graph's model."""
    return graph._module2name


def is_attention_group(pruner: tp.pruner.BasePruner, group) -> bool:
    return pruner._is_atten_group(group)[0]


def channel_groups(pruner: tp.pruner.BasePruner, group) -> int:
    """How many channel groups (grouped convolution groups, attention heads) the group's channels come in."""
    return pruner._get_channel_groups(group)


def veto_pruning_ratio_check(pruner: tp.pruner.BasePruner, veto: Callable) -> None:
    """Make the pruner skip a group whenever ``veto(group)`` is true, besides its own ratio check."""
    check = pruner._check_pruning_ratio
    pruner._check_pruning_ratio = lambda group: not veto(group) and check(group)


def reduce_and_normalize(importance: tp.importance.GroupMagnitudeImportance, scores: list,
                         root_idxs: list) -> torch.Tensor:
    """Members' per-channel scores reduced over the group and normalised, as the importance is configured."""
    return importance._normalize(importance._reduce(scores, root_idxs), importance.normalizer)
