"""Checkpoints that load without unpickling code.

A checkpoint is one ``torch.save`` file holding only tensors, strings and numbers, so it loads with
``torch.load(weights_only=True)``: the weights, the recipe to rebuild the architecture (model name, classes,
channels, input size) and Torch-Pruning's pruning history, replayed on a freshly built model before the weights
are loaded.  Files are written atomically (:mod:`pruning.fileio`): a crash or a full disk never leaves a
half-written checkpoint behind.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import PruneBenchError, first_line
from .fileio import write_bytes
from .family import fix_attention, graph
from .models import create_model
from .safeload import torch_load_safely
from .statedict import load_state

FORMAT = "prunebench-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, model_name: str, num_classes: int,
                    in_chans: int, input_size: int, extra: Optional[dict] = None) -> Path:
    payload = {
        "format": FORMAT,
        "model": model_name, "num_classes": num_classes, "in_chans": in_chans, "input_size": input_size,
        "model_kwargs": dict(getattr(model, "prunebench_kwargs", {})),  # the geometry create_model was given
        "pruning_history": list(getattr(model, "prunebench_history", [])),
        "attention": {str(k): int(v) for k, v in getattr(model, "prunebench_attention", {}).items()},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    buffer = io.BytesIO()  # serialised in memory, so a full disk fails in the one atomic writer, not in torch
    torch.save(payload, buffer)
    return write_bytes(path, buffer.getbuffer())


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's contents, validated, without building the model."""
    path = Path(path)
    payload = torch_load_safely(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PruneBenchError(f"{path} is not a prunebench checkpoint (no {FORMAT!r} header)")
    return payload


def load_checkpoint(path: str | os.PathLike, *, expect_model: Optional[str] = None,
                    expect_classes: Optional[int] = None) -> tuple[nn.Module, dict]:
    """Rebuild the (possibly pruned) model from a checkpoint; return it with the checkpoint's metadata."""
    payload = read_checkpoint(path)
    if expect_model is not None and payload["model"] != expect_model:
        raise PruneBenchError(f"checkpoint {path} holds a {payload['model']!r}, not a {expect_model!r}")
    if expect_classes is not None and payload["num_classes"] != expect_classes:
        raise PruneBenchError(f"checkpoint {path} has {payload['num_classes']} classes; the dataset has "
                              f"{expect_classes}")
    model = create_model(payload["model"], payload["num_classes"], payload["in_chans"], payload["input_size"],
                         **payload.get("model_kwargs", {}))
    history = payload["pruning_history"]
    if history:
        example = torch.randn(1, payload["in_chans"], payload["input_size"], payload["input_size"])
        replay_history(model, example, history, payload.get("attention"))
    load_state(model, payload["state_dict"], f"checkpoint {path} does not match the {payload['model']!r} architecture")
    model.prunebench_history = list(history)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


def replay_history(model: nn.Module, example_inputs: torch.Tensor, history: list,
                   attention: Optional[dict] = None) -> nn.Module:
    """Redo a recorded pruning history on a freshly built model, then repair attention attributes.

    The graph uses the same unwrapped-parameter rule as pruning (pos_embed, cls_token, layer-scale gamma), and
    ``attention`` (module name -> heads, recorded when heads were pruned) restores ``num_heads``/``head_dim``.
    """
    try:
        graph(model, example_inputs).load_pruning_history([(name, is_out, list(idxs)) for name, is_out, idxs in history])
    except (AttributeError, IndexError, RuntimeError, KeyError) as e:
        raise PruneBenchError(f"pruning history does not fit the model ({type(e).__name__}: {e})")
    fix_attention(model, attention or {})
    return model


def load_weights(model: nn.Module, path: str | os.PathLike, name: Optional[str] = None) -> nn.Module:
    """Load plain weights (a state dict in ``.pt``/``.pth`` or ``.safetensors``) into a dense model.

    ``name`` (the model's registry name) is only for the error message, which names the first key that does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise PruneBenchError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        state = torch_load_safely(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PruneBenchError(f"{path} holds no state dict (a mapping of names to tensors)")
    return load_state(model, state, f"cannot load weights from {path}" + (f" into {name}" if name else ""))


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise PruneBenchError(f"{path} is not a safetensors file ({first_line(e)})") from None
