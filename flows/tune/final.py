"""After a study: the best allocation's full finetune on the test split, beside the untuned trial at the same speedup,
recorded in ``reports/tuned.json`` for the leaderboard."""
from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from pruning import fileio

from .. import progress, stages
from ..engine import TASK, task
from ..layout import TUNE_DIR, TUNED_PATH
from ..record import TrialRecord
from ..sweep import SweepContext
from ..trials import Trial, run_trial
from ..leaderboard import TUNED
from .study import PARAM_RATIO, Study


def best_trial(study, s: Study):
    """The best complete trial that met the target (single objective), or None."""
    from optuna.trial import TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("target_reached", True)]
    return max(done, key=lambda t: t.value) if done else None


def allocation_of(trial, s: Study) -> tuple[dict, float, int]:
    ratios = {g: trial.params[f"{PARAM_RATIO}{g}"] for g in s.groups}
    return ratios, trial.params["protect"], trial.params["steps"]


@task(name="tuned-final", task_run_name="final[{s.method}]", **TASK)
def final_task(s: Study, allocation: dict, protect: float, steps: int, epochs: int, dense_eval: dict,
               **extra) -> TrialRecord:
    """The best allocation with the full finetune, evaluated on the test split like a benchmark trial."""
    p = s.params
    work = s.work / "final"
    pr = stages.prune_stage(p, s.method, s.speedup, "protected", Path(s.source), work / "pruned.pt",
                            allocation=allocation, protect=protect, steps=steps)
    ft = stages.finetune_stage(p, work / "pruned.pt", work / "finetuned.pt", epochs,
                               progress.on_epoch(f"final finetune {s.method}", epochs), teacher=Path(s.sweep.dense))
    ev = {**stages.evaluate_stage(p, work / "finetuned.pt", Path(s.sweep.dense)),
          "checkpoint": str(work / "finetuned.pt")}
    return TrialRecord.from_steps(s.method, TUNED, s.speedup, pr, ev, dense_eval, p.evaluate.latency_batch, ft,
                                  None, epochs, seed=p.seed, recipe=stages.recipe_card(p, dense_eval["acc"]),
                                  allocation=allocation, kept=pr["kept_by_group"], steps=steps, **extra)


def untuned(s: Study) -> tuple[TrialRecord, SweepContext]:
    """The benchmark's own trial at this speedup (scope from params.yaml), cached when the benchmark ran it, and
    the context it ran in (with the dense model's evaluation)."""
    ctx = s.sweep.with_parent(s.parent_run_id).evaluated()
    return run_trial(ctx, Trial(s.method, float(s.speedup), s.params.prune.scope, s.params.seed)), ctx


def compare_with_untuned(s: Study, best) -> dict:
    """Full finetune of the best allocation, the untuned trial beside it, both on test; into reports/tuned.json."""
    p, tracker = s.params, s.sweep.tracker
    epochs = p.tune.final_epochs or p.finetune.epochs
    allocation, protect, steps = allocation_of(best, s)
    progress.current().sweep_start(1, "untuned trial at the same speedup")
    plain, ctx = untuned(s)
    final_key = f"{s.key}:final:{best.number}"
    done = s.work / "final" / f"result-{best.number}.json"
    finetuned = tracker.finished_trial(s.experiment_id, final_key) if done.is_file() else None
    if finetuned:  # this best was finetuned already (by another worker, or an earlier session: linked here)
        tracker.link_trial(s.experiment_id, s.parent_run_id, finetuned)
        entry = fileio.read_json(done)
        record_tuned(entry)
        return comparison(entry, plain)
    tracker.discard_unfinished(s.experiment_id, final_key)  # an interrupted final finetune: KILLED, kept as history
    run_id = tracker.start_child(s.experiment_id, s.parent_run_id, f"{s.method}@{s.speedup:g}x tuned", final_key,
                                 {"method": s.method, "speedup_target": s.speedup, "scope": TUNED,
                                  "iterative_steps": steps, "finetune_epochs": epochs, "best_trial": best.number,
                                  **{f"{PARAM_RATIO}{g}": r for g, r in allocation.items()}},
                                 {**s.tags, "sweep_key": s.key, "tuned": "true"})
    untuned_fields = ("status", "scope", "acc_finetuned", "speedup", "macs_pruned", "params_pruned", "run_id", "error")
    try:
        record = final_task(s, allocation, protect, steps, epochs, ctx.dense_eval, model=p.model.name,
                            dataset=p.data.dataset, study=s.name, best_trial=best.number, best_val_acc=best.value,
                            untuned={k: getattr(plain, k) for k in untuned_fields})
    except Exception as e:
        tracker.fail(run_id, f"{type(e).__name__}: {e}")
        raise
    record.run_id = run_id
    tracker.log_record(run_id, record)
    tracker.finish(run_id)
    entry = record.to_dict()
    fileio.write_json(done, entry)
    record_tuned(entry)
    result = comparison(entry, plain)
    tracker.log_metrics(s.parent_run_id, {k: v for k, v in result.items() if isinstance(v, (int, float))})
    return result


def comparison(entry: dict, plain: TrialRecord) -> dict:
    return {"tuned": entry, "untuned": entry["untuned"], "acc_tuned": entry["acc_finetuned"],
            "acc_untuned": plain.acc_finetuned, "macs_tuned": entry["macs_pruned"], "macs_untuned": plain.macs_pruned}


def record_tuned(entry: dict, path: Path = TUNED_PATH) -> None:
    """Add (or replace) this study's tuned trial in ``reports/tuned.json``, which the leaderboard reads.

    Read, changed and written under a lock: workers finishing different studies share the file.
    """
    with FileLock(TUNE_DIR / "tuned.lock"):
        tuned = fileio.read_json(path) if path.is_file() else {}
        tuned[f"{entry['model']}/{entry['dataset']}/{entry['method']}@{entry['speedup_target']:g}x"] = entry
        fileio.write_json(path, tuned)

