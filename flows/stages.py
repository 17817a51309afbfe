"""File-level stages: each reads its inputs from files and writes its outputs to files.

These are the units the Prefect tasks wrap and the CLI calls directly; they import no orchestration, so
``prunebench prune`` stays fast.  A stage never leaves a half-written output behind (checkpoints are atomic).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import pruning
from pruning import fileio
from pruning.data import DataBundle, input_size_of
from pruning.device import device_name

from .config import Params
from .keys import baseline_key
from .layout import CACHE_DIR, dataset_slug, prepared_dir
from .record import TrialRecord

OnEpoch = Optional[Callable[[dict], None]]


# --------------------------------------------------------------------------- data
def prepared_path(params: Params) -> Path:
    return prepared_dir(params.data.prepared_dir, params.data.dataset)


def prepare(params: Params) -> Path:
    """Materialise the dataset into ``data/<name>/`` (the DVC-versioned form every later stage reads)."""
    d = params.data
    bundle = pruning.load_data(d.dataset, d.root, d.download, d.input_size)
    return pruning.materialize(bundle, prepared_path(params))


def is_prepared(params: Params) -> bool:
    """Whether ``data/<name>/`` holds the dataset at the input size these params ask for."""
    meta = prepared_path(params) / "meta.json"
    if not meta.is_file():
        return False
    try:
        size = fileio.read_json(meta).get("input_size")
    except (OSError, ValueError, AttributeError):
        return False  # a corrupt copy is prepared again
    return size == input_size_of(params.data.dataset, params.data.input_size)


def load_bundle(params: Params) -> DataBundle:
    """The prepared copy when it fits the params, else the dataset straight from its source."""
    if is_prepared(params):
        return pruning.load_data(str(prepared_path(params)))
    d = params.data
    return pruning.load_data(d.dataset, d.root, d.download, d.input_size)


def loader(params: Params, bundle: DataBundle, split: str, batch: int, **options):
    """``bundle``'s loader of ``split``, its batches made on the compute device (a small split lives on a GPU)."""
    return bundle.loader(split, batch, device=compute_device(params), **options)


def loaders(params: Params, bundle: DataBundle, augment: bool = True):
    batch = params.data.batch_size
    return (loader(params, bundle, "train", batch, shuffle=True, augment=augment and bundle.spec.input_size >= 16,
                   seed=params.seed, flip=params.family_recipe().flip),
            loader(params, bundle, "val", 256), loader(params, bundle, "test", 256))


def augments(params: Params) -> bool:
    """Training batches are augmented (random crop, and flips where the recipe has them) at 16 pixels and up; an
    8x8 digit has no room."""
    return input_size_of(params.data.dataset, params.data.input_size) >= 16


def augmentation(params: Params) -> str:
    if params.is_detection:
        return ("ultralytics' defaults (HSV, flip, translate, scale), mosaic "
                + ("on" if input_size(params) >= 320 else "off below 320 px"))
    if not augments(params):
        return "none"
    return "random crop + flip" if params.family_recipe().flip else "random crop"


def recipe_card(params: Params, acc_dense: Optional[float] = None) -> dict:
    """Everything a result depends on besides the method, flat: carried by every trial record, printed in the
    leaderboard's header and held by the MLflow parent run as ``recipe.*`` params."""
    b, d, ft = params.benchmark, params.data, params.finetune
    return {
        "model": params.model.name, "model_kwargs": _kwargs_text(params.model.kwargs),
        "device": device_name(compute_device(params)), "precision": params.compute.precision,
        "dataset": d.dataset, "input_size": input_size(params),
        "batch_size": d.batch_size, "augmentation": augmentation(params), "recipe": params.family_recipe().name,
        "pretrain": params.pretrain.recipe().describe(),
        "sparsify": "none (YOLO prunes with criteria alone)" if params.is_detection else
                    f"{params.sparsify.epochs} epochs, SGD lr {params.sparsify.lr:g}, reg "
                    + ("per sparsifier" if params.sparsify.reg is None else f"{params.sparsify.reg:g}") + ", no wd",
        "prune": prune_text(params),
        "bn_recalibration": (f"{params.prune.recalibrate_bn} batches after pruning" if params.prune.recalibrate_bn
                             else "off"),
        "finetune": ft.recipe().describe(),
        "distillation": f"weight {ft.distill:g}, T {ft.temperature:g} (dense teacher)" if ft.distill else "off",
        "calibration_size": params.prune.calibration_batches * d.batch_size,
        "seeds": ",".join(str(s) for s in b.seeds), "dense": f"{b.dense} (seed {params.seed})" if b.dense == "shared"
        else "per seed", "acc_dense": None if acc_dense is None else round(acc_dense, 2),
    }


