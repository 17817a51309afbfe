"""YOLOv8 building blocks through ultralytics: build (no download), make prunable, load local weights.

* ``yolov8n|s|m`` are built from ultralytics' bundled yaml with random weights, or their weights come from a local
  ``.pt`` (:func:`load_ultralytics_weights`), read with ``torch.load(weights_only=True)`` and an allow-list of the
  classes such a file is made of, so nothing in it can run.
* ``C2f`` splits its first convolution's output with ``chunk``, which DepGraph cannot follow; :func:`replace_c2f`
  swaps every ``C2f`` for :class:`C2fSplit`, the same computation with that convolution cut in two (weights and
  BatchNorm statistics copied), so outputs are identical and both halves prune.  The ``Detect`` head is protected.
* Offline and quiet: ``YOLO_OFFLINE``; ultralytics' settings dir defaults to a prunebench cache folder holding a
  local TTF (matplotlib's DejaVuSans) as ``Arial.ttf``, so the font check of ``check_det_dataset`` never downloads;
  the integration callbacks (MLflow, DVC, ClearML, Comet, W&B, TensorBoard, Ray Tune) and analytics are switched
  off in memory for this process (the user's settings file is not rewritten) and removed from every trainer,
  because ultralytics' MLflow callback would take over the caller's active MLflow run.  Its dataset label caches
  (pickled ``.cache`` files) are read without unpickling code (:func:`_safe_label_caches`).

ultralytics itself is imported inside functions: it is a heavy optional dependency, paid only when YOLO is used.
Pruning, finetuning and validating a detection model are :mod:`pruning.detection.yolo`, on top of these.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..errors import PruneBenchError
from ..modes import quiet_stdout
from ..safeload import load_npy, torch_load_safely
from ..statedict import load_state
from .registry import register_model

YOLO_MODELS = ("yolov8n", "yolov8s", "yolov8m")
INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "hub", "sync")
_READY = False


def is_yolo(name: str) -> bool:
    return name in YOLO_MODELS


# --------------------------------------------------------------------------- offline, quiet ultralytics
def ultralytics_setup():
    """Import ultralytics offline and quiet (idempotent); return the module."""
    global _READY
    if not _READY:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_VERBOSE", "False")
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prunebench" / "ultralytics"
        os.environ.setdefault("YOLO_CONFIG_DIR", str(cache))
    import ultralytics
    from ultralytics import utils as uutils
    if not _READY:
        for key in INTEGRATIONS:  # in memory only: dict.update bypasses SettingsManager's save-to-file
            if key in uutils.SETTINGS:
                dict.__setitem__(uutils.SETTINGS, key, False)
        _local_fonts(Path(uutils.USER_CONFIG_DIR))
        uutils.LOGGER.setLevel(logging.WARNING)
        _safe_label_caches()
        _READY = True
    return ultralytics


def _local_fonts(folder: Path) -> None:
    """``Arial.ttf``/``Arial.Unicode.ttf`` for ultralytics' font check, copied from matplotlib's bundled DejaVuSans."""
    import matplotlib
    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = folder / name
        if not target.exists() and source.is_file():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            except OSError:
                pass


def _safe_label_caches() -> None:
    """ultralytics reads a dataset's ``labels/<split>.cache`` with ``np.load(allow_pickle=True)``: a crafted cache
    in a user's dataset folder would run code.  Its loader is replaced, in memory for this process, by one that
    rebuilds numpy arrays and plain data only; a refused cache raises, and ultralytics then rescans the labels and
    writes a fresh cache, as it does for any unreadable one."""
    from ultralytics.data import dataset, utils
    for module in (dataset, utils):
        module.load_dataset_cache_file = _load_label_cache


def _load_label_cache(path) -> dict:
    return load_npy(path).item()


def drop_integration_callbacks(obj) -> None:
    """Keep only ultralytics' own default callbacks (no MLflow/DVC/... and no analytics events)."""
    for event, fns in obj.callbacks.items():
        obj.callbacks[event] = [f for f in fns if getattr(f, "__module__", "").endswith("callbacks.base")
                                or not getattr(f, "__module__", "").startswith("ultralytics.")]


