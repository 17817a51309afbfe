"""YOLOv8 detection through ultralytics: build (no download), make prunable, prune, finetune, validate.

* ``yolov8n|s|m`` are built from ultralytics' bundled yaml with random weights, or their weights come from a local
  ``.pt`` (:func:`load_ultralytics_weights`), read with ``torch.load(weights_only=True)`` and an allow-list of the
  classes such a file is made of, so nothing in it can run.
* ``C2f`` splits its first convolution's output with ``chunk``, which DepGraph cannot follow; :func:`replace_c2f`
  swaps every ``C2f`` for :class:`C2fSplit`, the same computation with that convolution cut in two (weights and
  BatchNorm statistics copied), so outputs are identical and both halves prune.  The ``Detect`` head is protected.
* Pruning is :func:`pruning.steps.prune` on the detection model at the dataset's ``imgsz``; data-driven criteria
  (taylor, hessian) are calibrated with ultralytics' detection loss instead of cross-entropy.
* Finetuning runs ultralytics' ``DetectionTrainer`` on the pruned model object itself (``trainer.model`` is set
  before ``train()``, so nothing is rebuilt from yaml); evaluation is ultralytics' ``DetectionValidator``:
  mAP50-95 and mAP50.
* Offline and quiet: ``YOLO_OFFLINE``; ultralytics' settings dir defaults to a prunebench cache folder holding a
  local TTF (matplotlib's DejaVuSans) as ``Arial.ttf``, so the font check of ``check_det_dataset`` never downloads;
  the integration callbacks (MLflow, DVC, ClearML, Comet, W&B, TensorBoard, Ray Tune) and analytics are switched
  off in memory for this process (the user's settings file is not rewritten) and removed from every trainer,
  because ultralytics' MLflow callback would take over the caller's active MLflow run; ``plots=False``.  Its
  dataset label caches (pickled ``.cache`` files) are read without unpickling code (:func:`_safe_label_caches`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import time
from itertools import islice
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import PruneBenchError
from .safeload import load_npy, torch_load_safely

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


def _drop_integration_callbacks(obj) -> None:
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
    count = 0
    for name, child in list(model.named_children()):
        if type(child) is C2f:
            setattr(model, name, C2fSplit(child))
            count += 1
        else:
            count += replace_c2f(child)
    return count


def build_yolo(name: str, num_classes: int, imgsz: Optional[int] = None) -> nn.Module:
    """A ``yolov8n|s|m`` DetectionModel from ultralytics' bundled yaml (random weights), with C2f made prunable."""
    if not is_yolo(name):
        raise PruneBenchError(f"unknown YOLO model {name!r}; choose one of: {', '.join(YOLO_MODELS)}")
    ultralytics_setup()
    from ultralytics.nn.tasks import DetectionModel
    with contextlib.redirect_stdout(io.StringIO()):
        model = DetectionModel(f"{name}.yaml", ch=3, nc=num_classes, verbose=False)
    replace_c2f(model)
    model.prunebench_name = name
    return model.eval()


