"""Family-specific pruning support: attention heads, layer scales, grouped convolutions, unwrapped parameters.

Torch-Pruning's dependency graph prunes the tensors; this module tells it what it cannot see for itself and repairs
what it does not touch (none of it is timm-specific: it keys on module attributes and parameter ownership):

* **Attention** (any module with a ``qkv`` ``nn.Linear`` and ``num_heads``/``head_dim`` attributes, e.g. timm's
  ``Attention`` used by ViT and DeiT): ``num_heads`` is given to the pruner for ``qkv`` so head dimensions are
  removed uniformly across heads (``head_dim_ratio``) and whole heads can be removed (``head_ratio``).  After every
  step, and after a checkpoint's pruning history is replayed, ``num_heads``, ``head_dim``, ``attn_dim`` and ``scale``
  are set from the pruned ``qkv`` width.  ``scale`` becomes ``head_dim ** -0.5``, which is what the fused path
  (``F.scaled_dot_product_attention``) uses implicitly, so fused and unfused attention agree after pruning.
* **Unwrapped parameters** (``pos_embed``, ``cls_token``, ConvNeXt's layer-scale ``gamma``, ...): passed to the
  pruner explicitly with their channel dimension (the last non-singleton one), the same rule in pruning and in
  checkpoint replay, so both prune them identically.
* **Unsupported layers**: attention-like modules this module cannot repair (they hold ``num_heads`` but no fused
  ``qkv`` projection) are named in a :class:`~pruning.errors.PruneBenchError` before any work
  (:mod:`pruning.preflight` trial-prunes a copy for everything else).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch_pruning as tp
from torch import nn

from .device import device_of
from .errors import PruneBenchError
from .tp_adapter import channel_groups, is_attention_group, veto_pruning_ratio_check

# Option names this module consumes from ``prune(**options)``; the rest go to Torch-Pruning.
FAMILY_OPTIONS = ("head_ratio", "head_dim_ratio")


# --------------------------------------------------------------------------- discovery
def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Multi-head attention modules with a fused ``qkv`` projection that this module can repair."""
    return [(name, m) for name, m in model.named_modules() if _is_qkv_attention(m)]


def _is_qkv_attention(m: nn.Module) -> bool:
    return (isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "head_dim", None), int))