def prune_text(params: Params) -> str:
    """How pruning ran: steps, protection, what the speedup divides, the channel multiple."""
    p = params.prune
    threads = params.evaluate.threads or "the process's"
    target = {"macs": "MACs", "params": "params"}.get(p.target, f"latency at batch {p.latency_batch}, {threads} "
                                                                f"threads")
    return (f"{p.steps} steps, protect {p.protect:g}, target {target}"
            + (f", widths rounded to {p.round_to}" if p.round_to else ""))


def input_size(params: Params) -> int:
    """The side of the images the model trains and is measured on (a detection dataset's image size for YOLO)."""
    if params.is_detection:
        from pruning.detection.data import detection_imgsz
        return detection_imgsz(params.data.dataset, params.data.input_size)
    return input_size_of(params.data.dataset, params.data.input_size)


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) or "none"


# --------------------------------------------------------------------------- the device
_CONFIGURED: set = set()


def compute_device(params: Params):
    """The torch device ``compute.device`` names here (``auto`` resolved), its backend configured once per process
    (deterministic kernels or cuDNN's autotuner, see :func:`pruning.device.configure`)."""
    from pruning.device import configure
    device = params.compute.torch_device()
    if (device, params.compute.deterministic) not in _CONFIGURED:
        configure(device, params.compute.deterministic)
        _CONFIGURED.add((device, params.compute.deterministic))
    return device


def on_device(model, params: Params):
    """``model`` moved to the compute device (channels-last when ``compute.channels_last``)."""
    from pruning.device import place
    return place(model, compute_device(params), params.compute.channels_last)


# --------------------------------------------------------------------------- checkpoints
def _save(path: Path, model, params: Params, bundle: DataBundle, extra: Optional[dict] = None) -> Path:
    spec = bundle.spec
    return pruning.save_checkpoint(path, model, model_name=params.model.name, num_classes=spec.num_classes,
                                   in_chans=spec.in_chans, input_size=spec.input_size, extra=extra)


def _load(path: Path, params: Params, bundle: DataBundle):
    model, meta = pruning.load_checkpoint(path, expect_model=params.model.name,
                                          expect_classes=bundle.spec.num_classes)
    return on_device(model, params), meta


# --------------------------------------------------------------------------- pretrain
def pretrain(params: Params, out: Path, on_epoch: OnEpoch = None) -> dict:
    """Train the dense baseline (or load ``model.checkpoint`` weights) and save it to ``out``."""
    pruning.seed_everything(params.seed)
    bundle = load_bundle(params)
    spec = bundle.spec
    model = build_model(params, spec)
    start = time.perf_counter()
    history = []
    if params.model.checkpoint:
        pruning.load_weights(model, params.model.checkpoint, params.model.name)
    else:
        train_loader, val_loader, _ = loaders(params, bundle)
        history = pruning.train(model, train_loader, params.pretrain.recipe(), val_loader,
                                on_epoch=on_epoch, precision=params.compute.precision)
    seconds = time.perf_counter() - start
    acc = pruning.accuracy(model, loader(params, bundle, "test", 256))
    # no timing in the file: its bytes (which trial keys hash) depend on the weights and the recipe alone
    _save(Path(out), model, params, bundle, {"acc_dense": acc, "baseline_key": baseline_key(params)})
    return {"acc_dense": acc, "seconds_pretrain": seconds, "history": history, "checkpoint": str(out)}


def dense_baseline(params: Params, cache_dir: Path = CACHE_DIR, on_epoch: OnEpoch = None) -> Path:
    """A cached dense baseline for these params, trained on first use."""
    slug = params.model.name.replace("/", "-")
    path = Path(cache_dir) / f"dense-{slug}-{dataset_slug(params.data.dataset)}-{baseline_key(params)}.pt"
    if not path.is_file():
        pretrain(params, path, on_epoch=on_epoch)
    return path


