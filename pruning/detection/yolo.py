"""YOLOv8 detection on top of the library's steps: prune, finetune, validate, checkpoints.

* Pruning is :func:`pruning.steps.prune` on the detection model at the dataset's ``imgsz``; data-driven criteria
  (taylor, hessian) are calibrated with ultralytics' detection loss instead of cross-entropy.
* Finetuning runs ultralytics' ``DetectionTrainer`` on the pruned model object itself (``trainer.model`` is set
  before ``train()``, so nothing is rebuilt from yaml); evaluation is ultralytics' ``DetectionValidator``:
  mAP50-95 and mAP50, with ``plots=False``.

The building blocks (building, C2f surgery, weights, the offline and quiet ultralytics setup) are
:mod:`pruning.models.yolo`, re-exported here so ``from pruning.detection import yolo`` is the one import callers need.
ultralytics itself is imported inside functions: a heavy optional dependency, paid only when YOLO is used.
"""
from __future__ import annotations

import copy
import time
from itertools import islice
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import steps
from ..checkpoint import load_checkpoint, save_checkpoint
from ..device import device_of, to_device
from ..errors import PruneBenchError
from ..methods import resolve
from ..metrics import count_macs_params, measure_latency
from ..modes import quiet_stdout, training_mode
from ..models.yolo import (  # noqa: F401  (re-exported: one import for callers)
    YOLO_MODELS, C2fSplit, drop_integration_callbacks, build_yolo, check_imgsz, detect_head, is_yolo,
    load_ultralytics_weights, replace_c2f, ultralytics_globals, ultralytics_setup)


# --------------------------------------------------------------------------- prune
DETECTION_LOSS_CRITERIA = ("taylor", "hessian")  # the data-driven criteria calibrated on the detection loss


def check_method(method: str):
    """The method's (criterion, sparsifier) pair, when YOLO can prune with it: a data-free criterion or one
    calibrated on the detection loss, and no sparse training (ultralytics' trainer runs no sparsity penalty)."""
    pair = resolve(method)
    if pair.sparsifier is not None:
        raise PruneBenchError(f"method {method!r}: sparse training ({pair.sparsifier.name}) is not available for "
                              f"YOLO; use a criterion alone")
    if pair.needs_data and pair.criterion.name not in DETECTION_LOSS_CRITERIA:
        raise PruneBenchError(f"method {pair.criterion.name!r} is calibrated on classification outputs; for YOLO "
                              f"use a data-free criterion or {'/'.join(DETECTION_LOSS_CRITERIA)} (detection loss)")
    return pair


def prune_yolo(model: nn.Module, imgsz: int, method: str, speedup: float, scope: str = "protected",
               data_yaml: Optional[Path] = None, *, calibration_batches: int = 2, batch: int = 16, **options):
    """Prune a YOLO DetectionModel to ``speedup`` (dense MACs / pruned MACs at ``imgsz``), on the device it is on;
    Detect is protected."""
    pair = check_method(method)
    check_imgsz(imgsz, model)
    model.eval()
    example = torch.randn(1, 3, imgsz, imgsz, device=device_of(model))
    nc = int(detect_head(model).nc)
    importance = pair.criterion.build(num_classes=nc)
    samples = 0
    if pair.needs_data:
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
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    with training_mode(model, True):  # Detect returns raw predictions for the loss
        count = _backward_detection_loss(model, importance, islice(_detection_batches(data_yaml, imgsz, batch),
                                                                   n_batches))
    model.load_state_dict({**model.state_dict(), **bn_state})  # calibration must not move BatchNorm statistics
    for name, p in model.named_parameters():
        if ".dfl" in name:
            p.requires_grad_(False)
    return count


def _backward_detection_loss(model, importance, batches) -> int:
    """Backward passes of the detection loss: once per batch, or once per image for a per-sample importance."""
    per_sample = hasattr(importance, "accumulate_grad")
    if per_sample:
        importance.zero_grad()
    count = 0
    device = device_of(model)
    for b in batches:
        b = {k: to_device(v, device) for k, v in b.items()}
        b["img"] = b["img"].float() / 255
        if per_sample:
            for i in range(len(b["img"])):
                model.zero_grad(set_to_none=True)
                loss, _ = model.loss(_one_image(b, i))
                loss.sum().backward()
                importance.accumulate_grad(model)
        else:
            loss, _ = model.loss(b)
            loss.sum().backward()
        count += len(b["img"])
    return count


def _one_image(b: dict, i: int) -> dict:
    keep = b["batch_idx"] == i
    return {"img": b["img"][i:i + 1], "cls": b["cls"][keep], "bboxes": b["bboxes"][keep],
            "batch_idx": torch.zeros(int(keep.sum()), device=b["img"].device)}


