"""The method registry: every pruning criterion and sparsity regulariser of the benchmark, by name.

A *criterion* (pruning stage) builds a Torch-Pruning ``Importance`` that scores the channels of a DepGraph group,
so it plugs into any Torch-Pruning pruner, yours included::

    imp = pruning.methods.get_method("lamp").build(num_classes=10)
    pruner = torch_pruning.pruner.BasePruner(model, example_inputs, importance=imp, ...)

A criterion that needs data also has ``calibrate(model, batches, pruner)``, which must run once before pruning.

A *sparsifier* (sparsify stage) builds a :class:`~pruning.methods.base.Sparsifier`: the regularised Torch-Pruning pruner
used during sparse training.  A benchmark method is a criterion, optionally paired with a sparsifier: ``l2+group_norm``.
"""
from __future__ import annotations

from .base import CRITERION, SPARSIFIER, Method, MethodPair, get_method, list_methods, register, resolve
from . import cp, group_lasso, hrank, magnitude, obd, sparsifiers, taylor, thinet  # noqa: F401  (importing registers
#   the methods: one module per paper, over shared .activations, .contributions, .gradient_scores, .per_sample_grads)

__all__ = ["CRITERION", "SPARSIFIER", "Method", "MethodPair", "get_method", "list_methods", "register", "resolve"]
