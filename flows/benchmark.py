"""The benchmark flow: every (method, speedup, scope) trial of params.yaml's benchmark section, and the prepare
and pretrain flows it builds on.

Prefect needs no server: without ``PREFECT_API_URL`` it runs a temporary local one; with it, flows report to that
server (``prefect server start``).  ``benchmark.concurrency`` > 1 runs methods side by side on threads, and
``benchmark.dask_address`` (``local`` or ``tcp://scheduler:8786``) runs them on a Dask cluster via prefect-dask.
An invocation that computes anything gets a new MLflow parent run: its new trials as children, the cached ones
linked (``trial-link``), its own leaderboard, and the best model per (method, speedup) registered.  One with
nothing to compute creates no run and says where the trials are.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Optional

from pruning import fileio

from . import leaderboard, progress, stages
from .config import Params
from .engine import FLOW, flow
from .keys import make_key
from .leaderboard import METRIC_ACCURACY, METRIC_DETECTION
from .layout import DENSE_PATH, RESULTS_PATH, TRIALS_DIR, dataset_slug, trial_dir
from .naming import from_params
from .record import TrialRecord
from .sweep import SweepContext, baseline, dense_for, ensure_prepared, open_sweep
from .tasks import prepare_task, pretrain_task
from .tracking import tracker_for
from .trials import Trial, method_trials_task, run_trial, trials_of


@flow(name="prepare", flow_run_name=from_params("prepare"), **FLOW)
def prepare_flow(params: dict) -> str:
    p = Params.model_validate(params)
    path = prepare_task(p)
    progress.current().message(f"prepared {p.data.dataset} in {path}")
    return path


@flow(name="pretrain", flow_run_name=from_params("pretrain"), **FLOW)
def pretrain_flow(params: dict, out: str = str(DENSE_PATH)) -> str:
    p = Params.model_validate(params)
    ensure_prepared(p)
    if dense_for(p, Path(out)):
        progress.current().message(f"{out} is up to date")
        return out
    return pretrain_task(p, out)


@flow(name="benchmark", flow_run_name=from_params("benchmark"), **FLOW)
def benchmark_flow(params: dict, trials_dir: str = str(TRIALS_DIR), dense_path: str = str(DENSE_PATH),
                   results_path: str = str(RESULTS_PATH)) -> dict:
    """Every trial of params.yaml's benchmark section; writes ``results_path`` and returns the summary."""
    p = Params.model_validate(params)
    ctx = open_sweep(p, "benchmark", baseline(p, Path(dense_path)), trials_dir).evaluated().with_seed_baselines(
        p.benchmark.seeds)
    trials = trials_of(p)
    keys = [t.key(ctx.for_seed(t.seed)) for t in trials]
    sweep = make_key("sweep", sorted(keys))
    done = [cached_run(ctx, k) for k in keys]
    if all(done):
        where = sorted({ctx.tracker.parent_of(r) for r in done})
        progress.current().message(f"nothing to compute: all {len(trials)} trial(s) are cached (MLflow parent "
                                   f"run(s) {', '.join(where)}); no new run logged")
    else:
        ctx = ctx.with_parent(start_parent(ctx, sweep, len(trials)))
    try:
        records = run_trials(ctx, trials)
    except BaseException:
        if ctx.parent_run_id:
            ctx.tracker.finish(ctx.parent_run_id, "KILLED")
        raise
    summary = summarize(ctx, sweep, records)
    fileio.write_json(Path(results_path), summary)
    if ctx.parent_run_id:
        finish_parent(ctx, summary, results_path, records)
    return summary


def cached_run(ctx: SweepContext, key: str) -> Optional[str]:
    """The FINISHED run that computed this trial, when its result is cached under the trials folder."""
    if not (trial_dir(ctx.trials_dir, key) / "result.json").is_file():
        return None
    return ctx.tracker.finished_trial(ctx.experiment_id, key)


