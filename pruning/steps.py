"""The paper's four steps as plain functions: sparsify -> group -> prune -> finetune, plus evaluate."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Iterable, Optional, Union

import torch
import torch_pruning as tp
from torch import nn

from .errors import PruneBenchError, unknown_choice
from .family import FAMILY_OPTIONS, family_options
from .heads import ignored_layers as _ignored, num_classes as _num_classes
from .methods import SPARSIFIER, get_method, resolve
from .metrics import (channel_table, correct_predictions, count_macs_params, layer_widths, measure_latency,
                      percent_correct)
from .tp_adapter import channel_groups, is_attention_group, module_names
from .train import Distillation, Recipe, train

SCOPES = ("local", "global", "protected", "isomorphic")
DEFAULT_PROTECT = 0.1  # PruningBench's base setting: every group keeps >= 10% of its channels


@dataclass
class PruneReport:
    method: str
    scope: str
    speedup_target: Optional[float]  # None: all steps run to the given ratios
    speedup: float
    target_reached: bool
    macs_dense: int
    macs_pruned: int
    params_dense: int
    params_pruned: int
    protect: float
    steps_taken: int
    max_steps: int
    calibration_samples: int
    seconds_calibrate: float
    seconds_prune: float
    warnings: list = field(default_factory=list)
    channels: list = field(default_factory=list)
    pruning_history: list = field(default_factory=list)

    def summary(self) -> dict:
        """The scalar fields (no per-layer table, no history)."""
        return {k: v for k, v in asdict(self).items() if k not in ("channels", "pruning_history")}


# --------------------------------------------------------------------------- sparsify
def sparsify(model: nn.Module, example_inputs: torch.Tensor, sparsifier: str, train_loader, recipe: Recipe,
             criterion: str = "l2", val_loader=None, ignored_layers=None, on_epoch=None, **options) -> list[dict]:
    """Sparse training in place with the named regulariser (weight decay off, as in Torch-Pruning's recipe).

    ``options`` go to the sparsifier's builder (``reg``, ``delta_reg``); one given as None takes the sparsifier's
    own default (see ``get_method(sparsifier).defaults()``): the strengths that suit an L1 on BatchNorm scales and
    a group norm differ by orders of magnitude.
    """
    method = get_method(sparsifier)
    if method.stage != SPARSIFIER:
        raise PruneBenchError(f"{sparsifier!r} is not a sparsifier")
    _check_bn(model, method.name, method.needs_bn)
    num_classes = _num_classes(model, example_inputs)
    spec = method.build(**{k: v for k, v in options.items() if v is not None})
    importance = get_method(criterion).build(num_classes=num_classes)
    pruner = spec.make_pruner(model, example_inputs, importance,
                              ignored_layers=_ignored(model, num_classes, ignored_layers))
    recipe = Recipe(**{**asdict(recipe), "weight_decay": 0.0})
    return train(model, train_loader, recipe, val_loader,
                 after_backward=lambda: spec.after_backward(pruner, model),
                 after_epoch=lambda: spec.after_epoch(pruner), on_epoch=on_epoch)


# --------------------------------------------------------------------------- group
def group(model: nn.Module, example_inputs: torch.Tensor, ignored_layers=None) -> list[dict]:
    """The DepGraph groups of coupled layers that prune together: root layer, members and width."""
    num_classes = _num_classes(model, example_inputs)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    rows = []
    names = module_names(graph)
    for g in graph.get_all_groups(ignored_layers=_ignored(model, num_classes, ignored_layers)):
        members = sorted({names[dep.target.module] for dep, _ in g if dep.target.module in names})
        root = g[0].dep.target.module
        rows.append({"root": names.get(root, str(root)), "channels": len(g[0].idxs),
                     "members": members})
    return rows


# --------------------------------------------------------------------------- prune
def prune(model: nn.Module, example_inputs: torch.Tensor, method: Union[str, tp.importance.Importance],
          speedup: Optional[float], scope: str = "protected", data: Optional[Iterable] = None, *,
          protect: float = DEFAULT_PROTECT, steps: int = 100, calibration_batches: int = 4,
          num_classes: Optional[int] = None, ignored_layers=None, pruning_ratio_dict=None,
          round_to: Optional[int] = None, seed: int = 0, **pruner_options) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` in place, in up to ``steps`` iterative steps, until dense MACs / pruned MACs >= ``speedup``.

    ``speedup=None`` runs all ``steps`` steps instead: each group then ends at its ``pruning_ratio_dict`` ratio
    (an absolute allocation, see :mod:`pruning.allocation`); with a target, the ratios only shape the allocation,
    which the steps scale up until the target is met.

    ``method`` is a registry name (a ``+sparsifier`` suffix is accepted and ignored here: sparse training is the
    separate :func:`sparsify` step) or any Torch-Pruning importance.  ``data`` yields (inputs, labels) batches;
    data-driven criteria calibrate once on the first ``calibration_batches`` of it.  ``scope`` is one of
    ``local`` (same ratio per layer), ``global``, ``protected`` (global, every group keeps >= ``protect`` of its
    channels) and ``isomorphic`` (global ranking within buckets of structurally identical groups, with protection).
    ``seed`` fixes a criterion's own random draws (the ``random`` scores).
    ``head_ratio`` and ``head_dim_ratio`` control attention pruning (see :func:`pruning.family.family_options`);
    other keyword options go to Torch-Pruning's ``BasePruner`` (e.g. ``num_heads``, ``customized_pruners``).
    """
    importance, name, needs_data = _importance(method, model, example_inputs, num_classes, seed)
    _validate(speedup, scope, protect, steps, name, needs_data, data)
    num_classes = num_classes or _num_classes(model, example_inputs)
    protect = 0.0 if scope == "global" else protect
    # family hooks (attention heads, unwrapped parameters): empty options for a plain CNN
    family = family_options(model, steps=steps, **{k: pruner_options.pop(k) for k in FAMILY_OPTIONS
                                                   if k in pruner_options})
    pruner_options = {**family.options, **pruner_options}
    pruning_ratio_dict = {**pruner_options.pop("pruning_ratio_dict", {}), **(pruning_ratio_dict or {})} or None
    _check_own_modules(model, pruning_ratio_dict)
    dense_widths = layer_widths(model)
    macs_dense, params_dense = count_macs_params(model, example_inputs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = tp.pruner.BasePruner(
            model, example_inputs, importance=importance, pruning_ratio=1.0, max_pruning_ratio=1.0 - protect,
            iterative_steps=steps, global_pruning=scope != "local", isomorphic=scope == "isomorphic",
            ignored_layers=_ignored(model, num_classes, ignored_layers), pruning_ratio_dict=pruning_ratio_dict,
            round_to=round_to, **pruner_options)
    if family.configure:
        family.configure(pruner)
    samples = 0
    if needs_data and hasattr(importance, "calibrate"):
        samples = importance.calibrate(model, list(islice(iter(data), calibration_batches)), pruner)
    seconds_calibrate = time.perf_counter() - start
    achieved, macs = 1.0, macs_dense
    goal = math.inf if speedup is None else speedup
    unchecked = 0  # steps left before MACs are counted again
    while achieved < goal and pruner.current_step < steps:
        _protected_step(pruner, protect)
        if family.after_step:
            family.after_step(pruner)
        if unchecked > 0:
            unchecked -= 1
            continue
        before, (macs, _) = macs, count_macs_params(model, example_inputs)
        achieved = macs_dense / macs
        unchecked = _steps_surely_short(macs, before, macs_dense / goal)
    if hasattr(importance, "finish"):  # e.g. CP's optional least-squares refit of the next layers
        importance.finish(model)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)  # calibration statistics lived in .grad
    _, params = count_macs_params(model, example_inputs)
    notes = []
    if speedup is not None and achieved < speedup:
        notes.append(f"speedup {speedup:g}x not reachable with scope {scope!r} (protect={protect:g}) in {steps} "
                     f"steps: stopped at {achieved:.3f}x")
        warnings.warn(notes[-1])
    history = list(getattr(model, "prunebench_history", [])) + _plain_history(pruner.pruning_history())
    model.prunebench_history = history
    return model, PruneReport(
        method=name, scope=scope, speedup_target=None if speedup is None else float(speedup), speedup=achieved,
        target_reached=speedup is None or achieved >= speedup,
        macs_dense=macs_dense, macs_pruned=macs, params_dense=params_dense, params_pruned=params, protect=protect,
        steps_taken=pruner.current_step, max_steps=steps, calibration_samples=samples,
        seconds_calibrate=seconds_calibrate, seconds_prune=seconds, warnings=notes,
        channels=channel_table(model, dense_widths), pruning_history=history)


def _steps_surely_short(macs: float, previous: float, target: float) -> int:
    """How many more steps can go uncounted while the MACs surely stay above ``target`` (counting deep-copies the
    model and costs more than a step).  A step removes a share of channels and MACs fall about with the square of
    the widths, so a step usually removes fewer MACs than the one before: extrapolating the last drop reaches the
    target early.  A quarter of that guess is the margin for criteria whose choices move between layers (LAMP);
    the steps near the target are all counted, so pruning stops where counting every step would stop it."""
    drop = previous - macs
    if drop <= 0 or not math.isfinite(target):
        return 0
    return max(0, int(0.25 * (macs - target) / drop) - 1)


def _protected_step(pruner: tp.pruner.BasePruner, protect: float) -> None:
    """One pruner step in which no group falls below ``protect`` of its initial width.

    Torch-Pruning checks the floor only before a step; a global threshold can still take a group below it within
    the step, so each group is trimmed to keep its most important channels above the floor.
    """
    for g in pruner.step(interactive=True):
        dep, idxs = g[0]
        module = dep.target.module
        is_out = pruner.DG.is_out_channel_pruning_fn(dep.handler)
        initial = (pruner.layer_init_out_ch if is_out else pruner.layer_init_in_ch).get(module)
        current = pruner.DG.get_out_channels(module) if is_out else pruner.DG.get_in_channels(module)
        # attention heads and grouped channels prune in fixed patterns that trimming would break
        if protect > 0 and initial and current and not is_attention_group(pruner, g) and channel_groups(pruner, g) == 1:
            allowed = current - max(1, math.ceil(initial * protect - 1e-9))
            if allowed <= 0:
                continue
            if len(idxs) > allowed:
                full = pruner.DG.get_pruning_group(module, dep.handler, list(range(current)))
                scores = pruner.estimate_importance(full)
                chosen = [int(i) for i in idxs]
                if scores is not None and len(scores) > max(chosen):
                    chosen.sort(key=lambda i: float(scores[i]))
                g = pruner.DG.get_pruning_group(module, dep.handler, chosen[:allowed])
        g.prune()


def _importance(method, model, example_inputs, num_classes, seed):
    if isinstance(method, str):
        pair = resolve(method)
        _check_bn(model, pair.criterion.name, pair.criterion.needs_bn)
        imp = pair.criterion.build(num_classes=num_classes or _num_classes(model, example_inputs), seed=seed)
        return imp, pair.name, pair.needs_data
    if callable(method):
        return method, type(method).__name__, hasattr(method, "calibrate")
    raise PruneBenchError(f"method must be a registry name or a Torch-Pruning importance, not {type(method).__name__}")


def check_prune_args(speedup: Optional[float], scope: str = "protected", protect: float = DEFAULT_PROTECT,
                     steps: int = 1) -> None:
    """What :func:`prune` accepts as its target, scope, protection and steps (a PruneBenchError otherwise): callers
    check their input with it before any work starts."""
    if scope not in SCOPES:
        raise unknown_choice("scope", scope, SCOPES)
    if speedup is not None and not speedup > 1:
        raise PruneBenchError(f"speedup must be > 1 (dense MACs / pruned MACs), got {speedup:g}")
    if not 0 <= protect < 1:
        raise PruneBenchError(f"protect must be in [0, 1), got {protect}")
    if steps < 1:
        raise PruneBenchError(f"steps must be >= 1, got {steps}")


def _validate(speedup, scope, protect, steps, name, needs_data, data):
    check_prune_args(speedup, scope, protect, steps)
    if needs_data and data is None:
        raise PruneBenchError(f"method {name!r} needs calibration data: pass data= (batches of inputs, labels)")


def _check_own_modules(model: nn.Module, ratio_dict: Optional[dict]) -> None:
    """A ratio keyed by another model's modules (say, the original of a deep copy) would silently do nothing."""
    own = {id(m) for m in model.modules()}
    for key in ratio_dict or {}:
        if any(id(m) not in own for m in (key if isinstance(key, tuple) else (key,))):
            raise PruneBenchError("pruning_ratio_dict names modules that are not part of the model being pruned "
                                  "(build it from the same model object, e.g. after deepcopy)")


def _plain_history(history) -> list:
    """Torch-Pruning's history as plain lists of str/bool/int (storable without pickled objects)."""
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history]