def load_ultralytics_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local ultralytics ``.pt`` (e.g. ``yolov8n.pt``, or a trainer's ``best.pt``/``last.pt``) into ``model``.

    ultralytics pickles whole modules, so the file is read with ``torch.load(weights_only=True)`` allowing only the
    classes a YOLOv8 detection checkpoint is made of (:func:`ultralytics_globals`): anything else is refused before
    it is built, so nothing in the file runs.  Class counts must match.
    """
    ultralytics_setup()
    path = Path(path)
    if not path.is_file():
        raise PruneBenchError(f"weights file {path} does not exist")
    ckpt = torch_load_safely(path, ultralytics_globals(), kind="an ultralytics YOLOv8 detection checkpoint")
    source = _checkpoint_model(ckpt, path).float()
    replace_c2f(source)
    try:
        model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as e:
        from .checkpoint import mismatch_reason
        raise PruneBenchError(f"YOLO weights in {path} do not fit {getattr(model, 'prunebench_name', 'the model')} "
                              f"with {int(detect_head(model).nc)} classes: {mismatch_reason(e)}") from None
    return model


def ultralytics_globals() -> list:
    """Exactly the classes an ultralytics YOLOv8 detection ``.pt`` pickles: the model's layers, its hyperparameter
    namespace, and numpy scalars (older trainers stored ``best_fitness`` as one).  Each class is also allowed under
    its pre-8.1 flat name (``ultralytics.nn.modules.Conv``) and the namespace under ``ultralytics.yolo.utils``."""
    import numpy as np
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
                              f"(it loads with pruning.yolo.load_yolo)")
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


# --------------------------------------------------------------------------- prune
def prune_yolo(model: nn.Module, imgsz: int, method: str, speedup: float, scope: str = "protected",
               data_yaml: Optional[Path] = None, *, calibration_batches: int = 2, batch: int = 16, **options):
    """Prune a YOLO DetectionModel to ``speedup`` (dense MACs / pruned MACs at ``imgsz``); Detect is protected."""
    from . import steps
    from .methods import resolve
    pair = resolve(method)
    check_imgsz(imgsz, model)
    model.eval()
    example = torch.randn(1, 3, imgsz, imgsz)
    nc = int(detect_head(model).nc)
    importance = pair.criterion.build(num_classes=nc)
    samples = 0
    if pair.needs_data:
        if pair.criterion.name not in ("taylor", "hessian"):
            raise PruneBenchError(f"method {pair.criterion.name!r} is calibrated on classification outputs; for YOLO "
                                  f"use a data-free criterion or taylor/hessian (detection loss)")
        if data_yaml is None:
            raise PruneBenchError(f"method {pair.criterion.name!r} needs calibration data (a detection dataset)")
        samples = _calibrate_detection_loss(model, importance, data_yaml, imgsz, batch, calibration_batches)
        importance = _Calibrated(importance)  # gradients are in place: prune() must not recalibrate
    model, report = steps.prune(model, example, importance, speedup, scope, num_classes=nc,
                                ignored_layers=[detect_head(model)], **options)
    report.method = pair.name
    report.calibration_samples = samples
    model.zero_grad(set_to_none=True)
    return model, report


class _Calibrated:
    """An importance whose calibration already ran (hides ``calibrate`` from :func:`pruning.steps.prune`)."""

    def __init__(self, importance):
        self.importance = importance

    def __call__(self, group):
        return self.importance(group)


def _detection_batches(data_yaml: Path, imgsz: int, batch: int, split: str = "train"):
    """ultralytics' own detection dataloader (no augmentation) over a split of the dataset yaml."""
    ultralytics_setup()
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    data = check_det_dataset(str(data_yaml))
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "workers": 0})
    dataset = build_yolo_dataset(cfg, data[split], batch, data, mode="val", rect=False, stride=32)
    return build_dataloader(dataset, batch, 0, shuffle=False)


def _calibrate_detection_loss(model, importance, data_yaml, imgsz, batch, n_batches) -> int:
    """Gradients of the detection loss in ``.grad`` (taylor), or per-image squared gradients (hessian)."""
    from ultralytics.cfg import get_cfg
    model.args = get_cfg()  # loss gains (box, cls, dfl)
    _reset_cached_state(model)
    was_training = model.training
    model.train()  # Detect returns raw predictions for the loss
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    per_sample = hasattr(importance, "accumulate_grad")
    if per_sample:
        importance.zero_grad()
    count = 0
    for b in islice(_detection_batches(data_yaml, imgsz, batch), n_batches):
        b["img"] = b["img"].float() / 255
        if per_sample:
            for i in range(len(b["img"])):
                one = _one_image(b, i)
                model.zero_grad(set_to_none=True)
                loss, _ = model.loss(one)
                loss.sum().backward()
                importance.accumulate_grad(model)
        else:
            loss, _ = model.loss(b)
            loss.sum().backward()
        count += len(b["img"])
    model.load_state_dict({**model.state_dict(), **bn_state})  # calibration must not move BatchNorm statistics
    for name, p in model.named_parameters():
        if ".dfl" in name:
            p.requires_grad_(False)
    model.train(was_training)
    return count


def _one_image(b: dict, i: int) -> dict:
    keep = b["batch_idx"] == i
    return {"img": b["img"][i:i + 1], "cls": b["cls"][keep], "bboxes": b["bboxes"][keep],
            "batch_idx": torch.zeros(int(keep.sum()))}


