"""The paper's four steps as plain functions: sparsify -> group -> prune -> finetune, plus evaluate."""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Iterable, Optional, Union

import torch
import torch_pruning as tp
from torch import nn

from .device import batches_on, device_name, device_of
from .errors import PruneBenchError, unknown_choice
from .family import FAMILY_OPTIONS, family_options
from .heads import ignored_layers as _ignored, num_classes as _num_classes
from .methods import SPARSIFIER, get_method, resolve
from .latency import LatencyTable, LatencyWeighted, batch_of, compare, compiled, measure
from .metrics import channel_table, correct_predictions, count_macs_params, layer_widths, percent_correct
from .tp_adapter import channel_groups, is_attention_group, module_names
from .train import Distillation, Recipe, train

SCOPES = ("local", "global", "protected", "isomorphic")
TARGETS = ("macs", "params", "latency")  # what ``speedup`` divides: dense / pruned MACs, params or measured latency
CONFIRM_ROUNDS = 5   # interleaved dense/pruned timing rounds that confirm a latency target
CONFIRM_TRIES = 5    # times pruning resumes after a confirmation that fell short, before reporting a shortfall
LOOP_REPEATS = 10    # timed passes per model in each latency measurement
NEAR_ROUNDS = 3      # interleaved rounds that double-check a single round's claim that the target is met
MIN_CAP = 0.005      # a step may always remove this share of the dense latency (LatencyCap)
LATENCY_SUBSTEPS = 4  # a latency target splits each step in this many: importance per second of latency sends a
                      # step's whole channel share to the costliest layers, a latency drop larger than the 5% aimed at
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
    target: str = "macs"               # what speedup_target divides (TARGETS)
    achieved: Optional[float] = None   # the speedup reached in the target's own terms (= speedup for macs)
    round_to: Optional[int] = None     # channel multiple every pruned group was rounded to
    latency: dict = field(default_factory=dict)  # target latency: the confirming interleaved timing (compare())

    def summary(self) -> dict:
        """The scalar fields (no per-layer table, no history)."""
        return {k: v for k, v in asdict(self).items() if k not in ("channels", "pruning_history")}


# --------------------------------------------------------------------------- sparsify
def sparsify(model: nn.Module, example_inputs: torch.Tensor, sparsifier: str, train_loader, recipe: Recipe,
             criterion: str = "l2", val_loader=None, ignored_layers=None, on_epoch=None, precision: str = "fp32",
             **options) -> list[dict]:
    """Sparse training in place with the named regulariser (weight decay off, as in Torch-Pruning's recipe).

    ``options`` go to the sparsifier's builder (``reg``, ``delta_reg``); one given as None takes the sparsifier's
    own default (see ``get_method(sparsifier).defaults()``): the strengths that suit an L1 on BatchNorm scales and
    a group norm differ by orders of magnitude.
    """
    method = get_method(sparsifier)
    if method.stage != SPARSIFIER:
        raise PruneBenchError(f"{sparsifier!r} is not a sparsifier")
    _check_bn(model, method.name, method.needs_bn)
    example_inputs = example_inputs.to(device_of(model))
    num_classes = _num_classes(model, example_inputs)
    spec = method.build(**{k: v for k, v in options.items() if v is not None})
    importance = get_method(criterion).build(num_classes=num_classes)
    pruner = spec.make_pruner(model, example_inputs, importance,
                              ignored_layers=_ignored(model, num_classes, ignored_layers))
    recipe = Recipe(**{**asdict(recipe), "weight_decay": 0.0})
    return train(model, train_loader, recipe, val_loader,
                 after_backward=lambda: spec.after_backward(pruner, model),
                 after_epoch=lambda: spec.after_epoch(pruner), on_epoch=on_epoch, precision=precision)