# --------------------------------------------------------------------------- model
class C2fSplit(nn.Module):
    """``C2f`` with its first 1x1 convolution as two convolutions (``cv0``, ``cv1``): no ``chunk`` for DepGraph."""

    def __init__(self, c2f: nn.Module):
        super().__init__()
        from ultralytics.nn.modules import Conv
        c, conv = c2f.c, c2f.cv1
        self.c = c
        self.cv0 = Conv(conv.conv.in_channels, c, 1, 1)
        self.cv1 = Conv(conv.conv.in_channels, c, 1, 1)
        for half, part in ((self.cv0, slice(0, c)), (self.cv1, slice(c, 2 * c))):
            half.conv.weight.data.copy_(conv.conv.weight.data[part])
            if conv.conv.bias is not None:
                half.conv.bias = nn.Parameter(conv.conv.bias.data[part].clone())
            half.bn.weight.data.copy_(conv.bn.weight.data[part])
            half.bn.bias.data.copy_(conv.bn.bias.data[part])
            half.bn.running_mean.copy_(conv.bn.running_mean[part])
            half.bn.running_var.copy_(conv.bn.running_var[part])
            half.bn.num_batches_tracked.copy_(conv.bn.num_batches_tracked)
            half.bn.eps, half.bn.momentum = conv.bn.eps, conv.bn.momentum
            half.act = conv.act
        self.cv2, self.m = c2f.cv2, c2f.m
        for attr in ("i", "f", "type", "np"):  # ultralytics' graph bookkeeping
            if hasattr(c2f, attr):
                setattr(self, attr, getattr(c2f, attr))
        self.train(c2f.training)  # the new convolutions were built in training mode

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def replace_c2f(model: nn.Module) -> int:
    """Swap every ultralytics ``C2f`` for :class:`C2fSplit` in place; return how many were replaced."""
    from ultralytics.nn.modules import C2f
    return _swap(model, C2f, C2fSplit)


def _swap(model: nn.Module, kind: type, convert) -> int:
    """Replace every submodule of exactly type ``kind`` by ``convert(it)``, in place; return how many."""
    count = 0
    for name, child in list(model.named_children()):
        if type(child) is kind:
            setattr(model, name, convert(child))
            count += 1
        else:
            count += _swap(child, kind, convert)
    return count


def restore_c2f(model: nn.Module) -> int:
    """Swap every :class:`C2fSplit` back for an ultralytics ``C2f`` in place (the inverse of :func:`replace_c2f`);
    return how many were restored.

    An exported ``.pt`` must hold only classes ultralytics (and :func:`ultralytics_globals`) know, with ultralytics'
    key names: ``cv0`` and ``cv1`` become one ``cv1`` again, weights and BatchNorm statistics concatenated in the
    order ``C2f.forward`` chunks them, so outputs are identical.
    """
    return _swap(model, C2fSplit, _merged_c2f)


def _merged_c2f(split: C2fSplit) -> nn.Module:
    """The ultralytics ``C2f`` computing what ``split`` computes (built empty, then given split's own layers, so
    shortcut and group settings need not be known)."""
    from ultralytics.nn.modules import C2f
    halves = (split.cv0, split.cv1)
    if halves[0].conv.out_channels != halves[1].conv.out_channels:
        raise PruneBenchError("a pruned C2f (its two halves differ in width) has no ultralytics C2f form")
    c2f = C2f.__new__(C2f)
    nn.Module.__init__(c2f)
    c2f.c, c2f.cv1, c2f.cv2, c2f.m = split.c, _concatenated_conv(*halves), split.cv2, split.m
    for attr in ("i", "f", "type", "np"):  # ultralytics' graph bookkeeping
        if hasattr(split, attr):
            setattr(c2f, attr, getattr(split, attr))
    c2f.train(split.training)
    return c2f


def _concatenated_conv(first: nn.Module, second: nn.Module) -> nn.Module:
    """One ultralytics ``Conv`` whose output channels are ``first``'s then ``second``'s (weights, bias, BatchNorm)."""
    from ultralytics.nn.modules import Conv
    conv = Conv(first.conv.in_channels, first.conv.out_channels + second.conv.out_channels, 1, 1)
    pair = (first, second)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.cat([h.conv.weight for h in pair]))
        if first.conv.bias is not None:
            conv.conv.bias = nn.Parameter(torch.cat([h.conv.bias for h in pair]))
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(conv.bn, attr).copy_(torch.cat([getattr(h.bn, attr) for h in pair]))
        conv.bn.num_batches_tracked.copy_(first.bn.num_batches_tracked)
    conv.bn.eps, conv.bn.momentum, conv.act = first.bn.eps, first.bn.momentum, first.act
    conv.train(first.training)
    return conv


