"""The Prefect tasks: each wraps one stage of :mod:`flows.stages` and hands on files, never in-memory models.

Every step of a trial writes its checkpoint and then a small ``<step>.json`` into the trial's folder; a step whose
JSON exists returns it without recomputing, so a killed trial resumes at the step it was in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pruning import fileio

from . import progress, stages
from .config import Params
from .engine import TASK, task


def once(work: str | Path, step: str, compute) -> dict:
    """A step's result, computed once per trial folder: a rerun after a kill reuses the finished step's file."""
    done = Path(work) / f"{step}.json"
    if done.is_file():
        return fileio.read_json(done)
    result = compute()
    fileio.write_json(done, result)
    return result


@task(name="prepare", **TASK)
def prepare_task(params: Params) -> str:
    return str(stages.prepare(params))


@task(name="pretrain", **TASK)
def pretrain_task(params: Params, out: Optional[str] = None) -> str:
    """Train the dense baseline into ``out`` (or the per-params cache when ``out`` is None)."""
    on_epoch = progress.on_epoch("pretrain", params.pretrain.epochs)
    if out is None:
        return str(stages.dense_baseline(params, on_epoch=on_epoch))
    stages.pretrain(params, Path(out), on_epoch=on_epoch)
    return out


@task(name="evaluate-dense", **TASK)
def evaluate_dense_task(params: Params, dense: str, out: str) -> dict:
    if Path(out).is_file():
        return fileio.read_json(Path(out))
    evaluate = stages.evaluate_detection if params.is_detection else stages.evaluate_stage
    metrics = evaluate(params, Path(dense))
    fileio.write_json(Path(out), metrics)
    return metrics


@task(name="sparsify", task_run_name="sparsify[{method}]", **TASK)
def sparsify_task(params: Params, method: str, dense: str, work: str) -> dict:
    """Sparse training; a method without a sparsifier passes the dense checkpoint through untouched."""
    import pruning
    if pruning.resolve(method).sparsifier is None:
        return {"checkpoint": dense, "seconds_sparsify": 0.0, "sparsify_history": []}
    out = Path(work) / "sparse.pt"

    def compute():
        result = stages.sparsify_stage(params, method, Path(dense), out,
                                       progress.on_epoch(f"sparsify {method}", params.sparsify.epochs))
        return {**result, "checkpoint": str(out)}
    return once(work, "sparsify", compute)


@task(name="prune", task_run_name="prune[{method}@{speedup}x/{scope}]", **TASK)
def prune_task(params: Params, method: str, speedup: float, scope: str, source: str, work: str) -> dict:
    out = Path(work) / "pruned.pt"

    def compute():
        result = stages.prune_stage(params, method, speedup, scope, Path(source), out)
        write_channels(Path(work), result.pop("channels", []))
        return {**result, "checkpoint": str(out)}
    return once(work, "prune", compute)


@task(name="finetune", task_run_name="finetune[{name}]", **TASK)
def finetune_task(params: Params, name: str, source: str, work: str, teacher: Optional[str] = None) -> dict:
    """The pruned checkpoint finetuned (distilled from ``teacher``, the dense checkpoint, when finetune.distill>0)."""
    out = Path(work) / "finetuned.pt"
    epochs = params.finetune.epochs

    def compute():
        result = stages.finetune_or_copy(params, Path(source), out, epochs,
                                         progress.on_epoch(f"finetune {name}", epochs),
                                         teacher=Path(teacher) if teacher else None)
        return {**result, "checkpoint": str(out)}
    return once(work, "finetune", compute)


@task(name="evaluate", task_run_name="evaluate[{name}]", **TASK)
def evaluate_task(params: Params, name: str, checkpoint: str, work: str, dense: Optional[str] = None) -> dict:
    """The finetuned checkpoint's evaluation; with ``dense``, latency timed against it in interleaved rounds."""
    return once(work, "evaluate", lambda: {**stages.evaluate_stage(params, Path(checkpoint),
                                                                   Path(dense) if dense else None),
                                           "checkpoint": checkpoint})


@task(name="detection-trial", task_run_name="detect[{name}]", **TASK)
def detection_trial_task(params: Params, name: str, method: str, speedup: float, scope: str, dense: str, work: str,
                         dense_eval: dict, recipe: dict) -> dict:
    """A YOLO trial (prune -> finetune -> validate through ultralytics' trainer and validator) as one task: its
    record, kept in ``work`` so a rerun after a kill does not train it again."""
    def compute():
        record = stages.detection_trial(params, method, speedup, scope, Path(dense), Path(work) / "finetuned.pt",
                                        Path(work), dense_metrics=dense_eval, recipe=recipe)
        return record.to_dict()
    return once(work, "detect", compute)


def write_channels(work: Path, channels: list) -> None:
    """The per-layer channel table of a prune, as JSON and CSV (logged with the trial)."""
    import csv
    import io
    fileio.write_json(work / "channels.json", channels)
    if channels:
        cols = list(dict.fromkeys(k for row in channels for k in row))
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=cols)
        w.writeheader()
        w.writerows(channels)
        fileio.write_text(work / "channels.csv", text.getvalue())