def _check_bn(model: nn.Module, name: str, needs_bn: bool) -> None:
    if needs_bn and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise PruneBenchError(f"method {name!r} scores BatchNorm scales, but the model has no BatchNorm layer")


# --------------------------------------------------------------------------- finetune / evaluate
def finetune(model: nn.Module, train_loader, recipe: Recipe, val_loader=None, on_epoch=None,
             distillation: Optional[Distillation] = None) -> list[dict]:
    """Finetune the pruned model in place with ``recipe`` (the paper's CIFAR one: lr 0.01, multistep); with
    ``distillation``, the dense model's soft targets join the loss."""
    return train(model, train_loader, recipe, val_loader, on_epoch=on_epoch, distillation=distillation)


def evaluate(model: nn.Module, loader, example_inputs: torch.Tensor, latency_batch: int = 32,
             repeats: int = 20) -> dict:
    """Top-1 accuracy, MACs, params, and median CPU latency at batch 1 and ``latency_batch``; ``correct`` is the
    per-sample outcome in the loader's order as a string of ``0``/``1`` (compact in JSON)."""
    macs, params = count_macs_params(model, example_inputs)
    batch = example_inputs.expand(latency_batch, *example_inputs.shape[1:]).contiguous()
    hits = correct_predictions(model, loader) if loader is not None else None
    return {"acc": percent_correct(hits) if hits is not None else None,
            "correct": "".join("1" if h else "0" for h in hits.tolist()) if hits is not None else None,
            "macs": macs, "params": params,
            "latency_b1": measure_latency(model, example_inputs, repeats),
            f"latency_b{latency_batch}": measure_latency(model, batch, max(3, repeats // 4))}