# --------------------------------------------------------------------------- the trial stages
def sparsify_stage(params: Params, method: str, dense: Path, out: Path, on_epoch: OnEpoch = None) -> dict:
    """Sparse training with the method's sparsifier; a method without one passes the dense checkpoint through."""
    pair = pruning.resolve(method)
    bundle = load_bundle(params)
    model, _ = _load(Path(dense), params, bundle)
    start = time.perf_counter()
    history, moved = [], {}
    if pair.sparsifier is not None:
        from pruning import sparsity
        pruning.seed_everything(params.seed)
        train_loader, val_loader, _ = loaders(params, bundle)
        sp, example = params.sparsify, bundle.spec.example_inputs().to(compute_device(params))
        kinds = sparsity.penalised(pair.sparsifier.name)  # the figures follow what this penalty shrinks
        before = sparsity.group_norms(model, example, kinds)
        history = pruning.sparsify(model, example, pair.sparsifier.name, train_loader,
                                   pruning.Recipe(epochs=sp.epochs, lr=sp.lr), criterion=pair.criterion.name,
                                   val_loader=val_loader, on_epoch=on_epoch, reg=sp.reg, delta_reg=sp.delta_reg,
                                   precision=params.compute.precision)
        after = sparsity.group_norms(model, example, kinds)
        moved = sparsity.sparsity_summary(before, after)
        from .sparsity_plot import sparsity_plot
        sparsity_plot(before, after, Path(out).with_name("sparsity.png"), title=method)
    seconds = time.perf_counter() - start
    _save(Path(out), model, params, bundle)
    return {"seconds_sparsify": seconds, "sparsify_history": history, "sparsity": moved}


def prune_stage(params: Params, method: str, speedup: Optional[float], scope: str, source: Path, out: Path,
                allocation: Optional[dict] = None, eval_split: str = "test", protect: Optional[float] = None,
                steps: Optional[int] = None) -> dict:
    """Prune a checkpoint to the MACs speedup target; record the report and accuracy before finetuning.

    ``allocation`` (``{layer group: ratio}``, see :mod:`pruning.allocation`) gives each layer group its own share:
    scaled until the target is met, or taken as absolute ratios when ``speedup`` is None.  ``eval_split`` is where
    ``acc_pruned`` is measured (tuning reads ``val``, never ``test``).  ``protect`` and ``steps`` default to
    ``prune.protect`` and ``prune.steps`` (a tuning trial passes the values it sampled).
    """
    pruning.seed_everything(params.seed)
    bundle = load_bundle(params)
    model, _ = _load(Path(source), params, bundle)
    calibration = loader(params, bundle, "train", params.data.batch_size, shuffle=True, seed=params.seed)
    p = params.prune
    ratio_dict, groups = None, {}
    if allocation is not None:
        from pruning import allocation as alloc
        groups = alloc.layer_groups(model, bundle.spec.num_classes, max_groups=params.tune.layer_groups)
        ratio_dict = alloc.ratio_dict(groups, alloc.scalable(allocation) if speedup is not None else allocation)
        dense_widths = alloc.group_widths(groups)
    model, report = pruning.prune(model, bundle.spec.example_inputs(), method, speedup, scope, data=calibration,
                                  protect=p.protect if protect is None else protect,
                                  steps=p.steps if steps is None else steps, calibration_batches=p.calibration_batches,
                                  num_classes=bundle.spec.num_classes, pruning_ratio_dict=ratio_dict,
                                  seed=params.seed, **target_options(params), **attention_options(p))
    recalibrated = 0
    if p.recalibrate_bn:  # before acc_pruned and the finetune: both see the repaired statistics
        batches = loader(params, bundle, "train", params.data.batch_size, shuffle=True, seed=params.seed)
        recalibrated = pruning.recalibrate_bn(model, batches, p.recalibrate_bn)
    acc = pruning.accuracy(model, loader(params, bundle, eval_split, 256))
    summary = {**report.summary(), "bn_recalibration_samples": recalibrated}
    if groups:  # the share of each group's channels that stayed: the allocation actually applied
        summary["kept_by_group"] = {g: w / dense_widths[g] for g, w in alloc.group_widths(groups).items()}
    # no timing in the file (as for dense.pt): the bytes of pruned and finetuned checkpoints depend on the weights
    # and the recipe alone; the seconds stay in the returned result (result.json, MLflow)
    untimed = {k: v for k, v in summary.items() if not k.startswith("seconds_") and k not in MEASURED}
    _save(Path(out), model, params, bundle, {"report": untimed, "allocation": allocation})
    return {**summary, "acc_pruned": acc, "channels": report.channels}


