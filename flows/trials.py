"""One benchmark trial: sparsify -> prune -> finetune -> evaluate as Prefect tasks, tracked as one MLflow run.

A trial lives in ``models/trials/<trial_key>/`` (see :mod:`flows.keys`).  A trial whose ``result.json`` exists and
whose MLflow run is FINISHED is not run again: it is linked under the current parent, so a killed sweep resumes
without training anything twice and without duplicate runs.  The sparse training of a method is cached by its own
key and shared by all its speedups.  A failing trial is recorded (status ``failed``, its run FAILED with the
reason) and the sweep goes on.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pruning
from pruning import fileio

from . import progress
from .config import Params
from .engine import TASK, task
from .keys import sparse_key, trial_key
from .layout import sparse_dir, trial_dir
from .record import TrialRecord
from .sweep import SweepContext
from .tasks import detection_trial_task, evaluate_task, finetune_task, prune_task, sparsify_task


@dataclass(frozen=True)
class Trial:
    method: str
    speedup: float
    scope: str
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.method}@{self.speedup:g}x/{self.scope}/s{self.seed}"

    def key(self, ctx: SweepContext) -> str:
        """``ctx`` is the seed's context (:meth:`SweepContext.for_seed`): its params carry the seed."""
        return trial_key(ctx.params, self.method, self.speedup, self.scope, ctx.dense_hash, ctx.data["content"])


def trials_of(params: Params) -> list[Trial]:
    """Every (method, scope, seed, speedup) of the benchmark section, a method's trials together."""
    b = params.benchmark
    return [Trial(m, float(s), sc, seed) for m in b.methods for sc in b.scopes for seed in b.seeds
            for s in b.speedups]


def sparse_work(ctx: SweepContext, method: str) -> Path:
    """The folder of the method's sparse training for this context's seed, named by its own key."""
    return sparse_dir(ctx.trials_dir, sparse_key(ctx.params, method, ctx.dense_hash, ctx.data["content"]))


def sparsified(ctx: SweepContext, method: str) -> dict:
    """The method's sparse-trained checkpoint, cached by its own key (shared by its speedups and tuning trials)."""
    return sparsify_task(ctx.params, method, ctx.dense, str(sparse_work(ctx, method)))


def trial_params(ctx: SweepContext, trial: Trial, key: str) -> dict:
    """What a trial's MLflow run records as params when it starts (``protect``, as applied, comes with its result)."""
    p = ctx.params
    pair = pruning.resolve(trial.method)
    return {
        "task": "detect" if p.is_detection else "classify", "method": trial.method, "criterion": pair.criterion.name,
        "sparsifier": pair.sparsifier.name if pair.sparsifier else "none", "scope": trial.scope,
        "speedup_target": trial.speedup, "iterative_steps": p.prune.steps,
        "calibration_batches": p.prune.calibration_batches,
        "calibration_size": p.prune.calibration_batches * p.data.batch_size,
        "recalibrate_bn": p.prune.recalibrate_bn, "recipe": p.family_recipe().name,
        **{f"finetune_{k}": v for k, v in p.finetune.model_dump().items()},
        **({f"sparsify_{k}": v for k, v in p.sparsify.model_dump().items()} if pair.sparsifier else {}),
        "batch_size": p.data.batch_size, "seed": p.seed, "model": p.model.name, "dataset": p.data.dataset,
        "dataset_digest": ctx.data["digest"], "git_rev": ctx.tags.get("git_rev"),
        "prefect_flow_run_id": ctx.tags.get("prefect_flow_run_id"), "trial_key": key,
    }


def compute(ctx: SweepContext, trial: Trial, work: Path) -> TrialRecord:
    """The trial's four tasks; each step resumes from its file in ``work``."""
    p = ctx.params
    start = time.perf_counter()
    if p.is_detection:
        record = TrialRecord.from_dict(detection_trial_task(p, trial.name, trial.method, trial.speedup, trial.scope,
                                                            ctx.dense, str(work), ctx.dense_eval, ctx.recipe))
        record.seconds_wall = time.perf_counter() - start
        return record
    sp = sparsified(ctx, trial.method)
    pr = prune_task(p, trial.method, trial.speedup, trial.scope, sp["checkpoint"], str(work))
    ft = finetune_task(p, trial.name, pr["checkpoint"], str(work), teacher=ctx.dense)
    ev = evaluate_task(p, trial.name, ft["checkpoint"], str(work), dense=ctx.dense)
    record = TrialRecord.from_steps(trial.method, trial.scope, trial.speedup, pr, ev, ctx.dense_eval,
                                    p.evaluate.latency_batch, ft, sp, p.finetune.epochs, seed=trial.seed,
                                    recipe=ctx.recipe)
    record.seconds_wall = time.perf_counter() - start
    return record


