"""A tuning trial: sample an allocation, prune to the target with it, finetune briefly, report every epoch."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import optuna

from .. import progress, stages
from ..engine import TASK, task
from .study import PARAM_RATIO, Study


class _Stop(Exception):
    """Raised from the finetune's epoch hook when the Optuna pruner stops the trial."""

    def __init__(self, step: int):
        self.step = step


def sample(trial, s: Study) -> tuple[dict, float, int]:
    t = s.params.tune
    ratios = {g: trial.suggest_float(f"{PARAM_RATIO}{g}", *t.ratio_range) for g in s.groups}
    protect = trial.suggest_float("protect", *t.protect_range)
    steps = trial.suggest_categorical("steps", t.steps)
    return ratios, protect, steps


@task(name="tune-trial", task_run_name="tune[{s.method} #{number}]", **TASK)
def trial_task(s: Study, number: int, trial, allocation: dict, protect: float, steps: int, run_id: str) -> dict:
    """Prune with the sampled allocation, finetune briefly; val accuracy reported to the pruner after every epoch
    (step = epoch), and judged by it after each but the last (a trial that ran to the end completes)."""
    tracker = s.sweep.tracker
    p = s.params
    work = s.work / f"trial-{number}"
    pr = stages.prune_stage(p, s.method, s.speedup, "protected", Path(s.source), work / "pruned.pt",
                            allocation=allocation, eval_split="val", protect=protect, steps=steps)
    pr.pop("channels")
    out = {"speedup": pr["speedup"], "macs_pruned": pr["macs_pruned"], "macs_dense": pr["macs_dense"],
           "params_pruned": pr["params_pruned"], "params_dense": pr["params_dense"], "val_acc_pruned": pr["acc_pruned"],
           "target_reached": pr["target_reached"], "steps_taken": pr["steps_taken"],
           "seconds_prune": pr["seconds_prune"], **{f"kept.{g}": v for g, v in pr["kept_by_group"].items()}}
    tracker.log_metrics(run_id, {k: v for k, v in out.items() if k != "target_reached"})
    if not pr["target_reached"]:
        shutil.rmtree(work, ignore_errors=True)
        return {**out, "outcome": "infeasible"}

    def on_epoch(row: dict) -> None:
        tracker.log_metrics(run_id, {"val_acc": row["val_acc"], "finetune_loss": row["loss"]}, step=row["epoch"])
        progress.current().epoch(f"trial {number}", s.params.tune.epochs, row)
        if s.multi:
            return
        trial.report(row["val_acc"], row["epoch"])  # every epoch, the last too: later trials compare with it
        if row["epoch"] < s.params.tune.epochs and trial.should_prune():
            raise _Stop(row["epoch"])
    try:
        ft = stages.finetune_stage(p, work / "pruned.pt", work / "finetuned.pt", s.params.tune.epochs, on_epoch,
                                   teacher=Path(s.sweep.dense))
    except _Stop as stop:
        return {**out, "outcome": "pruned", "pruned_at": stop.step}
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the best allocation is pruned again for its full finetune
    history = ft["finetune_history"]
    return {**out, "outcome": "complete", "val_acc": history[-1]["val_acc"], "seconds_finetune": ft["seconds_finetune"]}


def objective(s: Study, tracker):
    def run(trial):
        allocation, protect, steps = sample(trial, s)
        p = s.params
        params = {"method": s.method, "speedup_target": s.speedup, "objective": "multi" if s.multi else "single",
                  "protect": protect, "iterative_steps": steps, "tune_epochs": p.tune.epochs,
                  "calibration_batches": p.prune.calibration_batches, "batch_size": p.data.batch_size,
                  "seed": p.seed, "model": p.model.name, "dataset": p.data.dataset, "optuna_study": s.name,
                  **{f"{PARAM_RATIO}{g}": r for g, r in allocation.items()},
                  **{f"finetune_{k}": v for k, v in p.finetune.model_dump().items() if k != "epochs"}}
        run_id = tracker.start_child(s.experiment_id, s.parent_run_id, f"{s.method} trial {trial.number}",
                                     f"{s.key}:{trial.number}", params,
                                     {**s.tags, "sweep_key": s.key, "optuna_trial": trial.number,
                                      "optuna_trial_id": trial._trial_id}, kind="tune-trial")
        if s.data:
            tracker.log_dataset(run_id, p.data.dataset, s.data["digest"], s.data["path"],
                                {"dataset_version": s.data["digest"]})
        progress.current().trial_start(f"{s.method} trial {trial.number}")
        start = time.perf_counter()
        try:
            result = trial_task(s, trial.number, trial, allocation, protect, steps, run_id)
        except BaseException as e:
            if isinstance(e, Exception):
                tracker.fail(run_id, f"{type(e).__name__}: {e}")
            else:
                tracker.finish(run_id, "KILLED")
            raise
        result["seconds_trial"] = time.perf_counter() - start
        for k in ("speedup", "macs_pruned", "val_acc_pruned", "target_reached", "seconds_trial"):
            trial.set_user_attr(k, result[k])
        tracker.log_metrics(run_id, {"seconds_trial": result["seconds_trial"],
                                     "target_reached": float(result["target_reached"])})
        tracker.set_tags(run_id, {"optuna_state": result["outcome"].upper()})
        tracker.finish(run_id)
        progress.current().trial_end(f"{s.method} trial {trial.number}", progress_line(result))
        if s.speedup is not None:  # feasible when the target is met (always, unless the floors stop the scaling)
            trial.set_constraint("speedup_shortfall", s.speedup - result["speedup"])
        if result["outcome"] == "infeasible":
            raise optuna.TrialPruned(f"target {s.speedup:g}x not reached ({result['speedup']:.2f}x)")
        if result["outcome"] == "pruned":
            raise optuna.TrialPruned(f"stopped at step {result['pruned_at']}")
        trial.set_user_attr("val_acc", result["val_acc"])
        return (result["val_acc"], result["macs_pruned"]) if s.multi else result["val_acc"]
    return run


def progress_line(result: dict) -> dict:
    """A trial's outcome for the progress reporters."""
    cost = f"speedup {result['speedup']:.2f}x, val acc after pruning {result['val_acc_pruned']:.2f}"
    if result["outcome"] == "complete":
        return {"status": "ok", "line": f"val acc {result['val_acc']:.2f} ({cost})"}
    where = f" at step {result['pruned_at']}" if "pruned_at" in result else ""
    return {"status": result["outcome"], "line": f"{result['outcome']}{where} ({cost})"}

