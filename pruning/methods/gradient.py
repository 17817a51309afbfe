"""Data-driven criteria: first-order Taylor, OBD-Hessian and OBD-C (EigenDamage).

Each is a Torch-Pruning importance with a ``calibrate(model, batches, pruner)`` method that runs once over the
calibration batches.  Calibration leaves its statistics in the parameters' ``.grad``, which Torch-Pruning slices
along with the weights whenever channels are removed, so iterative pruning needs one calibration pass, not one per
step.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .base import CRITERION, register

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]


_OUT = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
_IN = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
_NORM = (tp.prune_batchnorm_out_channels, tp.prune_layernorm_out_channels, tp.prune_groupnorm_out_channels)


def _trainable(model: nn.Module):
    return [p for p in model.parameters() if p.requires_grad]


def score_group(importance, group, member_score) -> torch.Tensor | None:
    """Per-channel score of a group from each member's weight and its ``.grad`` statistic.

    ``member_score(w, stat)`` is elementwise; it is summed over each channel's weights (conv/linear rows for output
    channels, columns for input channels, one value for norm layers), then reduced over the group's members and
    normalised as the importance is configured (Torch-Pruning's mean reduction and mean normaliser by default).
    """
    scores, root_idxs = [], []
    for i, (dep, idxs) in enumerate(group):
        layer, fn = dep.target.module, dep.handler
        if not isinstance(layer, tuple(importance.target_types)) or getattr(layer, "weight", None) is None \
                or layer.weight.grad is None:
            continue
        w, stat = layer.weight.data, layer.weight.grad.data
        transposed = getattr(layer, "transposed", False)
        if fn in _OUT:
            pick = (lambda t: t.transpose(0, 1)) if transposed else (lambda t: t)
            local = member_score(pick(w)[idxs].flatten(1), pick(stat)[idxs].flatten(1)).sum(1)
        elif fn in _IN:
            pick = (lambda t: t) if transposed else (lambda t: t.transpose(0, 1))
            local = member_score(pick(w).flatten(1), pick(stat).flatten(1)).sum(1)
            if fn == tp.prune_conv_in_channels and layer.groups not in (1, layer.in_channels):
                local = local.repeat(layer.groups)
            local = local[idxs]
        elif fn in _NORM:
            local = member_score(w[idxs], stat[idxs])
        else:
            continue
        scores.append(local)
        root_idxs.append(group[i].root_idxs)
    if not scores:
        return None
    return importance._normalize(importance._reduce(scores, root_idxs), importance.normalizer)


class TaylorImportance(tp.importance.GroupTaylorImportance):
    """|w * dL/dw| summed over the channel's weights, with the gradient of the mean loss over the calibration set.

    Unlike Torch-Pruning 1.6.1's ``GroupTaylorImportance``, BatchNorm members count (its BN branch tests the
    GroupNorm pruning function and never matches).
    """

    @torch.no_grad()
    def __call__(self, group):
        return score_group(self, group, lambda w, g: (w * g).abs())

    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        model.eval()
        model.zero_grad(set_to_none=True)
        batches = list(batches)
        total = sum(len(y) for _, y in batches)
        for x, y in batches:
            (F.cross_entropy(model(x), y, reduction="sum") / total).backward()
        return total


class HessianImportance(tp.importance.GroupHessianImportance):
    """OBD with a diagonal Hessian: mean over samples of (dL_i/dw)^2 * w^2, summed over the channel's weights.

    Torch-Pruning 1.6.1's ``accumulate_grad`` tests ``name`` against a dict keyed by parameters, so it keeps only the
    last sample's gradient; here every sample counts.  ``calibrate`` computes per-sample gradients with
    ``torch.func`` (vmap over the batch) and stores their mean square in ``.grad``.
    """

    def accumulate_grad(self, model: nn.Module) -> None:
        """Torch-Pruning's API: add the current ``.grad`` (of one sample's loss) to the running sum of squares."""
        for param in _trainable(model):
            if param.grad is None:
                continue
            square = param.grad.detach().pow(2)
            if param in self._accu_grad:
                self._accu_grad[param] += square
                self._counter[param] += 1
            else:
                self._accu_grad[param] = square.clone()
                self._counter[param] = 1

    @torch.no_grad()
    def __call__(self, group):
        for param, total in self._accu_grad.items():  # accumulate_grad's sums become the mean in .grad
            param.grad = total / self._counter[param]
        self.zero_grad()
        return score_group(self, group, lambda w, h: w.pow(2) * h)

    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        model.eval()
        self.zero_grad()
        sums = {name: torch.zeros_like(p) for name, p in model.named_parameters() if p.requires_grad}
        count = 0
        for x, y in batches:
            for name, sq in _per_sample_grad_squares(model, x, y).items():
                sums[name] += sq
            count += len(y)
        for name, p in model.named_parameters():
            if name in sums:
                p.grad = sums[name] / count
        return count


def _per_sample_grad_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Sum over the batch of each sample's squared gradient, per parameter name."""
    hooked = _hooked_grad_squares(model, x, y)
    return hooked if hooked is not None else _vmap_grad_squares(model, x, y)


