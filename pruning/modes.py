"""Small context managers shared across the library."""
from __future__ import annotations

import contextlib
import io
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run the block with ``model`` in train (or eval) mode, then restore the mode it had (also after an exception)."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


def eval_mode(model: nn.Module):
    """Run the block with ``model`` in eval mode, then restore train/eval as it was (also after an exception)."""
    return training_mode(model, False)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Swallow what the block prints (ultralytics prints progress bars and tables): keeps stdout clean for ``--json``."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
