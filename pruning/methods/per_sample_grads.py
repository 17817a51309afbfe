"""Per-sample squared gradients (the diagonal Fisher / OBD Hessian estimate): layer hooks when every layer allows
them (one batched backward pass), ``torch.func.vmap`` otherwise, one backward pass per sample as the last resort."""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn


Labels = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def per_sample_grad_squares(model: nn.Module, x: torch.Tensor, y: Labels) -> dict:
    """Sum over the batch of each sample's squared gradient, per parameter name.

    ``y`` is the labels, or a function that draws them from the model's logits for ``x`` (the true Fisher): the
    hooked path then needs a single forward pass.
    """
    hooked = hooked_grad_squares(model, x, y)
    if hooked is not None:
        return hooked
    if callable(y):
        with torch.no_grad():
            y = y(model(x))
    return vmap_grad_squares(model, x, y)


def _hook_supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, (nn.Linear, nn.BatchNorm2d))


def hooked_grad_squares(model: nn.Module, x: torch.Tensor, y: Labels) -> dict | None:
    """Per-sample squared gradients from layer hooks: one batched backward pass, no per-sample weight copies.

    With the loss summed over samples (BatchNorm in eval mode couples no samples), a layer's output gradient for
    sample n is that sample's own; its weight gradient is then output-gradient x input (unfolded for convolutions),
    squared and summed here.  The weights are frozen during the pass (their summed gradients are not needed, and
    the backward pass then computes only input gradients).  Returns None when a parameter sits in a layer type this
    does not cover (grouped convolutions, LayerNorm, bare parameters), so the caller uses the general vmap path.
    """
    owners = {p: m for m in model.modules() for p in m.parameters(recurse=False) if p.requires_grad}
    if not owners or not all(_hook_supported(m) for m in owners.values()):
        return None
    sums: dict = {}

    def add(param, value):
        if param in sums:
            sums[param].add_(value)
        else:
            sums[param] = value

    calls: set = set()

    def on_output(module, args, output):
        # A tensor hook, not a module backward hook: it sees the gradient of this very output (of its value before
        # any later in-place op), without the extra autograd nodes a full backward hook inserts.
        if module in calls:  # a layer used twice: its per-sample gradient sums both uses before squaring
            raise _Unsupported
        calls.add(module)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            inp = args[0].detach()
            output.register_hook(lambda grad: _square_layer_grads(module, inp, grad.detach(), add))

    handles = [module.register_forward_hook(on_output) for module in set(owners.values())]
    try:
        for param in owners:
            param.requires_grad_(False)
        logits = model(x.detach().requires_grad_(True))
        labels = y(logits.detach()) if callable(y) else y
        F.cross_entropy(logits, labels, reduction="sum").backward()
    except (_Unsupported, RuntimeError):  # e.g. an op that refuses a graph this way: take the general path
        return None
    finally:
        for handle in handles:
            handle.remove()
        for param in owners:
            param.requires_grad_(True)
        model.zero_grad(set_to_none=True)
    names = {p: n for n, p in model.named_parameters()}
    if len(sums) != len(owners):
        return None
    return {names[p]: v for p, v in sums.items()}


def _square_layer_grads(module: nn.Module, inp: torch.Tensor, g: torch.Tensor, add) -> None:
    """Add each sample's squared weight (and bias) gradient of one layer, from its input and output gradient."""
    if isinstance(module, nn.Conv2d):
        add(module.weight, conv_weight_squares(module, inp, g).view_as(module.weight))
        if module.bias is not None:
            add(module.bias, g.sum((2, 3)).pow(2).sum(0))
    elif isinstance(module, nn.Linear):
        if g.dim() != 2:
            raise _Unsupported
        add(module.weight, g.pow(2).t() @ inp.pow(2))
        if module.bias is not None:
            add(module.bias, g.pow(2).sum(0))
    else:  # BatchNorm2d in eval mode: x_hat = (x - running mean) / running std, so without materialising it
        g_sums = g.sum((2, 3))
        weight_grads = ((g * inp).sum((2, 3)) - g_sums * module.running_mean) * torch.rsqrt(
            module.running_var + module.eps)
        add(module.weight, weight_grads.pow(2).sum(0))
        add(module.bias, g_sums.pow(2).sum(0))


def conv_weight_squares(conv: nn.Conv2d, inp: torch.Tensor, g: torch.Tensor, at_once: int | None = None) \
        -> torch.Tensor:
    """Sum over samples of (g_n @ unfold(x_n)^T)^2: C_out x (C_in * k * k), ``at_once`` samples at a time.

    By default, on a CPU, one sample at a time, squared into the accumulator at once: the batch's per-sample
    gradients together (N x C_out x C_in k k, 600 MB for one ResNet-18 layer at batch 64) would be written, squared
    and summed through main memory, at 2-3 times the cost (measured on a 2-core CPU); one sample's stays in cache.
    A GPU's memory is fast and its kernel launches are not free: there, as many samples at once as fit a budget.
    """
    grads = g.flatten(2)  # N x C_out x positions
    total = grads.new_zeros(grads.shape[1], conv.weight[0].numel())
    at_once = at_once or (max(1, _GPU_PRODUCT_BUDGET // total.numel()) if grads.is_cuda else 1)
    if at_once == 1:
        for n, sample_grads in enumerate(grads):
            product = sample_grads @ _unfold(conv, inp[n:n + 1])[0].t()
            total.addcmul_(product, product)
        return total
    for start in range(0, len(grads), at_once):
        products = torch.bmm(grads[start:start + at_once], _unfold(conv, inp[start:start + at_once]).transpose(1, 2))
        total.add_(products.square_().sum(0))
    return total


def _unfold(conv: nn.Conv2d, inp: torch.Tensor) -> torch.Tensor:
    return F.unfold(inp, conv.kernel_size, conv.dilation, conv.padding, conv.stride)


_GPU_PRODUCT_BUDGET = 1 << 28  # per-sample gradient elements held at once on a GPU (1 GiB of floats)


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
