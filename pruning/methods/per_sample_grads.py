"""Per-sample squared gradients (the diagonal Fisher / OBD Hessian estimate): layer hooks when every layer allows
them (one batched backward pass), ``torch.func.vmap`` otherwise, one backward pass per sample as the last resort."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def per_sample_grad_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Sum over the batch of each sample's squared gradient, per parameter name."""
    hooked = hooked_grad_squares(model, x, y)
    return hooked if hooked is not None else vmap_grad_squares(model, x, y)


def _hook_supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, (nn.Linear, nn.BatchNorm2d))


def hooked_grad_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict | None:
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
        with warnings.catch_warnings():  # the first layer's input needs no gradient: its output's is what we use
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
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


def vmap_grad_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-sample squared gradients through ``torch.func`` (any layer type; a per-sample backward pass when an op
    has no batching rule)."""
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