def build_yolo(name: str, num_classes: int, imgsz: Optional[int] = None) -> nn.Module:
    """A ``yolov8n|s|m`` DetectionModel from ultralytics' bundled yaml (random weights), with C2f made prunable."""
    if not is_yolo(name):
        raise PruneBenchError(f"unknown YOLO model {name!r}; choose one of: {', '.join(YOLO_MODELS)}")
    ultralytics_setup()
    from ultralytics.nn.tasks import DetectionModel
    with quiet_stdout():
        model = DetectionModel(f"{name}.yaml", ch=3, nc=num_classes, verbose=False)
    replace_c2f(model)
    model.prunebench_name = name
    return model.eval()


def load_ultralytics_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local ultralytics ``.pt`` (e.g. ``yolov8n.pt``, or a trainer's ``best.pt``/``last.pt``) into ``model``.

    ultralytics pickles whole modules, so the file is read with ``torch.load(weights_only=True)`` allowing only the
    classes a YOLOv8 detection checkpoint is made of (:func:`ultralytics_globals`): anything else is refused before
    it is built, so nothing in the file runs.  Class counts must match: a mismatch names the first key that
    does not fit.
    """
    ultralytics_setup()
    path = Path(path)
    if not path.is_file():
        raise PruneBenchError(f"weights file {path} does not exist")
    ckpt = torch_load_safely(path, ultralytics_globals(), kind="an ultralytics YOLOv8 detection checkpoint")
    source = _checkpoint_model(ckpt, path).float()
    replace_c2f(source)
    target = f"{getattr(model, 'prunebench_name', 'the model')} with {int(detect_head(model).nc)} classes"
    return load_state(model, source.state_dict(), f"cannot load YOLO weights from {path} into {target}")


def ultralytics_globals() -> list:
    """Exactly the classes an ultralytics YOLOv8 detection ``.pt`` pickles: the model's layers, its hyperparameter
    namespace, and numpy scalars (older trainers stored ``best_fitness`` as one).  Each class is also allowed under
    its pre-8.1 flat name (``ultralytics.nn.modules.Conv``) and the namespace under ``ultralytics.yolo.utils``."""
    from ultralytics.nn.modules import C2f, DFL, SPPF, Bottleneck, Concat, Conv, Detect
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace
    layers = [C2f, DFL, SPPF, Bottleneck, Concat, Conv, Detect]
    torch_layers = [nn.Sequential, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.MaxPool2d, nn.Upsample]
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar constructor, pickled under numpy.(_)core.multiarray
    return [DetectionModel, IterableSimpleNamespace, *layers, *torch_layers,
            *[(cls, f"ultralytics.nn.modules.{cls.__name__}") for cls in layers],
            (IterableSimpleNamespace, "ultralytics.yolo.utils.IterableSimpleNamespace"),
            np.dtype, type(np.dtype(np.float64)),
            (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


def _checkpoint_model(ckpt, path: Path) -> nn.Module:
    """The module an ultralytics checkpoint holds: its EMA (trainer checkpoints) or its model (released weights)."""
    if isinstance(ckpt, dict) and "format" in ckpt and "state_dict" in ckpt:
        raise PruneBenchError(f"{path} is a prunebench checkpoint, not ultralytics weights "
                              f"(it loads with pruning.detection.yolo.load_yolo)")
    source = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if not isinstance(source, nn.Module):
        raise PruneBenchError(f"{path} is not an ultralytics checkpoint: it holds no 'ema' or 'model' module")
    return source


def detect_head(model: nn.Module) -> nn.Module:
    from ultralytics.nn.modules import Detect
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    if not heads:
        raise PruneBenchError("no ultralytics Detect head in the model")
    return heads[-1]


def check_imgsz(imgsz: int, model: Optional[nn.Module] = None) -> None:
    stride = int(model.stride.max()) if model is not None and hasattr(model, "stride") else 32
    if imgsz < stride or imgsz % stride:
        raise PruneBenchError(f"YOLO cannot take imgsz {imgsz}: it must be a positive multiple of the stride {stride}")




def _register(name: str) -> None:
    @register_model(name)
    def build(num_classes, input_size=None, **_):
        return build_yolo(name, num_classes, input_size)


for _name in YOLO_MODELS:
    _register(_name)
