"""The tuning flow: a study per method, topped up to ``tune.trials`` finished trials, then finished once."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Optional

import optuna

from pruning import fileio
from pruning.errors import PruneBenchError

from .. import progress
from ..config import Params
from ..engine import FLOW, flow
from ..keys import study_key
from ..layout import study_report_dir
from ..naming import from_params
from ..sweep import baseline, open_sweep
from ..tracking import worker_id
from ..trials import sparsified
from .final import best_trial, allocation_of, compare_with_untuned
from .objective import objective
from .study import (WORKER_ATTR, Study, already_done, check, finish_lock, finished, load_study, recover_interrupted,
                    running, session_parent, setup_lock, slot_lock, study_name, taken, trial_states)


@flow(name="tune", flow_run_name=from_params("tune"), **FLOW)
def tune_flow(params: dict, methods: list, speedup: Optional[float] = None, trials: Optional[int] = None,
              name: Optional[str] = None, final: bool = True, groups: Optional[list] = None) -> list[dict]:
    """A study per method; ``speedup`` None with ``tune.multi_objective`` gives Pareto fronts.

    ``groups`` is what :func:`check` returned when the caller already checked these params (the CLI does, before
    anything starts); a scheduled run checks here.
    """
    p = Params.model_validate(params)
    multi = p.tune.multi_objective
    target = None if multi else float(speedup or p.tune.speedup)
    groups = groups or check(p, target)
    with setup_lock():  # workers started together on a fresh project prepare and pretrain once
        ctx = open_sweep(p, "tune", baseline(p))
    results = []
    for method in methods:
        key = study_key(p, method, target, ctx.dense_hash, ctx.data["content"])
        sname = name if name and len(methods) == 1 else study_name(p, method, target, key)
        with setup_lock():
            sp = sparsified(ctx, method)
        s = Study(ctx, method, target, key, sname, groups, sp["checkpoint"])
        results.append(run_study(s, trials or p.tune.trials, final and not multi))
    return results


def run_study(s: Study, trials: int, final: bool) -> dict:
    """Top the study up to ``trials`` finished trials (shared with any other workers), then finish it."""
    tracker = s.sweep.tracker
    study = load_study(s)
    with slot_lock(s):
        recovered = recover_interrupted(study, s, tracker)
        todo = max(0, trials - taken(study))
        done = None if todo or recovered else already_done(study, s, final)
        if done is None:  # under the slot lock: a worker starting now sees this one's parent
            s.parent_run_id = session_parent(s, tracker)
    reporter = progress.current()
    if done is not None:
        reporter.message(f"study {s.name}: nothing to do, {finished(study)} finished trial(s); results under "
                         f"MLflow parent run {done.get('parent_run_id')}; no new run logged")
        return done
    reporter.message(f"study {s.name}: {finished(study)} finished trial(s) in {s.params.tune.storage}"
                     + (f", {recovered} interrupted trial(s) queued again" if recovered else "")
                     + f"; running {todo} more")
    reporter.sweep_start(todo, f"study {s.method}")
    start = time.perf_counter()
    try:
        run_trials(study, s, tracker, trials, todo)
        seconds = time.perf_counter() - start
        wait_for_workers(study)
        with finish_lock(s):  # one worker at a time; the next finds the untuned trial and final finetune done
            summary = finish_study(study, s, seconds, final)
    except PruneBenchError:
        tracker.leave_parent(s.parent_run_id, "FAILED")
        raise
    except BaseException:
        tracker.leave_parent(s.parent_run_id, "KILLED")
        raise
    tracker.leave_parent(s.parent_run_id)
    return summary


def run_trials(study, s: Study, tracker, target: int, limit: int) -> None:
    """Ask and run trials while the study's finished plus running trials stay below ``target``, at most
    ``limit`` of them (failed trials count here, so an objective that always fails ends) and not past
    ``tune.timeout`` seconds."""
    run = objective(s, tracker)
    timeout = s.params.tune.timeout
    started = time.monotonic()
    for _ in range(limit):
        if timeout is not None and time.monotonic() - started >= timeout:
            return
        with slot_lock(s):  # the count and the new trial as one step: workers on this machine never overshoot
            if taken(study) >= target:
                return
            trial = study.ask()
            trial.set_user_attr(WORKER_ATTR, worker_id())
        tell(study, trial, run)


def tell(study, trial, run) -> None:
    """Run one trial and tell Optuna how it ended; a failure is recorded (its MLflow run says why) and the
    study goes on, as ``study.optimize(catch=(Exception,))`` would."""
    from optuna.trial import TrialState
    try:
        values = run(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except Exception as e:
        study.tell(trial, state=TrialState.FAIL)
        progress.current().message(f"trial {trial.number} failed: {type(e).__name__}: {e}")
    except BaseException:  # Ctrl-C: the trial failed, the run stops
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, values)


def wait_for_workers(study, poll: float = 2.0) -> None:
    """Until this machine's other workers have ended their trials, so every worker picks the same best trial."""
    others = running(study, this_host_only=True)
    if others:
        progress.current().message(f"waiting for {len(others)} trial(s) other workers are running")
    while others:
        time.sleep(poll)
        others = running(study, this_host_only=True)


