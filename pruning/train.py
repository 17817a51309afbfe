"""Training loops: dense pretraining, sparse training (with a regulariser) and finetuning, plus BatchNorm
recalibration.

A :class:`Recipe` is one training phase: optimiser, learning-rate schedule, regularisation.  Its defaults are the
PruningBench CIFAR recipe (SGD momentum 0.9, weight decay 5e-4, multistep x0.1 at 50% and 75% of the epochs); the
recipes of other families (AdamW with warm-up and cosine decay for ViTs, ...) are in :mod:`pruning.recipes`.
Seeds are fixed, so a run is reproducible on the CPU.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast, batches_on, device_of, grad_scaler
from .errors import PruneBenchError
from .metrics import accuracy
from .modes import eval_mode, training_mode

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "linear")
LINEAR_FINAL = 0.01  # the linear schedule ends at 1% of the learning rate (ultralytics' lrf)


@dataclass(frozen=True)
class Recipe:
    """One training phase.  ``milestones`` are fractions of ``epochs`` (multistep); ``warmup_epochs`` ramp the
    learning rate up linearly, per batch, before the schedule; ``clip_grad`` caps the gradients' global norm."""
    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "multistep"
    milestones: tuple = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    clip_grad: Optional[float] = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise PruneBenchError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise PruneBenchError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")

    def describe(self) -> str:
        """One line for leaderboards and MLflow: what this phase trained with."""
        parts = [f"{self.epochs} epochs", f"{self.optimizer.upper()} lr {self.lr:g}"]
        if self.optimizer == "sgd":
            parts.append(f"momentum {self.momentum:g}")
        parts.append(f"wd {self.weight_decay:g}")
        if self.warmup_epochs:
            parts.append(f"warm-up {self.warmup_epochs}")
        if self.schedule == "multistep":
            parts.append(f"multistep x{self.gamma:g} at " + "/".join(f"{m:.0%}" for m in self.milestones))
        else:
            parts.append(self.schedule + (f" to {LINEAR_FINAL:g}x" if self.schedule == "linear" else ""))
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.clip_grad:
            parts.append(f"clip {self.clip_grad:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (the dense model): the loss is ``(1 - weight) * CE + weight * T^2 *
    KL(teacher_T || student_T)`` at temperature ``T`` (Hinton et al.; the T^2 keeps gradient sizes comparable)."""
    teacher: nn.Module
    weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self):
        if not 0 <= self.weight <= 1:
            raise PruneBenchError(f"distillation weight must be in [0, 1], got {self.weight}")
        if not self.temperature > 0:
            raise PruneBenchError(f"distillation temperature must be > 0, got {self.temperature}")

    def loss(self, logits: torch.Tensor, inputs: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), eval_mode(self.teacher):
            target = F.softmax(self.teacher(inputs) / self.temperature, dim=1)
        soft = F.kl_div(F.log_softmax(logits / self.temperature, dim=1), target, reduction="batchmean")
        return (1 - self.weight) * hard + self.weight * self.temperature ** 2 * soft


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's *global* generators (model initialisation, dropout).

    Trials may run side by side on threads of one process, which share these generators; so nothing a trial's
    result depends on may draw from them: data order, augmentation and random criteria have their own generators,
    seeded from the trial's seed (see :meth:`pruning.data.DataBundle.loader`).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        # no weight decay on biases and normalisation scales (1-d tensors): the usual AdamW practice (timm, DeiT)
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
        return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                  {"params": plain, "weight_decay": 0.0}], lr=recipe.lr)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate's multiplier at batch ``step`` (counted from 0): linear warm-up, then the schedule."""
    warmup = recipe.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    epoch = step // steps_per_epoch
    if recipe.schedule in ("cosine", "linear"):
        total = max(1, recipe.epochs * steps_per_epoch - warmup)
        progress = min(1.0, (step - warmup) / total)
        if recipe.schedule == "linear":
            return 1 - (1 - LINEAR_FINAL) * progress
        return 0.5 * (1 + math.cos(math.pi * progress))
    milestones = {max(1, int(round(f * recipe.epochs))) for f in recipe.milestones}
    return recipe.gamma ** sum(epoch >= m for m in milestones)


def train(model: nn.Module, train_loader, recipe: Recipe, val_loader=None, *,
          after_backward: Optional[Callable[[], None]] = None, after_epoch: Optional[Callable[[], None]] = None,
          on_epoch: Optional[Callable[[dict], None]] = None,
          distillation: Optional[Distillation] = None, precision: str = "fp32") -> list[dict]:
    """Train in place, on the device the model is on; return one ``{"epoch", "loss", "val_acc"}`` row per epoch.

    ``after_backward`` runs between ``backward()`` and the optimiser step (sparsity regularisers add their gradient
    there, to unscaled gradients); ``on_epoch`` receives each row as it is made (progress bars, per-epoch metric
    logging); ``distillation`` adds a teacher's soft targets to the loss; ``precision`` ``bf16``/``fp16`` runs the
    forward passes in mixed precision (fp16 with loss scaling on CUDA, see :mod:`pruning.device`).
    """
    optimizer = _optimizer(model, recipe)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch))
    device = device_of(model)
    scaler = grad_scaler(device, precision)
    history = []
    for epoch in range(recipe.epochs):
        model.train()
        total_loss, seen = 0.0, 0
        for x, y in batches_on(model, train_loader):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                if distillation is not None:
                    loss = distillation.loss(logits, x, loss)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # regularisers and clipping see the true gradients
            if after_backward is not None:
                after_backward()
            if recipe.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += loss.item() * len(y)
            seen += len(y)
        if after_epoch is not None:
            after_epoch()
        row = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1)}
        if val_loader is not None:
            with autocast(device, precision):
                row["val_acc"] = accuracy(model, val_loader)
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    model.zero_grad(set_to_none=True)
    return history


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, batches: int) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` training batches (no weight changes);
    return the number of samples seen (0 when the model has no BatchNorm).

    Pruning removes channels that fed the next layers, so the statistics the BatchNorms kept no longer describe
    their inputs; re-estimating them is the cheap repair of the pruning literature (e.g. EagleEye's adaptive BN).
    The running statistics are reset and averaged with equal weight over the batches (``momentum=None``).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    seen = 0
    try:
        with training_mode(model, True):
            for x, _ in islice(batches_on(model, loader), batches):
                model(x)
                seen += len(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return seen
