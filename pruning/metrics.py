"""What every result is measured by: top-1 accuracy, MACs, params and CPU latency.

Conventions: MACs and params are per sample (batch 1) at the dataset's input size, counted by
``torch_pruning.utils.count_ops_and_params`` (one multiply-accumulate = one MAC; convolutions, linear layers and
normalisation counted; parameters = all ``nn.Parameter`` elements).  Speedup = dense MACs / pruned MACs.
Latency = median wall time of a no-grad forward pass on the CPU over repeats, after warm-up.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch_pruning as tp
from torch import nn

from .device import batches_on, device_of
from .modes import eval_mode


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) of one forward pass on ``example_inputs`` (give it a batch of 1)."""
    with eval_mode(model):  # Torch-Pruning's counter leaves the model in eval mode
        macs, params = tp.utils.count_ops_and_params(model, example_inputs=example_inputs.to(device_of(model)))
    return int(macs), int(params)


def measure_latency(model: nn.Module, inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds per forward pass of ``inputs`` on the CPU (:func:`pruning.latency.measure` has the spread)."""
    from .latency import measure
    return measure(model, inputs, repeats, warmup).median


@torch.no_grad()
def correct_predictions(model: nn.Module, loader: Iterable) -> torch.Tensor:
    """One bool per sample, in the loader's order: was the top-1 prediction right?  (What intervals over test
    images and comparisons paired on the same images are computed from.)"""
    hits = []
    with eval_mode(model):
        for x, y in batches_on(model, loader):
            hits.append((model(x).argmax(1) == y).cpu())
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def accuracy(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in percent."""
    return percent_correct(correct_predictions(model, loader))


def percent_correct(hits: torch.Tensor) -> float:
    return 100.0 * hits.sum().item() / max(len(hits), 1)


def channel_table(model: nn.Module, reference: dict | None = None) -> list[dict]:
    """Per prunable layer: its name, type and output width (and the dense width when ``reference`` is given)."""
    rows = []
    for name, module in model.named_modules():
        width = _width(module)
        if width is None:
            continue
        row = {"layer": name, "type": type(module).__name__, "channels": width}
        if reference is not None and name in reference:
            row["dense_channels"] = reference[name]
            row["kept"] = round(width / reference[name], 4) if reference[name] else 1.0
        rows.append(row)
    return rows


def layer_widths(model: nn.Module) -> dict:
    return {name: w for name, m in model.named_modules() if (w := _width(m)) is not None}


def _width(module: nn.Module):
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None