# --------------------------------------------------------------------------- group
def group(model: nn.Module, example_inputs: torch.Tensor, ignored_layers=None) -> list[dict]:
    """The DepGraph groups of coupled layers that prune together: root layer, members and width."""
    example_inputs = example_inputs.to(device_of(model))
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
          round_to: Optional[int] = None, seed: int = 0, target: str = "macs", latency_batch: int = 1,
          latency_threads: Optional[int] = None, latency_cache=None,
          **pruner_options) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` in place, in up to ``steps`` iterative steps, until dense / pruned >= ``speedup``, where
    ``target`` says of what: ``macs`` (the paper's), ``params``, or ``latency`` (seconds per forward pass of a
    ``latency_batch`` batch at ``latency_threads`` threads, measured on this machine).

    ``speedup=None`` runs all ``steps`` steps instead: each group then ends at its ``pruning_ratio_dict`` ratio
    (an absolute allocation, see :mod:`pruning.allocation`); with a target, the ratios only shape the allocation,
    which the steps scale up until the target is met.

    ``method`` is a registry name (a ``+sparsifier`` suffix is accepted and ignored here: sparse training is the
    separate :func:`sparsify` step) or any Torch-Pruning importance.  ``data`` yields (inputs, labels) batches;
    data-driven criteria calibrate once on the first ``calibration_batches`` of it.  ``scope`` is one of
    ``local`` (same ratio per layer), ``global``, ``protected`` (global, every group keeps >= ``protect`` of its
    channels) and ``isomorphic`` (global ranking within buckets of structurally identical groups, with protection).
    ``seed`` fixes a criterion's own random draws (the ``random`` scores).
    ``round_to`` keeps every pruned group's width a multiple of it (channel counts the hardware's vector units
    divide evenly; a group narrower than it is refused).
    ``head_ratio`` and ``head_dim_ratio`` control attention pruning (see :func:`pruning.family.family_options`);
    other keyword options go to Torch-Pruning's ``BasePruner`` (e.g. ``num_heads``, ``customized_pruners``).

    With ``target="latency"`` the criterion's scores become importance per unit of latency saved
    (:class:`pruning.latency.LatencyWeighted`, over a per-layer table cached in ``latency_cache``), the steps stop
    on measured latency, and interleaved timing of the dense and pruned models confirms the target (more steps
    are taken while it falls short); ``report.latency`` holds that confirming measurement.  Each of the ``steps``
    is then split into ``LATENCY_SUBSTEPS`` pruner steps (``report.max_steps`` counts those).
    """
    device = device_of(model)  # the model's device: tracing, counting, calibration and timing all run there
    example_inputs = example_inputs.to(device)
    importance, name, needs_data = _importance(method, model, example_inputs, num_classes, seed)
    _validate(speedup, scope, protect, steps, name, needs_data, data, target)
    num_classes = num_classes or _num_classes(model, example_inputs)
    protect = 0.0 if scope == "global" else protect
    steps = steps * LATENCY_SUBSTEPS if target == "latency" else steps
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
    check_round_to(pruner, round_to)
    if family.configure:
        family.configure(pruner)
    samples = 0
    if needs_data and hasattr(importance, "calibrate"):
        samples = importance.calibrate(model, list(islice(batches_on(model, data), calibration_batches)), pruner)
    seconds_calibrate = time.perf_counter() - start
    meter = _Meter(target, model, example_inputs, latency_batch, latency_threads)
    cap = None
    if target == "latency":
        table = LatencyTable(latency_batch, latency_threads, latency_cache, device=device)
        pruner.estimate_importance = LatencyWeighted(pruner.estimate_importance, table, model, example_inputs)
        cap = meter.cap = LatencyCap(pruner.estimate_importance, round_to)
    goal = math.inf if speedup is None else speedup

    def step():
        _protected_step(pruner, protect, cap)
        if family.after_step:
            family.after_step(pruner)
    achieved = _prune_until(pruner, step, meter, goal, steps)
    confirmed = {}
    if target == "latency" and speedup is not None:
        achieved, confirmed = _confirm_latency(pruner, step, meter, goal, steps)
    if hasattr(importance, "finish"):  # e.g. CP's optional least-squares refit of the next layers
        importance.finish(model)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)  # calibration statistics lived in .grad
    macs, params = count_macs_params(model, example_inputs)
    notes = []
    if speedup is not None and achieved < speedup:
        what = {"macs": "speedup", "params": "params speedup", "latency": "latency speedup"}[target]
        notes.append(f"{what} {speedup:g}x not reachable with scope {scope!r} (protect={protect:g}) in {steps} "
                     f"steps: stopped at {achieved:.3f}x")
        warnings.warn(notes[-1])
    history = list(getattr(model, "prunebench_history", [])) + _plain_history(pruner.pruning_history())
    model.prunebench_history = history
    return model, PruneReport(
        method=name, scope=scope, speedup_target=None if speedup is None else float(speedup),
        speedup=macs_dense / macs, target_reached=speedup is None or achieved >= speedup,
        macs_dense=macs_dense, macs_pruned=macs, params_dense=params_dense, params_pruned=params, protect=protect,
        steps_taken=pruner.current_step, max_steps=steps, calibration_samples=samples,
        seconds_calibrate=seconds_calibrate, seconds_prune=seconds, warnings=notes,
        channels=channel_table(model, dense_widths), pruning_history=history, target=target,
        achieved=achieved if target != "macs" else macs_dense / macs, round_to=round_to, latency=confirmed)


class _Meter:
    """The pruned model's cost in the target's terms, relative to the dense model's (1.0 before any pruning).

    Latency is timed against a dense copy in the same call (interleaved), so both see the same machine."""

    def __init__(self, target: str, model: nn.Module, example_inputs: torch.Tensor, batch: int,
                 threads: Optional[int]):
        self.target, self.model, self.example, self.threads = target, model, example_inputs, threads
        self.inputs = batch_of(example_inputs, batch) if target == "latency" else None
        self.dense_model = copy.deepcopy(model).eval() if target == "latency" else None
        self.dense = None if target == "latency" else self._count()
        self.cap: Optional[LatencyCap] = None  # a latency target's step cap, updated by every measurement
        self.dense_seconds: Optional[float] = None  # the dense model's latency in the last measurement

    def _count(self) -> float:
        macs, params = count_macs_params(self.model, self.example)
        return macs if self.target == "macs" else params

    def relative(self, rounds: int = 1) -> float:
        """Pruned cost / dense cost (the inverse of the speedup reached)."""
        if self.target == "latency":
            timing = compare(self.dense_model, self.model, self.inputs, rounds=rounds, repeats=LOOP_REPEATS,
                             threads=self.threads)
            self.dense_seconds = timing["dense"]
            return 1.0 / timing["speedup"]
        return self._count() / self.dense

    @property
    def noisy(self) -> bool:
        return self.target == "latency"

    def confirm(self) -> dict:
        return compare(self.dense_model, self.model, self.inputs, rounds=CONFIRM_ROUNDS, repeats=LOOP_REPEATS,
                       threads=self.threads)


def _prune_until(pruner, step, meter: _Meter, goal: float, steps: int, achieved: float = 1.0) -> float:
    """Steps until the target's speedup reaches ``goal`` or the steps run out; returns the speedup reached."""
    relative = 1.0 / achieved
    unchecked = 0  # steps left before the cost is measured again
    while achieved < goal and pruner.current_step < steps:
        step()
        if unchecked > 0:
            unchecked -= 1
            continue
        before, relative = relative, meter.relative()
        if meter.noisy and 1.0 / relative >= goal:  # a single timing round can be lucky: look again, longer
            relative = meter.relative(rounds=NEAR_ROUNDS)
        achieved = 1.0 / relative
        if meter.cap is not None and math.isfinite(goal):
            meter.cap.update(relative, goal, meter.dense_seconds)
        # timing noise would make the extrapolation jump past the target: a measured target times every step
        unchecked = 0 if meter.noisy else _steps_surely_short(relative, before, 1.0 / goal)
    return achieved


def _confirm_latency(pruner, step, meter: _Meter, goal: float, steps: int) -> tuple[float, dict]:
    """The latency speedup confirmed by interleaved rounds.  The loop's single rounds are noisier: while the
    confirmation falls short, pruning goes on from there (a few times at most) and is confirmed again."""
    confirmed = meter.confirm()
    for _ in range(CONFIRM_TRIES):
        if confirmed["speedup"] >= goal or pruner.current_step >= steps:
            break
        step()
        _prune_until(pruner, step, meter, goal, steps, achieved=confirmed["speedup"])
        confirmed = meter.confirm()
    return confirmed["speedup"], confirmed


def check_round_to(pruner: tp.pruner.BasePruner, round_to: Optional[int]) -> None:
    """``round_to`` must be a positive channel multiple no prunable group is narrower than."""
    if round_to is None:
        return
    if round_to < 1:
        raise PruneBenchError(f"round_to must be a positive channel multiple, got {round_to}")
    names = module_names(pruner.DG)
    for g in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                      root_module_types=pruner.root_module_types):
        width = len(g[0].idxs)
        if width < round_to:
            layer = names.get(g[0].dep.target.module, "?")
            raise PruneBenchError(f"round_to {round_to} is larger than layer {layer}'s {width} channels; "
                                  f"use a multiple of at most {width}")


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


def _protected_step(pruner: tp.pruner.BasePruner, protect: float, cap: Optional["LatencyCap"] = None) -> None:
    """One pruner step in which no group falls below ``protect`` of its initial width (and, with a ``cap`` that
    holds a budget, that removes no more predicted latency than the budget).

    Torch-Pruning checks the floor only before a step; a global threshold can still take a group below it within
    the step, so each group is trimmed to keep its most important channels above the floor.  A group is built
    right before it is pruned: pruning one group can renumber the channels a later one reaches through a
    concatenation (YOLO's C2f), while its own root layer's channels stay as they were.
    """
    if cap is None or cap.seconds is None:
        for g in pruner.step(interactive=True):
            g = _within_protection(pruner, g, protect)
            if g is not None:
                g.prune()
        return
    groups = [g for g in (_within_protection(pruner, g, protect) for g in pruner.step(interactive=True)) if g]
    for module, handler, idxs in cap.trim(pruner, groups):
        pruner.DG.get_pruning_group(module, handler, idxs).prune()


def _within_protection(pruner: tp.pruner.BasePruner, g, protect: float):
    """``g`` with only as many of its channels as keep the group at ``protect`` of its initial width (its least
    important ones), or None when it is at the floor already."""
    dep, idxs = g[0]
    module, is_out, current = _root(pruner, g)
    initial = (pruner.layer_init_out_ch if is_out else pruner.layer_init_in_ch).get(module)
    # attention heads and grouped channels prune in fixed patterns that trimming would break
    if not (protect > 0 and initial and current) or not _trimmable(pruner, g):
        return g
    allowed = current - max(1, math.ceil(initial * protect - 1e-9))
    if allowed <= 0:
        return None
    if len(idxs) <= allowed:
        return g
    chosen = [int(i) for i in idxs]
    scores = _scores(pruner, g)
    if scores is not None and len(scores) > max(chosen):
        chosen.sort(key=lambda i: float(scores[i]))
    return pruner.DG.get_pruning_group(module, dep.handler, chosen[:allowed])


def _trimmable(pruner: tp.pruner.BasePruner, g) -> bool:
    """Whether a subset of the group's chosen channels can be pruned on its own: not attention heads, not grouped
    channels."""
    return not is_attention_group(pruner, g) and channel_groups(pruner, g) == 1


def _scores(pruner: tp.pruner.BasePruner, g):
    """The pruner's scores for every channel of the group's root layer (None: the criterion has none for it)."""
    module, _, current = _root(pruner, g)
    return pruner.estimate_importance(pruner.DG.get_pruning_group(module, g[0].dep.handler, list(range(current))))


def _root(pruner: tp.pruner.BasePruner, g):
    """The group's root layer, whether the group prunes its outputs, and its current width on that side."""
    dep = g[0].dep
    module = dep.target.module
    is_out = pruner.DG.is_out_channel_pruning_fn(dep.handler)
    return module, is_out, pruner.DG.get_out_channels(module) if is_out else pruner.DG.get_in_channels(module)


class LatencyCap:
    """How much predicted latency one step may remove on the way to a latency target.

    Torch-Pruning's steps remove a share of the channel *count*; ranked by importance per second, a step's share
    lands on the costliest layers and can cut latency by more than the tolerance aimed at.  So a step keeps, across
    its groups, only the least important channels (by the weighted scores) whose summed latency cost from the table
    stays within half the remaining gap, measured after the previous step (at least ``MIN_CAP`` of the dense
    latency); the channel schedule catches up in later steps.  ``seconds`` is None before the first measurement."""

    def __init__(self, weighted: LatencyWeighted, round_to: Optional[int]):
        self.weighted, self.round_to = weighted, round_to
        self.seconds: Optional[float] = None

    def update(self, relative: float, goal: float, dense_seconds: float) -> None:
        """After a measurement: ``relative`` pruned/dense latency, against ``1/goal``."""
        self.seconds = max(MIN_CAP, 0.5 * (relative - 1.0 / goal)) * dense_seconds

    def trim(self, pruner: tp.pruner.BasePruner, groups: list) -> list[tuple]:
        """``groups`` cut to the budget, as (root layer, pruning function, root channels) to build each group from
        when it is pruned; groups whose channels cannot be split (attention heads, grouped channels, ``round_to``
        multiples) are kept whole."""
        whole, ranked = [], []  # ranked: (weighted score, group index, channel, seconds per channel)
        for i, g in enumerate(groups):
            scores = _scores(pruner, g) if _trimmable(pruner, g) and not self.round_to else None
            if scores is None:
                whole.append(_root_spec(g, [int(j) for j in g[0].idxs]))
                continue
            cost = self.weighted.cost(g)
            ranked += [(float(scores[int(j)]), i, int(j), cost) for j in g[0].idxs]
        kept, spent = {}, 0.0
        for score, i, j, cost in sorted(ranked):
            if kept and spent + cost > self.seconds:
                break
            kept.setdefault(i, []).append(j)
            spent += cost
        return whole + [_root_spec(groups[i], idxs) for i, idxs in kept.items()]


def _root_spec(g, idxs: list) -> tuple:
    return g[0].dep.target.module, g[0].dep.handler, idxs


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


def _validate(speedup, scope, protect, steps, name, needs_data, data, target="macs"):
    check_prune_args(speedup, scope, protect, steps)
    if target not in TARGETS:
        raise unknown_choice("target", target, TARGETS)
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
             distillation: Optional[Distillation] = None, precision: str = "fp32") -> list[dict]:
    """Finetune the pruned model in place with ``recipe`` (the paper's CIFAR one: lr 0.01, multistep); with
    ``distillation``, the dense model's soft targets join the loss (the teacher on the model's device)."""
    if distillation is not None:
        distillation.teacher.to(device_of(model))
    return train(model, train_loader, recipe, val_loader, on_epoch=on_epoch, distillation=distillation,
                 precision=precision)


def evaluate(model: nn.Module, loader, example_inputs: torch.Tensor, latency_batch: int = 32,
             repeats: int = 20, threads: Optional[int] = None, sweep: Iterable[int] = (),
             compile: bool = False) -> dict:
    """Top-1 accuracy, MACs, params, and median latency at batch 1, ``latency_batch`` and each batch of ``sweep``
    on the model's device (at ``threads`` threads, with each median's interquartile spread; ``device`` names it);
    ``correct`` is the per-sample outcome in the loader's order as a string of ``0``/``1`` (compact in JSON).
    ``compile`` also times the ``torch.compile``'d model at the same batches (``compiled_latency_b<n>``)."""
    example_inputs = example_inputs.to(device_of(model))
    macs, params = count_macs_params(model, example_inputs)
    hits = correct_predictions(model, loader) if loader is not None else None
    out = {"acc": percent_correct(hits) if hits is not None else None,
           "correct": "".join("1" if h else "0" for h in hits.tolist()) if hits is not None else None,
           "macs": macs, "params": params, "device": device_name(device_of(model))}
    batches = sorted({1, latency_batch, *sweep})
    timed = [("", model)] + ([("compiled_", compiled(model))] if compile else [])
    for prefix, runnable in timed:
        for batch in batches:  # batch 1 is the noisiest: it gets the most repeats
            latency = measure(runnable, batch_of(example_inputs, batch), repeats if batch == 1 else max(3, repeats // 4),
                              threads=threads)
            out.update({f"{prefix}latency_b{batch}": latency.median, f"{prefix}latency_b{batch}_spread": latency.spread,
                        "latency_threads": latency.threads})
    return out