MEASURED = ("latency", "achieved")  # timings of this machine: in the results, not in the checkpoint's bytes


def target_options(params: Params) -> dict:
    """What :func:`pruning.prune` needs for the target: its kind, the channel multiple, and for latency the batch,
    threads and the cache of layer latency tables."""
    p = params.prune
    return {"target": p.target, "round_to": p.round_to, "latency_batch": p.latency_batch,
            "latency_threads": params.evaluate.threads, "latency_cache": CACHE_DIR / "latency"}


def build_model(params: Params, spec):
    """A fresh (untrained) ``params.model`` for data of ``spec``, on the compute device."""
    return on_device(pruning.create_model(params.model.name, spec.num_classes, spec.in_chans, spec.input_size,
                                          **params.model.kwargs), params)


def attention_options(prune_params) -> dict:
    """``head_ratio``/``head_dim_ratio`` for :func:`pruning.prune`, only when set (a CNN takes neither)."""
    options = {}
    if prune_params.head_ratio:
        options["head_ratio"] = prune_params.head_ratio
    if prune_params.head_dim_ratio is not None:
        options["head_dim_ratio"] = prune_params.head_dim_ratio
    return options


def untrained_model(params: Params):
    """A fresh model of ``params.model.name`` for the dataset, with its spec: architecture checks need no weights."""
    spec = load_bundle(params).spec
    return build_model(params, spec), spec


def layer_group_names(params: Params) -> list[str]:
    """The layer groups an allocation gives a ratio each (from the architecture alone)."""
    from pruning import allocation
    model, spec = untrained_model(params)
    return list(allocation.layer_groups(model, spec.num_classes, max_groups=params.tune.layer_groups))


def reachable_speedup(params: Params, protect: float) -> float:
    """The largest MACs speedup any allocation reaches when every group keeps ``protect`` of its channels."""
    from pruning import allocation
    model, spec = untrained_model(params)
    return allocation.reachable_speedup(model, spec.example_inputs(), protect, spec.num_classes)


def finetune_stage(params: Params, source: Path, out: Path, epochs: Optional[int] = None,
                   on_epoch: OnEpoch = None, teacher: Optional[Path] = None) -> dict:
    """Finetune a pruned checkpoint with the family's finetuning recipe; with ``finetune.distill`` > 0, distil from
    ``teacher`` (the dense checkpoint)."""
    pruning.seed_everything(params.seed)
    bundle = load_bundle(params)
    model, meta = _load(Path(source), params, bundle)
    train_loader, val_loader, _ = loaders(params, bundle)
    distillation = _distillation(params, teacher, bundle)
    start = time.perf_counter()
    history = pruning.finetune(model, train_loader, params.finetune.recipe(epochs), val_loader, on_epoch=on_epoch,
                               distillation=distillation, precision=params.compute.precision)
    seconds = time.perf_counter() - start
    _save(Path(out), model, params, bundle, meta.get("extra"))
    return {"seconds_finetune": seconds, "finetune_history": history}


def _distillation(params: Params, teacher: Optional[Path], bundle: DataBundle):
    ft = params.finetune
    if not ft.distill:
        return None
    if teacher is None:
        raise pruning.PruneBenchError("finetune.distill needs the dense model as the teacher: finetune through the "
                                      "benchmark, tune or prune commands, which pass it")
    dense, _ = _load(Path(teacher), params, bundle)
    return pruning.Distillation(dense, ft.distill, ft.temperature)


