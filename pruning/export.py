"""Export a dense prunebench checkpoint as weights other tools read: the other half of "bring your own weights".

A prunebench checkpoint (:mod:`pruning.checkpoint`) carries a recipe and a pruning history beside the weights; the
world outside reads plain files instead, and ``model.checkpoint`` loads exactly these files back:

* ``.safetensors`` or ``.pth``: the state dict in the model's own key names.  A ``timm/<name>`` model *is* a timm
  model, so these are timm's names: ``timm.models.load_checkpoint`` reads the file as it reads timm's own weights.
* ``.pt`` for YOLO: a dict shaped like the files ultralytics writes (``{"model": DetectionModel, "epoch": -1,
  "date": ..., "version": ...}``) whose model has ultralytics' own ``C2f`` layers again (:func:`restore_c2f`), so
  ultralytics loads it and prunebench reads it back through its allow-list (:func:`load_ultralytics_weights`).  The
  weights stay float32 (ultralytics' releases are fp16): a round trip gives identical outputs.

Only a dense checkpoint exports to these: a pruned model's shapes no longer fit the architecture its name builds, so
nobody could load the file by that name.

* ``.onnx`` for where the model will run: any classification checkpoint, dense or pruned (the graph carries its own
  shapes), through ``torch.onnx`` with a dynamic batch axis; :func:`pruning.latency.measure_onnx` times it in ONNX
  Runtime (the optional ``onnx`` extra).

Files are written atomically (:mod:`pruning.fileio`).
"""
from __future__ import annotations

import io
import os
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, read_checkpoint
from .errors import PruneBenchError
from .fileio import write_bytes
from .models.yolo import is_yolo

STATE_DICT_SUFFIXES = (".safetensors", ".pth")
YOLO_SUFFIX = ".pt"
ONNX_SUFFIX = ".onnx"
ONNX_OPSET = 17


def export_weights(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the dense model in ``checkpoint_path`` to ``out_path``, in the format its suffix names; return it.

    Every check (suffix, file, model family, pruning history) runs before the model is built, so bad input writes
    nothing.
    """
    source, out = Path(checkpoint_path), Path(out_path)
    if out.suffix not in (*STATE_DICT_SUFFIXES, YOLO_SUFFIX, ONNX_SUFFIX):
        raise PruneBenchError(f"cannot export to {out}: choose a .safetensors or .pth file (a .pt for YOLO models), "
                              f"or .onnx")
    payload = read_checkpoint(source)
    check_exportable(payload, source, out)
    model, meta = load_checkpoint(source)
    if out.suffix == ONNX_SUFFIX:
        return write_onnx(model, meta, out)
    if is_yolo(meta["model"]):
        return write_ultralytics(model, meta, out)
    return write_state_dict(model, meta, out)


def check_exportable(payload: dict, source: Path, out: Path) -> None:
    """Refuse what could not be loaded back by the model's name: a pruned model, or a format of the other family."""
    name = payload["model"]
    if out.resolve() == source.resolve():
        raise PruneBenchError(f"exporting {source} to itself would overwrite the checkpoint: choose another --out")
    if out.suffix == ONNX_SUFFIX:
        if is_yolo(name):
            raise PruneBenchError(f"{name}: ONNX export of YOLO models is ultralytics' own (`yolo export`); "
                                  f"export it to an ultralytics .pt first")
        return
    if payload["pruning_history"]:
        raise PruneBenchError(f"{source} holds a pruned {name}: its shapes no longer fit the {name} architecture, "
                              f"so only a dense checkpoint (pretrain's output) can be exported")
    if is_yolo(name) and out.suffix != YOLO_SUFFIX:
        raise PruneBenchError(f"{name} exports to an ultralytics .pt file, not {out.suffix}")
    if not is_yolo(name) and out.suffix not in STATE_DICT_SUFFIXES:
        raise PruneBenchError(f"{name} exports to a .safetensors or .pth file (a .pt is prunebench's own format)")


def write_onnx(model: nn.Module, meta: dict, out: Path) -> Path:
    """The model as an ONNX graph (input ``images``, batch axis dynamic, output ``logits``), via ``torch.onnx``'s
    TorchScript exporter (the dynamo one needs onnxscript, which prunebench does not install)."""
    import tempfile
    import warnings
    example = torch.randn(1, meta["in_chans"], meta["input_size"], meta["input_size"])
    model.eval()
    with tempfile.TemporaryDirectory(prefix="prunebench-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        path = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as e:  # an operator the exporter cannot express: say which, write nothing
            raise PruneBenchError(f"cannot export {meta['model']} to ONNX: {str(e).splitlines()[0]}") from None
        return write_bytes(out, path.read_bytes())


def write_state_dict(model: nn.Module, meta: dict, out: Path) -> Path:
    """The state dict as ``.safetensors`` (contiguous tensors, no shared storage) or a plain ``torch.save`` dict.

    Both are serialised in memory first, so a full disk fails in the one atomic writer with a one-line error.
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if out.suffix == ".safetensors":
        from safetensors.torch import save
        info = {"format": "pt", "model": meta["model"], "num_classes": str(meta["num_classes"])}
        return write_bytes(out, save(state, metadata=info))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_bytes(out, buffer.getbuffer())


def write_ultralytics(model: nn.Module, meta: dict, out: Path) -> Path:
    """An ultralytics-style ``.pt``: what ``strip_optimizer`` leaves of a trainer's file (model, epoch -1, train
    args, date and version), the model made of ultralytics' own classes only."""
    from .models.yolo import restore_c2f, ultralytics_setup
    ultralytics = ultralytics_setup()
    model = model.float().eval()
    restore_c2f(model)
    for attr in [a for a in vars(model) if a.startswith("prunebench_")]:  # prunebench's bookkeeping stays home
        delattr(model, attr)
    if hasattr(model, "criterion"):
        model.criterion = None
    for p in model.parameters():
        p.requires_grad_(False)
    checkpoint = {"date": datetime.now(timezone.utc).isoformat(), "version": ultralytics.__version__,
                  "epoch": -1, "best_fitness": None, "model": model, "ema": None, "updates": None, "optimizer": None,
                  "train_args": {"task": "detect", "model": f"{meta['model']}.yaml", "imgsz": meta["input_size"]}}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return write_bytes(out, buffer.getbuffer())