def _hook_supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, (nn.Linear, nn.BatchNorm2d))


def _hooked_grad_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """Per-sample squared gradients from layer hooks: one batched backward pass, no per-sample weight copies.

    With the loss summed over samples (BatchNorm in eval mode couples no samples), a layer's output gradient for
    sample n is that sample's own; its weight gradient is then output-gradient x input (unfolded for convolutions),
    which is squared and summed here per sample.  Returns None when a parameter sits in a layer type this does not
    cover (grouped convolutions, LayerNorm, bare parameters), so the caller uses the general vmap path.
    """
    owners = {p: m for m in model.modules() for p in m.parameters(recurse=False) if p.requires_grad}
    if not owners or not all(_hook_supported(m) for m in owners.values()):
        return None
    inputs, sums, handles = {}, {}, []

    def add(param, value):
        sums[param] = sums.get(param, 0) + value

    def save_input(module, args, _):
        inputs[module] = args[0].detach()

    def square_grads(module, _, grad_output):
        g, inp = grad_output[0].detach(), inputs.pop(module)
        if isinstance(module, nn.Conv2d):
            cols = F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)
            per_sample = torch.bmm(g.flatten(2), cols.transpose(1, 2))  # N x C_out x (C_in * k * k)
            add(module.weight, per_sample.pow(2).sum(0).view_as(module.weight))
            if module.bias is not None:
                add(module.bias, g.sum((2, 3)).pow(2).sum(0))
        elif isinstance(module, nn.Linear):
            if g.dim() != 2:
                raise _Unsupported
            add(module.weight, g.pow(2).t() @ inp.pow(2))
            if module.bias is not None:
                add(module.bias, g.pow(2).sum(0))
        else:  # BatchNorm2d in eval mode: normalised with the running statistics
            x_hat = (inp - module.running_mean[None, :, None, None]) / torch.sqrt(
                module.running_var[None, :, None, None] + module.eps)
            add(module.weight, (g * x_hat).sum((2, 3)).pow(2).sum(0))
            add(module.bias, g.sum((2, 3)).pow(2).sum(0))

    for module in set(owners.values()):
        handles.append(module.register_forward_hook(save_input))
        handles.append(module.register_full_backward_hook(square_grads))
    try:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
    except (_Unsupported, RuntimeError):  # e.g. an in-place op on a hooked output: take the general path
        return None
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    names = {p: n for n, p in model.named_parameters()}
    if len(sums) != len(owners):
        return None
    return {names[p]: v for p, v in sums.items()}


class _Unsupported(Exception):
    pass


def _vmap_grad_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    from torch.func import functional_call, grad, vmap
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def sample_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    n_params = sum(p.numel() for p in params.values())
    chunk = max(1, min(len(y), int(5e8 // max(n_params, 1))))  # per-sample grads: at most ~2 GB of floats
    try:
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk)(params, x, y)
        return {n: g.pow(2).sum(0) for n, g in grads.items()}
    except RuntimeError:  # an op without a batching rule: fall back to one backward pass per sample
        sums = {n: torch.zeros_like(p) for n, p in params.items()}
        named = dict(model.named_parameters())
        for xi, yi in zip(x, y):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xi.unsqueeze(0)), yi.unsqueeze(0)).backward()
            for n in sums:
                if named[n].grad is not None:
                    sums[n] += named[n].grad.pow(2)
        model.zero_grad(set_to_none=True)
        return sums


class OBDCImportance(HessianImportance):
    """OBD with the true Fisher: like ``hessian`` but with labels sampled from the model's own predictions.

    This is what Torch-Pruning's ``OBDCImportance`` estimates (per-sample squared gradients of conv/linear weights
    under sampled labels).  Its Fisher buffers are not re-indexed when a layer loses output channels, so they break
    after the first pruning step; kept in ``.grad`` here, they stay aligned with the weights.
    """

    def __init__(self, num_classes: int | None = None):
        super().__init__(target_types=[nn.modules.conv._ConvNd, nn.Linear])
        self.num_classes = num_classes

    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        generator = torch.Generator().manual_seed(0)
        model.eval()

        def sampled(x, _):
            with torch.no_grad():
                return torch.multinomial(torch.softmax(model(x), 1), 1, generator=generator).view(-1)
        return super().calibrate(model, [(x, sampled(x, y)) for x, y in batches], pruner)


@register("taylor", CRITERION, needs_data=True, summary="first-order Taylor expansion |w * grad|",
          reference="Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019")
def taylor(**_):
    return TaylorImportance()


@register("hessian", CRITERION, needs_data=True, summary="OBD: mean per-sample grad^2 * w^2 (diagonal Hessian)",
          reference="LeCun et al., Optimal Brain Damage, NeurIPS 1989")
def hessian(**_):
    return HessianImportance()


@register("obdc", CRITERION, needs_data=True, summary="OBD with the true Fisher diagonal (labels sampled from the model)",
          reference="Wang et al., EigenDamage, ICML 2019")
def obdc(num_classes: int = 1000, **_):
    return OBDCImportance(num_classes=num_classes)