def unsupported_attention(model: nn.Module) -> list[tuple[str, str]]:
    """(name, type) of modules that carry ``num_heads`` but are not a fused-qkv attention this module repairs."""
    found = []
    for name, m in model.named_modules():
        if isinstance(getattr(m, "num_heads", None), int) and not _is_qkv_attention(m):
            if any(isinstance(c, nn.Linear) for c in m.children()):  # holds projections of its own
                found.append((name, type(m).__name__))
    return found


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters not owned by a layer Torch-Pruning prunes (pos_embed, cls_token, layer-scale gamma, ...),
    each with the dimension holding its channels: the last non-singleton one (Torch-Pruning's rule, made explicit
    so that pruning and checkpoint replay agree and no warning is printed)."""
    wrapped = set()
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
                          nn.GroupNorm, nn.PReLU, nn.Embedding, nn.MultiheadAttention, nn.LSTM)):
            wrapped.update(id(p) for p in m.parameters(recurse=False))
        elif type(m).__name__ in ("LayerNorm2d", "LayerNorm", "RmsNorm", "RmsNorm2d") and isinstance(m, nn.Module):
            wrapped.update(id(p) for p in m.parameters(recurse=False))
    out = []
    for _, p in model.named_parameters():
        if id(p) in wrapped:
            continue
        dims = [i for i, s in enumerate(p.shape) if s > 1]
        if dims:
            out.append((p, dims[-1]))
    return out


def graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """A dependency graph built with the same unwrapped-parameter rule the pruner uses (for history replay)."""
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs.to(device_of(model)),
                                                 unwrapped_parameters=unwrapped_parameters(model), verbose=False)


# --------------------------------------------------------------------------- pruner options and hooks
@dataclass
class FamilyHooks:
    """What :func:`pruning.steps.prune` merges into the pruner and calls around each step."""
    options: dict = field(default_factory=dict)
    configure: Optional[Callable] = None   # configure(pruner) once, after the pruner is built
    after_step: Optional[Callable] = None  # after_step(pruner) after every step (the model is forwarded next)


def family_options(model: nn.Module, head_ratio: float = 0.0, head_dim_ratio: Optional[float] = None,
                   steps: int = 100) -> FamilyHooks:
    """Pruner options for the model's family (empty for a plain CNN, which keeps its behaviour unchanged).

    ``head_ratio``: fraction of attention heads removed (whole heads, ranked globally, removed in the first step).
    ``head_dim_ratio``: ``None`` (default) ranks head dimensions with every other channel in the chosen scope;
    ``0`` keeps head dimensions; a value in (0, 1) removes that fraction of head dimensions (ranked across all
    attention layers, reached in the first step) and leaves them out of the scope's ranking.
    """
    if not 0 <= head_ratio < 1:
        raise PruneBenchError(f"head_ratio must be in [0, 1), got {head_ratio}")
    if head_dim_ratio is not None and not 0 <= head_dim_ratio < 1:
        raise PruneBenchError(f"head_dim_ratio must be in [0, 1), got {head_dim_ratio}")
    bad = unsupported_attention(model)
    if bad:
        name, kind = bad[0]
        raise PruneBenchError(f"cannot prune layer type {kind} ({name}): only multi-head attention with a fused "
                              f"qkv nn.Linear and num_heads/head_dim attributes (ViT/DeiT style) can be pruned")
    hooks = FamilyHooks()
    params = unwrapped_parameters(model)
    if params:
        hooks.options["unwrapped_parameters"] = params
    if any(_is_grouped(m) for m in model.modules()):
        hooks.configure = _keep_group_width
    attns = attention_modules(model)
    if not attns:
        if head_ratio or head_dim_ratio:
            raise PruneBenchError("head_ratio/head_dim_ratio given, but the model has no attention layer")
        return hooks
    qkvs = tuple(m.qkv for _, m in attns)
    hooks.options.update(num_heads={m.qkv: m.num_heads for _, m in attns},
                         prune_num_heads=head_ratio > 0, head_pruning_ratio=head_ratio,
                         prune_head_dims=head_dim_ratio != 0)
    if head_dim_ratio:
        hooks.options["pruning_ratio_dict"] = {qkvs: head_dim_ratio}

    def configure(pruner):
        _keep_group_width(pruner)
        # Heads and a fixed head-dim ratio are structural choices, not part of the MACs-driven schedule: reach
        # them in the first step, then let the channel schedule run until the MACs target.
        # Whole heads go in step 1 only: a later step with nothing left to remove would reach Torch-Pruning
        # 1.6.1's global head ranking with no threshold defined (UnboundLocalError: head_thres).
        n = len(pruner.per_step_head_pruning_ratio)
        pruner.per_step_head_pruning_ratio = [0.0, head_ratio] + [0.0] * (n - 2)
        if head_dim_ratio:
            for q in qkvs:
                if q in pruner.pruning_ratio_dict:
                    pruner.pruning_ratio_dict[q] = [0.0] + [head_dim_ratio] * (n - 1)

    def after_step(pruner):
        fix_attention(model, {name: pruner.num_heads.get(m.qkv, m.num_heads) for name, m in attns})

    hooks.configure, hooks.after_step = configure, after_step
    return hooks


def _is_grouped(m: nn.Module) -> bool:
    """A grouped (not depthwise) convolution, as in RegNet and ResNeXt."""
    return isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.in_channels


MIN_GROUP_WIDTH = 2


def _keep_group_width(pruner) -> None:
    """Grouped convolutions keep >= MIN_GROUP_WIDTH channels per group.

    Torch-Pruning removes the same positions from every group; at one channel per group a grouped convolution looks
    depthwise and its importance is computed with the wrong shape (IndexError in 1.6.1).  The most important
    positions of each channel group score +inf, so no threshold ever removes them.
    """
    estimate = pruner.estimate_importance

    def guarded(group):
        imp = estimate(group)
        if imp is None or is_attention_group(pruner, group):
            return imp
        groups = channel_groups(pruner, group)
        if groups <= 1 or len(imp) % groups:
            return imp
        per = imp.view(groups, -1)
        keep = per.mean(0).topk(min(MIN_GROUP_WIDTH, per.shape[1])).indices
        per = per.clone()
        per[:, keep] = float("inf")
        return per.view(-1)

    def at_minimum(group):  # a group at the minimum width leaves the ranking (and its +inf scores with it)
        return any(_is_grouped(m) and m.in_channels // m.groups <= MIN_GROUP_WIDTH
                   for m in (dep.target.module for dep, _ in group))

    pruner.estimate_importance = guarded
    veto_pruning_ratio_check(pruner, at_minimum)


# --------------------------------------------------------------------------- attribute repair
def fix_attention(model: nn.Module, num_heads: Optional[dict] = None) -> dict:
    """Make every fused-qkv attention consistent with its (pruned) ``qkv`` width; return ``{name: num_heads}``.

    ``num_heads`` maps module names to head counts after head pruning (recorded at pruning time and stored in
    checkpoints); modules not listed keep their head count, so pruned head dimensions alone need no record.
    The result is kept on ``model.prunebench_attention`` for :func:`pruning.checkpoint.save_checkpoint`.
    """
    num_heads = dict(num_heads or {})
    record = {}
    for name, m in attention_modules(model):
        heads = int(num_heads.get(name, m.num_heads))
        width = m.qkv.out_features
        if heads < 1 or width % (3 * heads):
            raise PruneBenchError(f"attention {name} ({type(m).__name__}): qkv width {width} is not 3 x "
                                  f"{heads} heads x head_dim")
        m.num_heads = heads
        m.head_dim = width // (3 * heads)
        if hasattr(m, "attn_dim"):
            m.attn_dim = heads * m.head_dim
        if hasattr(m, "scale"):
            m.scale = m.head_dim ** -0.5
        record[name] = heads
    model.prunebench_attention = record
    return record