def run_trial(ctx: SweepContext, trial: Trial) -> TrialRecord:
    """One trial, resumable, tracked as one MLflow child run of ``ctx.parent_run_id``; errors are recorded.
    ``ctx`` is the sweep's context; the trial runs in its seed's (:meth:`SweepContext.for_seed`)."""
    ctx = ctx.for_seed(trial.seed)
    key = trial.key(ctx)
    work = trial_dir(ctx.trials_dir, key)
    result_file = work / "result.json"
    tracker = ctx.tracker
    reporter = progress.current()
    reporter.trial_start(trial.name)
    if result_file.is_file():
        done_run = tracker.finished_trial(ctx.experiment_id, key)
        if done_run:
            tracker.link_trial(ctx.experiment_id, ctx.parent_run_id, done_run)  # listed under this parent too
            record = TrialRecord.from_dict(fileio.read_json(result_file))
            record.run_id, record.cached = done_run, True
            reporter.trial_end(trial.name, record.to_dict())
            return record
    tracker.discard_unfinished(ctx.experiment_id, key)
    run_id = tracker.start_child(ctx.experiment_id, ctx.parent_run_id, trial.name, key,
                                 trial_params(ctx, trial, key), ctx.tags)
    tracker.log_dataset(run_id, ctx.params.data.dataset, ctx.data["digest"], ctx.data["path"],
                        {"dataset_version": ctx.data["digest"], "git_rev": ctx.tags.get("git_rev", "")})
    try:
        if result_file.is_file():  # computed before a crash, not yet in MLflow: log it, do not retrain
            record = TrialRecord.from_dict(fileio.read_json(result_file))
        else:
            record = compute(ctx, trial, work)
            record.trial_key = key
            fileio.write_json(result_file, record.to_dict())
        tracker.log_record(run_id, record, artifacts(work, record, sparse_work(ctx, trial.method) / "sparse.pt"))
        tracker.finish(run_id)
    except Exception as e:  # one failing trial is recorded, the sweep goes on
        error = f"{type(e).__name__}: {e}"
        tracker.fail(run_id, error)
        record = TrialRecord.failed(trial.method, trial.scope, trial.speedup, error, trial.seed)
    except BaseException:
        tracker.finish(run_id, "KILLED")
        raise
    record.trial_key, record.run_id, record.cached = key, run_id, False
    reporter.trial_end(trial.name, record.to_dict())
    return record


@task(name="method-trials", task_run_name="trials[{method}]", **TASK)
def method_trials_task(ctx: SweepContext, method: str, trials: list) -> list:
    """All trials of one method in order (they share its sparse training): the unit spread over workers."""
    if progress.IN_WORKER:
        progress.current().sweep_start(len(trials), f"{method} (worker {os.getpid()})")
    return [run_trial(ctx, t) for t in trials]


def artifacts(work: Path, record: TrialRecord, sparse: Optional[Path] = None) -> list[tuple[Path, str]]:
    """A trial's files for its MLflow run: the channel tables, a plot, and the group-norm histogram of its sparse
    training (beside the sparse checkpoint, shared by the method's trials of one seed)."""
    files = [(work / "channels.csv", "channels"), (work / "channels.json", "channels")]
    if sparse is not None:
        files.append((sparse.with_name("sparsity.png"), "plots"))
    plot = trial_plot(work, record)
    return files + ([(plot, "plots")] if plot else [])


def trial_plot(work: Path, record: TrialRecord) -> Optional[Path]:
    """Finetune curves and kept fraction per layer, one PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    channels = fileio.read_json(work / "channels.json") if (work / "channels.json").is_file() else []
    hist = record.finetune_history
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    if hist:
        ep = [h["epoch"] for h in hist]
        axes[0].plot(ep, [h["loss"] for h in hist], "o-", label="loss")
        ax2 = axes[0].twinx()
        ax2.plot(ep, [h.get("val_acc", float("nan")) for h in hist], "s--", color="tab:orange", label="val acc")
        ax2.set_ylabel("val acc (%)")
    axes[0].set_title("finetune")
    axes[0].set_xlabel("epoch")
    kept = [r.get("kept", 1.0) for r in channels]
    axes[1].bar(range(len(kept)), kept)
    axes[1].set_title("channels kept per layer")
    axes[1].set_xlabel("layer")
    axes[1].set_ylim(0, 1.05)
    fig.suptitle(f"{record.method} @ {record.speedup_target:g}x ({record.scope})")
    fig.tight_layout()
    out = work / "trial.png"
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out