def finish_study(study, s: Study, seconds: float, final: bool) -> dict:
    """Summary, best trial, the final comparison, plots on the session's parent run (its last worker ends it)."""
    tracker = s.sweep.tracker
    states = trial_states(study)
    summary = {"study": s.name, "study_key": s.key, "storage": s.params.tune.storage, "method": s.method,
               "speedup_target": s.speedup, "objective": "multi" if s.multi else "single", "groups": s.groups,
               "model": s.params.model.name, "dataset": s.params.data.dataset, "trials": states,
               "seconds_this_run": seconds, "experiment_id": s.experiment_id, "parent_run_id": s.parent_run_id,
               "tracking_uri": tracker.uri, "trial_rows": trial_rows(study)}
    if s.multi:
        summary["pareto"] = [{"number": t.number, "val_acc": t.values[0], "macs_pruned": t.values[1],
                              "params": t.params} for t in sorted(study.best_trials, key=lambda t: t.values[1])]
    else:
        best = best_trial(study, s)
        if best is None:
            raise PruneBenchError(f"study {s.name}: no trial completed ({states}); see MLflow for the errors")
        allocation, protect, steps = allocation_of(best, s)
        summary["best"] = {"number": best.number, "val_acc": best.value, "allocation": allocation,
                           "protect": protect, "steps": steps}
        tracker.log_metrics(s.parent_run_id, {"best_val_acc": best.value, "best_trial": best.number})
        if final:
            summary.update(compare_with_untuned(s, best))
    tracker.log_metrics(s.parent_run_id, {f"trials_{k}": v for k, v in states.items()})
    out = study_report_dir(s.name)
    for plot in study_plots(study, s, out):
        tracker.log_artifact(s.parent_run_id, plot, "study")
    fileio.write_json(out / "summary.json", summary)
    tracker.log_artifact(s.parent_run_id, out / "summary.json", "study")
    return summary


def study_plots(study, s: Study, out: Path) -> list[Path]:
    """History, parameter importances, intermediate values (and the Pareto front) as PNGs; skips what cannot plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov
    out.mkdir(parents=True, exist_ok=True)
    plots = {"pareto_front": lambda: ov.plot_pareto_front(study, target_names=["val acc", "MACs"])} if s.multi else {
        "history": lambda: ov.plot_optimization_history(study),
        "intermediate_values": lambda: ov.plot_intermediate_values(study)}
    target = {"target": lambda t: t.values[0], "target_name": "val acc"} if s.multi else {}
    plots["param_importances"] = lambda: ov.plot_param_importances(study, **target)
    files = []
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = (ax if hasattr(ax, "savefig") else getattr(ax, "figure", None) or plt.gcf())
            path = out / f"{name}.png"
            with fileio.atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=80, bbox_inches="tight", format="png")
            files.append(path)
        except Exception as e:  # e.g. importances need two finished trials with varying parameters
            progress.current().message(f"study plot {name} skipped: {type(e).__name__}: {e}")
        finally:
            plt.close("all")
    return files


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
                     "speedup": t.user_attrs.get("speedup"), "macs_pruned": t.user_attrs.get("macs_pruned"),
                     "seconds": t.user_attrs.get("seconds_trial"),
                     "interrupted": bool(t.user_attrs.get("interrupted"))})
    return rows