def evaluate_stage(params: Params, checkpoint: Path, dense: Optional[Path] = None) -> dict:
    """Test accuracy, MACs, params and latency on the compute device (batch 1, ``evaluate.latency_batch`` and
    ``evaluate.latency_sweep``'s; also compiled with ``evaluate.compile``) of a checkpoint; with
    ``dense``, also its latency speedups over the dense model timed in interleaved rounds (one machine state for
    both, so the ratio does not depend on when each was measured alone)."""
    bundle = load_bundle(params)
    model, _ = _load(Path(checkpoint), params, bundle)
    start = time.perf_counter()
    e = params.evaluate
    example = bundle.spec.example_inputs()
    metrics = pruning.evaluate(model, loader(params, bundle, "test", 256), example,
                               latency_batch=e.latency_batch, repeats=e.latency_repeats, threads=e.threads,
                               sweep=e.sweep_on(compute_device(params)), compile=e.compile)
    if dense is not None:
        reference, _ = _load(Path(dense), params, bundle)
        metrics.update(interleaved_speedups(params, reference, model, example, (1, e.latency_batch)))
    metrics["seconds_evaluate"] = time.perf_counter() - start
    return metrics


def finetune_or_copy(params: Params, source: Path, out: Path, epochs: int, on_epoch: OnEpoch = None,
                     teacher: Optional[Path] = None) -> dict:
    """Finetune for ``epochs`` into ``out``; at 0 epochs the pruned checkpoint is copied (nothing trained)."""
    if epochs > 0:
        return finetune_stage(params, source, out, epochs, on_epoch, teacher)
    fileio.copy_file(source, out)
    return {"seconds_finetune": 0.0, "finetune_history": []}


def run_trial(params: Params, method: str, speedup: float, scope: str, dense: Path, out: Path,
              work_dir: Path, finetune_epochs: Optional[int] = None, dense_metrics: Optional[dict] = None,
              on_epoch: OnEpoch = None) -> TrialRecord:
    """sparsify -> prune -> finetune -> evaluate, through files in ``work_dir``."""
    work_dir = Path(work_dir)
    start = time.perf_counter()
    dense_metrics = dense_metrics or evaluate_stage(params, dense)
    sparse = sparsify_stage(params, method, dense, work_dir / "sparse.pt", on_epoch)
    pruned = prune_stage(params, method, speedup, scope, work_dir / "sparse.pt", work_dir / "pruned.pt")
    epochs = params.finetune.epochs if finetune_epochs is None else finetune_epochs
    tuned = finetune_or_copy(params, work_dir / "pruned.pt", Path(out), epochs, on_epoch, teacher=Path(dense))
    final = {**evaluate_stage(params, Path(out), dense=Path(dense)), "checkpoint": str(out)}
    record = TrialRecord.from_steps(method, scope, speedup, pruned, final, dense_metrics,
                                    params.evaluate.latency_batch, tuned, sparse, epochs, seed=params.seed,
                                    recipe=recipe_card(params, dense_metrics["acc"]))
    record.seconds_wall = time.perf_counter() - start
    return record


# --------------------------------------------------------------------------- model families: checks and detection
def preflight(params: Params) -> None:
    """Before any training or written file: the model takes the dataset's input size, ``model.checkpoint`` loads
    into it, and a trial prune of a copy runs (a family that cannot be pruned fails here, naming the layer type)."""
    from pruning.preflight import check_input_size, check_prunable
    if params.is_detection:
        detection_preflight(params)
        return
    model, spec = untrained_model(params)
    check_input_size(model, spec.example_inputs(), params.model.name)
    if params.model.checkpoint:  # the user's weights fit (and load safely) before any data is prepared
        pruning.load_weights(model, params.model.checkpoint, params.model.name)
    check_prunable(model, spec.example_inputs(), spec.num_classes, params.model.name, params.prune.round_to)


def check_reachable(params: Params, speedup: float) -> None:
    """A latency target no allocation can reach under the scope's protection is refused before any work: the
    untrained model with every group at its floor is timed against the dense one (weights do not change time)."""
    p = params.prune
    if p.target != "latency":
        return
    from pruning import allocation
    model, spec = untrained_model(params)
    protect = 0.0 if p.scope == "global" else p.protect
    best = allocation.reachable_speedup(model, spec.example_inputs(), protect, spec.num_classes, "latency",
                                        p.latency_batch, params.evaluate.threads)
    if best < speedup:
        raise pruning.PruneBenchError(
            f"latency speedup {speedup:g}x is unreachable for {params.model.name} at batch {p.latency_batch}: with "
            f"every layer group at the protection floor {protect:g} it runs {best:.2f}x faster than dense here; "
            f"lower --speedup or prune.protect, or time a larger --latency-batch or --input-size")


