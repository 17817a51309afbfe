"""One study: what it needs besides the Optuna object, its name, its storage, its locks and trial counts, and the
checks that run before any study starts (see :mod:`flows.tune` for how workers share a study)."""
from __future__ import annotations

import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
from filelock import FileLock

from pruning import fileio
from pruning import check_prune_args
from pruning.errors import PruneBenchError

from .. import stages
from ..config import Params
from ..layout import TUNE_DIR, dataset_slug, study_report_dir, study_work_dir
from ..sweep import SweepContext
from ..tracking import KIND_STUDY, process_alive
from .sampler import make_pruner, make_sampler
from .storage import open_storage

PARAM_RATIO = "ratio."
WORKER_ATTR = "worker"


def check(params: Params, speedup: Optional[float]) -> list[str]:
    """Everything that can be wrong before a study starts; returns the layer-group names of the search space."""
    t = params.tune
    check_prune_args(speedup)
    if params.is_detection:
        raise PruneBenchError("tuning runs on classification models and datasets (YOLO: use `prunebench prune`)")
    stages.preflight(params)
    groups = stages.layer_group_names(params)
    if speedup is not None:
        reachable = stages.reachable_speedup(params, t.protect_range[0])
        if reachable < speedup:
            raise PruneBenchError(
                f"speedup {speedup:g}x is unreachable for {params.model.name}: with every layer group at the "
                f"smallest protection floor {t.protect_range[0]:g} it reaches {reachable:.2f}x; lower the target "
                f"or tune.protect_range")
    open_storage(t.storage)
    return groups


@dataclass
class Study:
    """What one study needs besides the Optuna object; a study is one method at one target."""
    sweep: SweepContext       # the invocation: params, dense model, data version, experiment, tags
    method: str
    speedup: Optional[float]  # None: multi-objective, no target
    key: str
    name: str
    groups: list
    source: str               # the checkpoint every trial prunes (dense, or the method's sparse-trained one)
    parent_run_id: Optional[str] = None  # this session's parent, set once the study has work to do

    # the invocation's values, read from its sweep context
    params = property(lambda self: self.sweep.params, doc="the validated params (Params)")
    experiment_id = property(lambda self: self.sweep.experiment_id, doc="the MLflow experiment")
    tags = property(lambda self: self.sweep.tags, doc="tags every run of the invocation carries")
    data = property(lambda self: self.sweep.data, doc="keys.data_version of the prepared data")

    @property
    def multi(self) -> bool:
        return self.speedup is None

    @property
    def work(self) -> Path:
        return study_work_dir(self.key)


def study_name(p: Params, method: str, speedup: Optional[float], key: str) -> str:
    target = "pareto" if speedup is None else f"{speedup:g}x"
    return f"{p.model.name.replace('/', '-')}-{dataset_slug(p.data.dataset)}-{method}-{target}-{key[:8]}"


def load_study(s: Study):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if s.multi else ["maximize"]
    study = optuna.create_study(study_name=s.name, storage=open_storage(s.params.tune.storage), load_if_exists=True,
                                directions=directions, sampler=make_sampler(s.params),
                                pruner=make_pruner(s.params, s.multi))
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else
                            optuna.study.StudyDirection.MINIMIZE for d in directions]:
            raise PruneBenchError(f"study {s.name!r} exists with other objectives; pick another --study-name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is flagged experimental
        study.set_metric_names(["val_acc", "macs_pruned"] if s.multi else ["val_acc"])  # optuna-dashboard's names
    for k, v in {"method": s.method, "speedup": s.speedup, "groups": s.groups, "key": s.key,
                 "model": s.params.model.name, "dataset": s.params.data.dataset}.items():
        study.set_user_attr(k, v)
    return study


def recover_interrupted(study, s: Study, tracker) -> int:
    """Trials left RUNNING by a killed process on this machine: mark them failed, queue their allocation again.

    Called under the study's slot lock, so a trial another worker has just created (its worker not yet recorded)
    is never taken for an interrupted one.
    """
    from optuna.trial import TrialState
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if process_alive(t.user_attrs.get(WORKER_ATTR, "")):
            continue  # still running here, or another machine's worker
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params and not t.user_attrs.get("requeued"):
            study.enqueue_trial(t.params, user_attrs={"requeued": True}, skip_if_exists=False)
        for run in tracker.runs(s.experiment_id, f"tags.optuna_trial_id = '{t._trial_id}' and tags.sweep_key = "
                                                 f"'{s.key}'"):
            if run.info.status == "RUNNING":
                tracker.finish(run.info.run_id, "KILLED")
        n += 1
    return n


def finished(study) -> int:
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def running(study, this_host_only: bool = False) -> list:
    """Trials a live worker is running (another machine's count as live: they cannot be checked from here)."""
    from optuna.trial import TrialState
    host = socket.gethostname()
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR, "")
        if process_alive(worker) and (not this_host_only or worker.partition(":")[0] == host):
            found.append(t)
    return found


def taken(study) -> int:
    """The slots of ``tune.trials`` already spoken for: finished trials and those live workers are running."""
    return finished(study) + len(running(study))


def slot_lock(s: "Study") -> FileLock:
    """Held while a worker counts the study's trials and creates its next one (and while it recovers)."""
    return FileLock(s.work / "slots.lock")


def finish_lock(s: "Study") -> FileLock:
    """Held by the one worker finishing the study: untuned trial, final finetune, plots, summary."""
    return FileLock(s.work / "finish.lock")


def setup_lock() -> FileLock:
    """Held while preparing data, the dense baseline and sparse checkpoints that workers started together share."""
    return FileLock(TUNE_DIR / "setup.lock")


def session_parent(s: Study, tracker) -> str:
    """This invocation's parent run: the one of workers running the study now, else a new one (kind ``study``)."""
    t = s.params.tune
    return tracker.join_parent(s.experiment_id, s.key, f"tune-{s.name}", {
        "method": s.method, "speedup_target": s.speedup, "objective": "multi" if s.multi else "single",
        "layer_groups": s.groups, "ratio_range": t.ratio_range, "protect_range": t.protect_range,
        "steps_choices": t.steps, "tune_epochs": t.epochs, "sampler": t.sampler, "pruner": t.pruner,
        "storage": t.storage, "optuna_study": s.name, "model": s.params.model.name, "dataset": s.params.data.dataset,
        "seed": s.params.seed}, s.tags, KIND_STUDY)


def trial_states(study) -> dict:
    return {st.name.lower(): len(study.get_trials(deepcopy=False, states=(st,)))
            for st in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                       optuna.trial.TrialState.FAIL)}


def already_done(study, s: Study, final: bool) -> Optional[dict]:
    """The study's summary when nothing changed since it was written (no trial to run, none running, the final
    comparison done when asked for): a rerun then logs no run at all."""
    path = study_report_dir(s.name) / "summary.json"
    if running(study) or not path.is_file():
        return None
    summary = fileio.read_json(path)
    if summary.get("trials") != trial_states(study) or (final and not s.multi and "tuned" not in summary):
        return None
    return summary

