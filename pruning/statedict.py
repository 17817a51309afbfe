"""Loading a state dict into a model with a one-line error that names the first mismatched key.

Kept apart from :mod:`pruning.checkpoint` (which builds models from the registry) so that model families, like
:mod:`pruning.models.yolo`, can use it without an import circle.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import PruneBenchError, mismatch_reason


def load_state(model: nn.Module, state: dict, context: str) -> nn.Module:
    """``load_state_dict(strict=True)``, but a mismatch is one line: ``<context>: first mismatch: <the key>``.

    torch lists every missing and unexpected key, then every shape, in one long message that a one-line error has to
    cut; the first mismatched key in the model's order (and how many there are) is what tells a user which file or
    class count is wrong.
    """
    problems = state_mismatches(model.state_dict(), state)
    if problems:
        more = f" ({len(problems)} mismatched keys in all)" if len(problems) > 1 else ""
        raise PruneBenchError(f"{context}: first mismatch: {problems[0]}{more}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # what the keys and shapes cannot show (a module's own loading rules)
        raise PruneBenchError(f"{context}: {mismatch_reason(e)}") from None
    return model


def state_mismatches(expected: dict, found: dict) -> list[str]:
    """Every key where ``found`` (a file's tensors) does not fit ``expected`` (the model's state dict): the model's
    keys in its order (missing, or another shape), then the file's keys the model lacks, in the file's order."""
    problems = []
    for key, tensor in expected.items():
        if key not in found:
            problems.append(f"{key} is missing from the file")
        elif tuple(found[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} has shape {_shape(found[key])} in the file, {_shape(tensor)} in the model")
    problems.extend(f"{key} is in the file but not in the model" for key in found if key not in expected)
    return problems


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, tensor.shape)) + ")"