def start_parent(ctx: SweepContext, sweep: str, n_trials: int) -> str:
    p, data = ctx.params, ctx.data
    parent = ctx.tracker.parent_run(
        ctx.experiment_id, sweep, f"benchmark-{p.model.name}-{dataset_slug(p.data.dataset)}",
        {"methods": p.benchmark.methods, "speedups": p.benchmark.speedups, "scopes": p.benchmark.scopes,
         "profile": p.profile, "seed": p.seed, "seeds": p.benchmark.seeds, "dense_mode": p.benchmark.dense,
         "model": p.model.name, "dataset": p.data.dataset, "dataset_digest": data["digest"],
         "concurrency": p.benchmark.concurrency, "trials": n_trials,
         **{f"recipe.{k}": v for k, v in recipe(ctx).items()}}, ctx.tags)
    ctx.tracker.log_dataset(parent, p.data.dataset, data["digest"], data["path"], {"dataset_version": data["digest"]})
    return parent


def summarize(ctx: SweepContext, sweep: str, records: list[TrialRecord]) -> dict:
    """``reports/benchmark.json``: the invocation and every trial's record."""
    p = ctx.params
    return {"experiment_id": ctx.experiment_id, "experiment_name": ctx.experiment_name,
            "parent_run_id": ctx.parent_run_id, "tracking_uri": ctx.tracking_uri, "sweep_key": sweep,
            "dataset": p.data.dataset, "model": p.model.name, "task": "detect" if p.is_detection else "classify",
            "metric": METRIC_DETECTION if p.is_detection else METRIC_ACCURACY, "data_version": ctx.data["digest"],
            "git_rev": ctx.tags["git_rev"], "acc_dense": acc_dense(ctx), "dense": dict(ctx.dense_eval),
            "dense_by_seed": {str(s): b["dense_eval"] for s, b in ctx.seed_baselines.items()},
            "speedups": p.benchmark.speedups, "scopes": p.benchmark.scopes, "methods": p.benchmark.methods,
            "seeds": p.benchmark.seeds, "dense_mode": p.benchmark.dense, "recipe": recipe(ctx),
            "target": p.prune.target, "latency_batch": p.prune.latency_batch,
            "trials": [r.to_dict() for r in records]}


def acc_dense(ctx: SweepContext) -> float:
    """The dense accuracy: the shared baseline's, or the mean over the seeds' baselines."""
    if not ctx.seed_baselines:
        return ctx.dense_eval["acc"]
    accs = [b["dense_eval"]["acc"] for b in ctx.seed_baselines.values()]
    return sum(accs) / len(accs)


def recipe(ctx: SweepContext) -> dict:
    """The sweep's recipe card, with the dense accuracy it reports."""
    return {**ctx.recipe, "acc_dense": round(acc_dense(ctx), 2)}


def run_trials(ctx: SweepContext, trials: list[Trial]) -> list[TrialRecord]:
    """Every trial, a method's trials in order (they share its sparse training); methods side by side when
    ``benchmark.concurrency`` > 1 or on Dask (see :func:`side_by_side`)."""
    progress.current().sweep_start(len(trials))
    by_method: dict = {}
    for t in trials:
        by_method.setdefault(t.method, []).append(t)
    if not side_by_side(ctx.params):
        return [run_trial(ctx, t) for ts in by_method.values() for t in ts]
    futures = [method_trials_task.submit(ctx, m, ts) for m, ts in by_method.items()]
    records = []
    for ts, fut in zip(by_method.values(), futures):
        try:
            records.extend(fut.result())
        except Exception as e:  # the worker itself died
            records.extend(TrialRecord.failed(t.method, t.scope, t.speedup, f"{type(e).__name__}: {e}", t.seed)
                           for t in ts)
    return records


def finish_parent(ctx: SweepContext, summary: dict, results_path: str, records: list[TrialRecord]) -> None:
    """Everything this invocation's parent gets before it ends: counts, its own leaderboard, the best models."""
    tracker, parent = ctx.tracker, ctx.parent_run_id
    failed = sum(r.status != "ok" for r in records)
    tracker.log_metrics(parent, {"acc_dense": summary["acc_dense"], "trials_ok": len(records) - failed,
                                 "trials_failed": failed, "trials_cached": sum(r.cached for r in records)})
    tracker.log_artifact(parent, results_path, "reports")
    # the leaderboard of this invocation's trials only (a later `tune` adds rows to reports/, never to this run)
    board = leaderboard.build(summary)
    with tempfile.TemporaryDirectory() as tmp:
        for path in leaderboard.write_reports(summary, Path(tmp), board).values():
            if Path(path).is_file():
                tracker.log_artifact(parent, path, "leaderboard")
    tracker.log_metrics(parent, leaderboard.flat_metrics(board))
    try:
        if ctx.params.is_detection:  # an MLflow pytorch flavour of a YOLO model needs ultralytics to load anyway
            progress.current().message("model registration: classification models only (each YOLO trial's run "
                                       "holds its checkpoint)")
        else:
            register_best_models(ctx, records)
    except Exception as e:  # the results stand without the registry; say why
        progress.current().message(f"model registration skipped: {type(e).__name__}: {e}")
    tracker.finish(parent, "FINISHED" if failed < len(records) else "FAILED")