def detection_data(params: Params):
    """The detection dataset these params name, at ``data.input_size`` (shapes: 64, a dataset yaml: 640), after
    checking the model and dataset go together: a YOLO model on a detection dataset."""
    from pruning import detection
    from pruning.detection import yolo
    name = params.model.name
    if not yolo.is_yolo(name):
        raise pruning.PruneBenchError(f"{params.data.dataset} is a detection dataset: use a YOLO model "
                                      f"({', '.join(yolo.YOLO_MODELS)})")
    if not detection.is_detection_dataset(params.data.dataset):
        raise pruning.PruneBenchError(f"{name} is a detection model: use a detection dataset "
                                      f"(shapes or an ultralytics dataset .yaml)")
    data = detection.load_detection_data(params.data.dataset, params.data.prepared_dir, params.data.input_size)
    yolo.check_imgsz(data.imgsz)
    return data


def detection_preflight(params: Params) -> None:
    """Before a detection benchmark trains anything: the model and dataset go together, every method runs on
    YOLO, and ``model.checkpoint`` loads into the model."""
    detection_data(params)
    from pruning.detection.yolo import check_method
    for method in params.benchmark.methods:
        check_method(method)
    if params.model.checkpoint and not Path(params.model.checkpoint).is_file():
        raise pruning.PruneBenchError(f"model.checkpoint {params.model.checkpoint} does not exist")


def detection_baseline(params: Params, checkpoint: Optional[Path] = None, cache_dir: Path = CACHE_DIR) -> Path:
    """The dense YOLO model as a prunebench checkpoint: ``checkpoint`` (or ``model.checkpoint``) when it is one,
    an ultralytics ``.pt`` or timm-style weights file converted once into the cache, or a baseline trained from
    scratch with the ``yolo`` recipe (ultralytics' own trainer), cached by its key."""
    from pruning.detection import yolo
    data = detection_data(params)
    checkpoint = checkpoint or (Path(params.model.checkpoint) if params.model.checkpoint else None)
    if checkpoint is not None and _is_prunebench(Path(checkpoint)):
        yolo.load_yolo(checkpoint, expect_model=params.model.name, expect_classes=data.num_classes)  # it fits
        return Path(checkpoint)
    stem = f"dense-{params.model.name}-{data.name}-{data.imgsz}"
    if checkpoint is not None:
        from .keys import file_digest
        path = Path(cache_dir) / f"{stem}-weights-{file_digest(checkpoint)[:12]}.pt"
        if not path.is_file():
            model = pruning.create_model(params.model.name, data.num_classes, 3, data.imgsz)
            yolo.load_ultralytics_weights(model, checkpoint)
            yolo.save_yolo(path, model, params.model.name, data.num_classes, data.imgsz)
        return path
    path = Path(cache_dir) / f"{stem}-{baseline_key(params)}.pt"
    if not path.is_file():
        import tempfile
        pruning.seed_everything(params.seed)
        model = pruning.create_model(params.model.name, data.num_classes, 3, data.imgsz)
        with tempfile.TemporaryDirectory(prefix="prunebench-yolo-") as work:
            model = yolo.finetune_yolo(model, data.yaml, data.imgsz, params.pretrain.epochs, Path(work),
                                       batch=params.data.batch_size, lr0=params.pretrain.lr, seed=params.seed,
                                       warmup_epochs=params.pretrain.warmup_epochs,  # the yolo recipe
                                       **yolo_device(params))
        yolo.save_yolo(path, model, params.model.name, data.num_classes, data.imgsz)
    return path


def evaluate_detection(params: Params, checkpoint: Path, work_dir: Optional[Path] = None) -> dict:
    """mAP50-95, mAP50 and latency of a YOLO checkpoint on the dataset's validation images, and ``acc``: the
    headline score every leaderboard ranks by, here mAP50-95 in percent."""
    import tempfile

    from pruning.detection import yolo
    data = detection_data(params)
    model, _ = yolo.load_yolo(checkpoint, expect_model=params.model.name, expect_classes=data.num_classes)
    with tempfile.TemporaryDirectory(prefix="prunebench-val-") as tmp:
        metrics = yolo.evaluate_yolo(model, data.yaml, data.imgsz, Path(work_dir or tmp),
                                     repeats=params.evaluate.latency_repeats,
                                     device=str(compute_device(params)))
    return {**metrics, "acc": 100.0 * metrics["map50_95"]}


