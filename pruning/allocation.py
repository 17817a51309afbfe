"""Pruning-ratio allocations: a ratio per layer group (a stage of a ResNet, a run of ViT blocks, ...).

A uniform or global allocation is what PruningBench compares methods at; an allocation gives each layer group its
own share of the pruning.  :func:`layer_groups` splits a model into at most ``max_groups`` contiguous groups of
prunable layers, named after the modules they cover; :func:`ratio_dict` turns ``{group name: ratio}`` into
Torch-Pruning's ``pruning_ratio_dict`` (a tuple of modules per key: channels are ranked globally within each
group and each group loses its own fraction).  With a speedup target, :func:`pruning.prune` scales the whole
allocation step by step until the MACs target is met, so only the *shape* of the allocation matters there
(:func:`scalable`); without one, the ratios are absolute.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Optional

import torch
from torch import nn

from .device import device_of
from .errors import PruneBenchError
from .heads import classifier_layers
from .latency import batch_of, compare
from .steps import prune

PRUNABLE = (nn.Conv2d, nn.Linear)


def layer_groups(model: nn.Module, num_classes: Optional[int] = None, example_inputs: Optional[torch.Tensor] = None,
                 max_groups: int = 4) -> dict[str, list[nn.Module]]:
    """Contiguous groups of the prunable layers (convolutions and linears, the classifier excluded), in order.

    Layers are bucketed by the shortest module-name prefix that yields at least two multi-layer buckets
    (``layers.0``, ``layers.1`` ... for a CIFAR ResNet; ``blocks.0`` ... for a ViT; ``stages.0`` ... for a ConvNeXt);
    a bucket of a single layer (a stem) joins its neighbour, and neighbouring buckets merge until at most
    ``max_groups`` remain.
    """
    if max_groups < 1:
        raise PruneBenchError(f"max_groups must be >= 1, got {max_groups}")
    if num_classes is None:
        if example_inputs is None:
            raise PruneBenchError("layer_groups needs num_classes or example_inputs to find the classifier")
        with torch.no_grad():
            num_classes = int(model.eval()(example_inputs).shape[-1])
    head = {id(m) for c in classifier_layers(model, num_classes) for m in c.modules()}
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE) and id(m) not in head]
    if not layers:
        raise PruneBenchError(f"{type(model).__name__} has no prunable convolution or linear layer")
    buckets = _buckets(layers)
    buckets = _absorb_singletons(buckets)
    chunks = _merge_to(buckets, max_groups)
    return {_chunk_name(chunk): [m for _, members in chunk for _, m in members] for chunk in chunks}


def _buckets(layers: list) -> list[tuple[str, list]]:
    depth = max(len(name.split(".")) for name, _ in layers)
    for d in range(1, depth + 1):
        prefixes = [".".join(name.split(".")[:d]) for name, _ in layers]
        if sum(n > 1 for n in Counter(prefixes).values()) >= 2:
            break
    buckets: list[tuple[str, list]] = []
    for prefix, layer in zip(prefixes, layers):
        if buckets and buckets[-1][0] == prefix:
            buckets[-1][1].append(layer)
        else:
            buckets.append((prefix, [layer]))
    return buckets


def _absorb_singletons(buckets: list) -> list:
    """A bucket of one layer (a stem conv, a final projection) joins the next bucket (the last joins the previous)."""
    if all(len(members) == 1 for _, members in buckets):  # a flat stack (VGG): every layer is its own bucket
        return [[bucket] for bucket in buckets]
    out: list = []
    pending: list = []
    for prefix, members in buckets:
        if len(members) == 1:
            pending.append((prefix, members))
            continue
        out.append([*pending, (prefix, members)])
        pending = []
    if pending:
        if out:
            out[-1].extend(pending)
        else:
            out.append(pending)
    return out


def _merge_to(buckets: list, max_groups: int) -> list:
    """Merge neighbouring buckets into ``max_groups`` chunks of roughly equal bucket counts."""
    if len(buckets) <= max_groups:
        return buckets
    chunks = []
    for i in range(max_groups):
        lo, hi = len(buckets) * i // max_groups, len(buckets) * (i + 1) // max_groups
        chunks.append([part for bucket in buckets[lo:hi] for part in bucket])
    return chunks


def _chunk_name(chunk: list) -> str:
    names = [prefix for prefix, _ in chunk]
    main = [prefix for prefix, members in chunk if len(members) > 1] or names
    return main[0] if len(main) == 1 else f"{main[0]}..{main[-1]}"


def scalable(ratios: dict[str, float]) -> dict[str, float]:
    """The allocation's shape, for a speedup target: every ratio divided by the smallest.

    Iterative pruning moves each group linearly towards its ratio (capped at ``1 - protect``), so with these
    values every group, the least pruned included, can reach its floor by the last step: the steps scale the whole
    allocation until the MACs target is met, groups saturating at their floor one after another.
    """
    if not ratios:
        raise PruneBenchError("an allocation needs at least one layer-group ratio")
    low = min(ratios.values())
    if not low > 0:
        raise PruneBenchError(f"a scalable allocation needs positive ratios; got {ratios}")
    return {name: r / low for name, r in ratios.items()}


def ratio_dict(groups: dict[str, list[nn.Module]], ratios: dict[str, float]) -> dict[tuple, float]:
    """Torch-Pruning's ``pruning_ratio_dict`` for an allocation: ``{tuple(modules of a group): ratio}``."""
    unknown = sorted(set(ratios) - set(groups))
    missing = sorted(set(groups) - set(ratios))
    if unknown or missing:
        raise PruneBenchError(f"allocation does not match the layer groups {list(groups)}: "
                              f"unknown {unknown}, missing {missing}")
    bad = {k: v for k, v in ratios.items() if not v >= 0}
    if bad:
        raise PruneBenchError(f"allocation ratios must be >= 0 (values above 1 - protect are capped); got {bad}")
    return {tuple(groups[name]): float(r) for name, r in ratios.items()}


def group_widths(groups: dict[str, list[nn.Module]]) -> dict[str, int]:
    """Total output channels (features) of each group's layers; compare before and after pruning."""
    return {name: sum(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in modules)
            for name, modules in groups.items()}


def reachable_speedup(model: nn.Module, example_inputs: torch.Tensor, protect: float,
                      num_classes: Optional[int] = None, target: str = "macs", latency_batch: int = 1,
                      latency_threads: Optional[int] = None) -> float:
    """The largest speedup (in ``target``'s terms: MACs, params or measured latency at ``latency_batch``) any
    allocation can reach when every group keeps ``protect`` of its channels."""
    probe = copy.deepcopy(model)
    example_inputs = example_inputs.to(device_of(model))
    groups = layer_groups(probe, num_classes, example_inputs, max_groups=1)
    # ratio 1 in every group, capped by the protection floor (a plain pruning_ratio of 1 is not capped); several
    # steps, because Torch-Pruning skips a step that would leave a layer with less than one channel
    _, report = prune(probe, example_inputs, "l1", None, "local", protect=protect, steps=10, num_classes=num_classes,
                      pruning_ratio_dict=ratio_dict(groups, {name: 1.0 for name in groups}))
    if target == "params":
        return report.params_dense / report.params_pruned
    if target == "latency":
        return compare(model, probe, batch_of(example_inputs, latency_batch), rounds=3, repeats=10,
                       threads=latency_threads)["speedup"]
    return report.speedup