"""Training loops: dense pretraining, sparse training (with a regulariser) and finetuning.

Defaults follow the PruningBench CIFAR recipe: SGD momentum 0.9, weight decay 5e-4, multistep learning rate
(x0.1 at 50% and 75% of the epochs).  Seeds are fixed, so a run is reproducible on the CPU.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import accuracy


@dataclass
class Recipe:
    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple = (0.5, 0.75)  # fractions of ``epochs``
    gamma: float = 0.1


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's *global* generators (model initialisation, dropout).

    Trials may run side by side on threads of one process, which share these generators; so nothing a trial's
    result depends on may draw from them: data order, augmentation and random criteria have their own generators,
    seeded from the trial's seed (see :meth:`pruning.data.DataBundle.loader`).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: nn.Module, train_loader, recipe: Recipe, val_loader=None, *,
          after_backward: Optional[Callable[[], None]] = None, after_epoch: Optional[Callable[[], None]] = None,
          on_epoch: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Train in place; return one ``{"epoch", "loss", "val_acc"}`` row per epoch.

    ``after_backward`` runs between ``backward()`` and the optimiser step (sparsity regularisers add their gradient
    there); ``on_epoch`` receives each row as it is made (progress bars, per-epoch metric logging).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    milestones = sorted({max(1, int(round(f * recipe.epochs))) for f in recipe.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=recipe.gamma)
    history = []
    for epoch in range(recipe.epochs):
        model.train()
        total_loss, seen = 0.0, 0
        for x, y in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
            seen += len(y)
        scheduler.step()
        if after_epoch is not None:
            after_epoch()
        row = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1)}
        if val_loader is not None:
            row["val_acc"] = accuracy(model, val_loader)
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    model.zero_grad(set_to_none=True)
    return history