def registered_name(p: Params, method: str, speedup: float) -> str:
    """``prunebench-<dataset>-<model>-<method>-x<speedup>``, with what MLflow names cannot hold as ``-``."""
    raw = f"prunebench-{dataset_slug(p.data.dataset)}-{p.model.name}-{method}-x{speedup:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def best_per_target(records: list[TrialRecord]) -> dict:
    """The trial with the highest ``acc_finetuned`` per (method, speedup target), among the ok ones."""
    best: dict = {}
    for r in records:
        if r.status != "ok":
            continue
        key = (r.method, float(r.speedup_target))
        if key not in best or r.acc_finetuned > best[key].acc_finetuned:
            best[key] = r
    return best


def register_best_models(ctx: SweepContext, records: list[TrialRecord]) -> list:
    """Log each (method, speedup)'s best pruned model to the parent as an MLflow model and register it; a trial
    already registered (a cached best) is not registered again.  Returns the new ``(name, version)`` pairs."""
    import pruning
    registered, images = [], None
    for (method, speedup), record in best_per_target(records).items():
        name = registered_name(ctx.params, method, speedup)
        if any(v.tags.get("trial_key") == record.trial_key for v in ctx.tracker.registered_versions(name)):
            continue
        if images is None:  # two real test images: the input example, and what the signature is inferred from
            images = next(iter(stages.load_bundle(ctx.params).loader("test", 2)))[0].numpy()
        model, _ = pruning.load_checkpoint(record.checkpoint)
        tags = {"trial_key": record.trial_key, "trial_run_id": record.run_id, "acc_finetuned": record.acc_finetuned}
        registered.append((name, ctx.tracker.log_model(ctx.parent_run_id, model, images, name, tags)))
    return registered


def warm_up(uri: Optional[str] = None) -> None:
    """Open the MLflow store while the Prefect server finishes starting (each takes seconds)."""
    t = threading.Thread(target=lambda: tracker_for(uri) if uri else None, daemon=True)
    t.start()
    from .server import wait_for_server
    wait_for_server()
    t.join()


def side_by_side(params: Params) -> bool:
    """Whether methods run side by side: asked for, and no latency target (it is timed on this machine, and a
    trial training beside it would slow what it times)."""
    b = params.benchmark
    return (b.concurrency > 1 or bool(b.dask_address)) and params.prune.target != "latency"


def run_benchmark(params: Params, **paths) -> dict:
    """The benchmark flow on the task runner ``benchmark.concurrency`` / ``benchmark.dask_address`` ask for."""
    flow_fn = benchmark_flow
    b = params.benchmark
    if not side_by_side(params):
        if b.concurrency > 1 or b.dask_address:
            progress.current().message("latency target: trials run one at a time (benchmark.concurrency and "
                                       "dask_address are not used)")
    elif b.dask_address:
        from .cluster import task_runner
        flow_fn = benchmark_flow.with_options(task_runner=task_runner(params))
    elif b.concurrency > 1:
        from prefect.task_runners import ProcessPoolTaskRunner
        threads = max(1, (os.cpu_count() or 1) // b.concurrency)
        flow_fn = benchmark_flow.with_options(task_runner=ProcessPoolTaskRunner(
            max_workers=b.concurrency, initializer=start_worker, initargs=(threads,)))
    return flow_fn(params.model_dump(), **paths)


def start_worker(threads: int) -> None:
    """A trial worker process: the commands' quiet environment, its share of the cores (small models train
    faster in two single-threaded processes than in one with two threads, which wait on each other), and
    progress lines on stderr, counted per method."""
    from .env import quiet_environment
    quiet_environment()
    import torch
    torch.set_num_threads(threads)
    progress.set_reporter(progress.Lines())
    progress.IN_WORKER = True