# --------------------------------------------------------------------------- finetune / evaluate
def finetune_yolo(model: nn.Module, data_yaml: Path, imgsz: int, epochs: int, work_dir: Path, *, batch: int = 16,
                  lr0: float = 0.001, seed: int = 0, warmup_epochs: float = 0, device: str = "cpu",
                  amp: bool = False) -> nn.Module:
    """Finetune the given model object with ultralytics' DetectionTrainer on ``device`` (a torch device string);
    return the trained (EMA) model.  ``amp``: ultralytics' mixed precision (CUDA only).

    Mosaic augmentation (four images tiled into one) is ultralytics' default and stays on from 320 pixels up; on
    small images it would shrink objects of a few pixels below what the stride-8 head can see, so it is off there.
    """
    ultralytics_setup()
    from ultralytics.models.yolo.detect import DetectionTrainer
    # ``model`` only names the architecture for ultralytics' bookkeeping: trainer.model is replaced below
    overrides = dict(model=f"{getattr(model, 'prunebench_name', 'yolov8n')}.yaml", data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch,
                     device=ultralytics_device(device), workers=0,
                     plots=False, val=False, project=str(Path(work_dir).resolve()), name="finetune", exist_ok=True,
                     amp=amp, seed=seed, deterministic=True, optimizer="SGD", lr0=lr0, warmup_epochs=warmup_epochs,
                     close_mosaic=0, mosaic=1.0 if imgsz >= 320 else 0.0, verbose=False, pretrained=False)
    trainer = DetectionTrainer(overrides=overrides)
    drop_integration_callbacks(trainer)
    _reset_cached_state(model)
    trainer.model = model  # the pruned object itself: setup_model() keeps an nn.Module as is
    trainer.final_eval = lambda: None  # prunebench validates separately (and never reloads pickles)
    for p in model.parameters():
        p.requires_grad_(True)
    with quiet_stdout():
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
                  latency_batch: int = 8, repeats: int = 10, device: str = "cpu") -> dict:
    """ultralytics validation (mAP50-95, mAP50) plus MACs, params and latency at ``imgsz``, on ``device``."""
    ultralytics_setup()
    from ultralytics.models.yolo.detect import DetectionValidator
    model.to(device)
    args = dict(data=str(data_yaml), imgsz=imgsz, batch=batch, device=ultralytics_device(device), workers=0, plots=False, split="val",
                project=str(Path(work_dir).resolve()), name="val", exist_ok=True, verbose=False, save_json=False)
    validator = DetectionValidator(args=args)
    drop_integration_callbacks(validator)
    start = time.perf_counter()
    with quiet_stdout():
        stats = validator(model=copy.deepcopy(model).float().eval())  # AutoBackend fuses Conv+BN: use a copy
    example = torch.randn(1, 3, imgsz, imgsz, device=device)
    model.eval()
    macs, params = count_macs_params(model, example)
    batch_in = example.expand(latency_batch, -1, -1, -1).contiguous()
    return {"map50_95": float(stats.get("metrics/mAP50-95(B)", 0.0)), "map50": float(stats.get("metrics/mAP50(B)", 0.0)),
            "macs": macs, "params": params, "latency_b1": measure_latency(model, example, repeats),
            f"latency_b{latency_batch}": measure_latency(model, batch_in, max(3, repeats // 4)),
            "seconds_evaluate": time.perf_counter() - start}


def ultralytics_device(device) -> str:
    """ultralytics' spelling of a torch device: ``cpu``, ``mps``, or the CUDA index (``0``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return str(device.index or 0)
    return device.type


def _reset_cached_state(model: nn.Module) -> None:
    """Drop the loss and anchors ultralytics caches on the model: after a validation they hold inference-mode
    tensors (which autograd refuses), and after pruning they may be stale."""
    if hasattr(model, "criterion"):
        model.criterion = None
    for m in model.modules():
        if hasattr(m, "anchors") and hasattr(m, "shape"):
            m.shape = None



# --------------------------------------------------------------------------- checkpoints
def save_yolo(path, model: nn.Module, name: str, num_classes: int, imgsz: int, extra: Optional[dict] = None):
    return save_checkpoint(path, model, model_name=name, num_classes=num_classes, in_chans=3, input_size=imgsz,
                           extra=extra)


def load_yolo(path, expect_model: Optional[str] = None, expect_classes: Optional[int] = None):
    """A pruned (or dense) YOLO checkpoint: rebuilt from yaml, history replayed at its imgsz, weights loaded."""
    model, meta = load_checkpoint(path, expect_model=expect_model, expect_classes=expect_classes)
    return model.eval(), meta
