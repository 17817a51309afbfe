"""Pre-flight checks run before any real work: the model takes the dataset's input size, and it can be pruned.

:func:`check_prunable` runs a trial prune on a copy so a family that breaks fails with the layer type named, not
with a shape error deep in torch.
"""
from __future__ import annotations

import copy
import warnings
from typing import Optional

import torch
import torch_pruning as tp
from torch import nn

from .device import device_of
from .errors import PruneBenchError
from .family import family_options
from .heads import classifier_layers
from .modes import eval_mode
from .steps import check_round_to


def check_input_size(model: nn.Module, example_inputs: torch.Tensor, label: str = "model") -> None:
    """One forward pass at the dataset's input size; a failure becomes a PruneBenchError naming the size."""
    example_inputs = example_inputs.to(device_of(model))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_inputs)
    except Exception as e:
        size = "x".join(str(s) for s in example_inputs.shape[-2:])
        raise PruneBenchError(f"{label} cannot take {size} inputs: {_first_line(e)}")


def check_prunable(model: nn.Module, example_inputs: torch.Tensor, num_classes: int,
                   label: str = "model", round_to: Optional[int] = None) -> None:
    """Trial-prune a copy (one step, about 10% of channels, L2, widths kept to multiples of ``round_to``) and run
    it, before any real work.

    A failure names the layer type where the pruned copy broke (or where the graph could not be built), or the
    layer narrower than ``round_to``.
    """
    trial = copy.deepcopy(model).eval()
    example_inputs = example_inputs.to(device_of(model))
    hooks = family_options(trial)
    current = _LayerTracker(trial)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(trial, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                          pruning_ratio=0.1, iterative_steps=1,
                                          ignored_layers=classifier_layers(trial, num_classes), round_to=round_to,
                                          **hooks.options)
            check_round_to(pruner, round_to)
            if hooks.configure:
                hooks.configure(pruner)
            pruner.step()
            if hooks.after_step:
                hooks.after_step(pruner)
            with current, torch.no_grad():
                trial(example_inputs)
    except PruneBenchError:
        raise
    except Exception as e:
        where = current.describe() or _layer_in_traceback(e, trial)
        raise PruneBenchError(f"{label} cannot be pruned{where}: {_first_line(e)}")


class _LayerTracker:
    """Forward hooks keeping the stack of modules entered and not yet left: where a forward pass failed."""

    def __init__(self, model: nn.Module):
        self.model, self.handles, self.stack, self.failed = model, [], [], None

    def __enter__(self):
        for name, m in self.model.named_modules():
            if name:
                self.handles.append(m.register_forward_pre_hook(
                    lambda mod, _inp, n=name: self.stack.append((n, mod))))
                self.handles.append(m.register_forward_hook(self._leave))
        return self

    def _leave(self, *_):
        self.stack.pop()  # returns None: a forward hook's return value would replace the output

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and self.stack:
            self.failed = list(self.stack)
        for h in self.handles:
            h.remove()
        return False

    def describe(self) -> str:
        """' (layer type X at name)': the innermost model-specific layer open when the forward pass failed."""
        if not self.failed:
            return ""
        custom = [(n, m) for n, m in self.failed if not type(m).__module__.startswith("torch.nn")]
        name, mod = (custom or self.failed)[-1]
        inner_name, inner = self.failed[-1]
        inner_txt = f", in {type(inner).__name__} {inner_name}" if inner is not mod else ""
        return f" (layer type {type(mod).__name__} at {name}{inner_txt})"


def _layer_in_traceback(e: Exception, model: nn.Module) -> str:
    """' (layer type X at name)' for the innermost frame that was handling one of the model's layers."""
    names = {id(m): n for n, m in model.named_modules()}
    tb, found = e.__traceback__, None
    while tb is not None:
        for key in ("layer", "module", "m"):
            value = tb.tb_frame.f_locals.get(key)
            if isinstance(value, nn.Module) and id(value) in names:
                found = value
        tb = tb.tb_next
    if found is None:
        return ""
    name = names[id(found)]
    modules = dict(model.named_modules())
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the nearest model-specific layer around it
        owner = modules.get(".".join(parts[:i]))
        if owner is not None and not type(owner).__module__.startswith("torch.nn"):
            return f" (layer type {type(owner).__name__} at {'.'.join(parts[:i])}, in {type(found).__name__} {name})"
    return f" (layer type {type(found).__name__} at {name})"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