# --------------------------------------------------------------------------- finetune / evaluate
def finetune_yolo(model: nn.Module, data_yaml: Path, imgsz: int, epochs: int, work_dir: Path, *, batch: int = 16,
                  lr0: float = 0.001, seed: int = 0) -> nn.Module:
    """Finetune the given model object with ultralytics' DetectionTrainer; return the trained (EMA) model."""
    ultralytics_setup()
    from ultralytics.models.yolo.detect import DetectionTrainer
    # ``model`` only names the architecture for ultralytics' bookkeeping: trainer.model is replaced below
    overrides = dict(model=f"{getattr(model, 'prunebench_name', 'yolov8n')}.yaml", data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device="cpu", workers=0,
                     plots=False, val=False, project=str(Path(work_dir).resolve()), name="finetune", exist_ok=True,
                     amp=False, seed=seed, deterministic=True, optimizer="SGD", lr0=lr0, warmup_epochs=0,
                     close_mosaic=0, verbose=False, pretrained=False)
    trainer = DetectionTrainer(overrides=overrides)
    _drop_integration_callbacks(trainer)
    _reset_cached_state(model)
    trainer.model = model  # the pruned object itself: setup_model() keeps an nn.Module as is
    trainer.final_eval = lambda: None  # prunebench validates separately (and never reloads pickles)
    for p in model.parameters():
        p.requires_grad_(True)
    with _quiet():
        trainer.train()
    trained = trainer.ema.ema if trainer.ema is not None else trainer.model
    trained = trained.float().eval()
    _reset_cached_state(trained)
    for name, p in trained.named_parameters():  # ultralytics' EMA copy is frozen; DepGraph traces via autograd
        p.requires_grad_(".dfl" not in name)
    for attr in ("prunebench_history", "prunebench_name"):
        if hasattr(model, attr):
            setattr(trained, attr, getattr(model, attr))
    return trained


def evaluate_yolo(model: nn.Module, data_yaml: Path, imgsz: int, work_dir: Path, *, batch: int = 16,
                  latency_batch: int = 8, repeats: int = 10) -> dict:
    """ultralytics validation (mAP50-95, mAP50) plus MACs, params and CPU latency at ``imgsz``."""
    from .metrics import count_macs_params, measure_latency
    ultralytics_setup()
    from ultralytics.models.yolo.detect import DetectionValidator
    args = dict(data=str(data_yaml), imgsz=imgsz, batch=batch, device="cpu", workers=0, plots=False, split="val",
                project=str(Path(work_dir).resolve()), name="val", exist_ok=True, verbose=False, save_json=False)
    validator = DetectionValidator(args=args)
    _drop_integration_callbacks(validator)
    start = time.perf_counter()
    with _quiet():
        stats = validator(model=copy.deepcopy(model).float().eval())  # AutoBackend fuses Conv+BN: use a copy
    example = torch.randn(1, 3, imgsz, imgsz)
    model.eval()
    macs, params = count_macs_params(model, example)
    batch_in = example.expand(latency_batch, -1, -1, -1).contiguous()
    return {"map50_95": float(stats.get("metrics/mAP50-95(B)", 0.0)), "map50": float(stats.get("metrics/mAP50(B)", 0.0)),
            "macs": macs, "params": params, "latency_b1": measure_latency(model, example, repeats),
            f"latency_b{latency_batch}": measure_latency(model, batch_in, max(3, repeats // 4)),
            "seconds_evaluate": time.perf_counter() - start}


def _reset_cached_state(model: nn.Module) -> None:
    """Drop the loss and anchors ultralytics caches on the model: after a validation they hold inference-mode
    tensors (which autograd refuses), and after pruning they may be stale."""
    if hasattr(model, "criterion"):
        model.criterion = None
    for m in model.modules():
        if hasattr(m, "anchors") and hasattr(m, "shape"):
            m.shape = None


@contextlib.contextmanager
def _quiet():
    """ultralytics prints progress bars and tables to stdout: keep stdout clean for ``--json``."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# --------------------------------------------------------------------------- checkpoints
def save_yolo(path, model: nn.Module, name: str, num_classes: int, imgsz: int, extra: Optional[dict] = None):
    from .checkpoint import save_checkpoint
    return save_checkpoint(path, model, model_name=name, num_classes=num_classes, in_chans=3, input_size=imgsz,
                           extra=extra)


def load_yolo(path, expect_model: Optional[str] = None, expect_classes: Optional[int] = None):
    """A pruned (or dense) YOLO checkpoint: rebuilt from yaml, history replayed at its imgsz, weights loaded."""
    from .checkpoint import load_checkpoint
    model, meta = load_checkpoint(path, expect_model=expect_model, expect_classes=expect_classes)
    return model.eval(), meta