def detection_trial(params: Params, method: str, speedup: float, scope: str, checkpoint: Optional[Path], out: Path,
                    work_dir: Path, finetune_epochs: Optional[int] = None, cache_dir: Path = CACHE_DIR,
                    dense_metrics: Optional[dict] = None, recipe: Optional[dict] = None) -> TrialRecord:
    """YOLO on a detection dataset: dense baseline -> prune -> finetune (ultralytics trainer) -> validate.
    ``dense_metrics`` (the dense model's :func:`evaluate_detection`) spares measuring it again."""
    from pruning.detection import yolo
    yolo.check_method(method)
    data = detection_data(params)
    work_dir = Path(work_dir)
    start = time.perf_counter()
    dense_path = detection_baseline(params, checkpoint, cache_dir)
    dense = dense_metrics or evaluate_detection(params, dense_path, work_dir)
    pruning.seed_everything(params.seed)
    model, _ = yolo.load_yolo(dense_path, expect_model=params.model.name, expect_classes=data.num_classes)
    model = on_device(model, params)
    p = params.prune
    model, report = yolo.prune_yolo(model, data.imgsz, method, speedup, scope, data.yaml, protect=p.protect,
                                    steps=p.steps, calibration_batches=p.calibration_batches,
                                    batch=params.data.batch_size)
    pruned = yolo.evaluate_yolo(model, data.yaml, data.imgsz, work_dir, repeats=params.evaluate.latency_repeats,
                                     device=str(compute_device(params)))
    epochs = params.finetune.epochs if finetune_epochs is None else finetune_epochs
    seconds_finetune = 0.0
    if epochs > 0:
        t = time.perf_counter()
        model = yolo.finetune_yolo(model, data.yaml, data.imgsz, epochs, work_dir, batch=params.data.batch_size,
                                   lr0=params.finetune.lr, seed=params.seed,
                                   warmup_epochs=params.finetune.warmup_epochs, **yolo_device(params))
        seconds_finetune = time.perf_counter() - t
        final = yolo.evaluate_yolo(model, data.yaml, data.imgsz, work_dir, repeats=params.evaluate.latency_repeats,
                                     device=str(compute_device(params)))
    else:
        final = pruned
    dense_model, _ = yolo.load_yolo(dense_path, expect_model=params.model.name, expect_classes=data.num_classes)
    dense_model = on_device(dense_model, params)
    final = {**final, **interleaved_speedups(params, dense_model, model, torch_example(data.imgsz), (1, 8))}
    yolo.save_yolo(out, model, params.model.name, data.num_classes, data.imgsz, {"report": report.summary()})
    return TrialRecord.from_detection(method, scope, speedup, report.summary(), dense, pruned, final, epochs,
                                      seconds_finetune, time.perf_counter() - start, str(out), data.imgsz,
                                      seed=params.seed, recipe=recipe or recipe_card(params, dense["acc"]),
                                      dataset=data.name)


def yolo_device(params: Params) -> dict:
    """ultralytics' trainer on the compute device, with its own mixed precision when a precision is asked for."""
    return {"device": str(compute_device(params)), "amp": params.compute.precision != "fp32"}


def torch_example(imgsz: int):
    import torch
    return torch.randn(1, 3, imgsz, imgsz)


def interleaved_speedups(params: Params, dense, model, example, batches) -> dict:
    """``latency_speedup_b<batch>`` (and its range over rounds) of ``model`` over ``dense``, timed in interleaved
    rounds in this process: one machine state and one thread count for both."""
    from pruning.latency import batch_of, compare
    e, found = params.evaluate, {}
    for batch in batches:
        check = compare(dense, model, batch_of(example, batch), rounds=5,
                        repeats=max(2, e.latency_repeats // (2 if batch == 1 else 8)), threads=e.threads)
        found.update({f"latency_speedup_b{batch}": check["speedup"],
                      f"latency_speedup_b{batch}_range": [check["speedup_min"], check["speedup_max"]]})
    return found


def _is_prunebench(path: Path) -> bool:
    try:
        pruning.read_checkpoint(path)
        return True
    except pruning.PruneBenchError:
        return False
