"""Optuna tuning of the pruning-ratio allocation, one study per method (``prunebench tune``).

A trial samples a ratio per layer group (see :mod:`pruning.allocation`), the protection floor and the number of
iterative steps, prunes the method's (sparse-trained) dense checkpoint with that allocation and finetunes briefly.
Single-objective mode scales the sampled allocation until the MACs speedup target is met, so every trial is
compared at the same cost, and maximises validation accuracy (the study's metric name: ``val_acc``); it is
reported to the pruner after every finetune epoch (steps 1..``tune.epochs``), so the pruner (MedianPruner by
default) stops poor trials early, judged against what earlier trials reached at the same epoch.  The accuracy right
after pruning (before any finetune: close to chance at high targets) is logged as ``val_acc_pruned``, not reported.
Multi-objective mode takes the ratios as absolute, sets no target and maximises accuracy while minimising MACs: the
result is a Pareto front.

The best allocation then gets the full finetune (``tune.final_epochs``, default ``finetune.epochs``) and is
evaluated on the test split beside the untuned trial at the same speedup (the benchmark's own trial, shared with
its cache); ``reports/tuned.json`` carries it into the leaderboard.

Studies live in Optuna storage (``sqlite:///optuna.db`` by default; ``journal:<file>`` or a PostgreSQL URL for
several workers on one study) under a name derived from everything the results depend on, so rerunning the same
command resumes the study: finished trials are kept, a trial interrupted by a kill is marked failed and its
allocation queued again, and the study is topped up to ``tune.trials`` finished trials.  MLflow holds a parent run
per invocation that does work (workers started together share it: see :meth:`Tracker.join_parent`) and a child run
per trial it ran (sampled ratios as params, per-epoch accuracy as step metrics), with the study's plots as
artifacts.  An invocation with nothing left to do logs no run and names the parent that holds the results.

Parallel workers: several ``prunebench tune`` processes on one study (a shared storage) split its work.

* ``tune.trials`` counts the study's finished (complete or pruned) trials, whatever the number of workers.  A
  worker starts a trial only while the finished trials plus those other live workers are running stay below it;
  that count and the new trial's creation happen under a file lock in the study's work folder, so workers on one
  machine stop at exactly ``tune.trials``.  (Optuna's ``MaxTrialsCallback`` could only stop a worker *after* its
  trial, letting each other worker overshoot by one.)  Workers on other machines (PostgreSQL) do not share that
  lock: two of them may start the last trial together, so the total can exceed ``tune.trials`` by at most the
  number of workers minus one.  A trial that fails frees its slot (its worker then runs another); one left
  RUNNING by a worker killed on another machine holds its slot until a ``tune`` there recovers it.  The locks
  are files under ``models/tune/``: they coordinate the workers that share one project folder.
* Sampling: every trial gets a fresh sampler seeded from ``params.seed`` and its trial number.  Trial numbers are
  unique in a study, so workers and resumed runs never repeat each other's draws, and a study stays reproducible
  from its inputs: with the random sampler trial *n* draws the same allocation whichever worker runs it; TPE and
  NSGA-II also depend on the trials finished before it, which with several workers depends on timing.
* The end of a study (the untuned trial, the best allocation's full finetune, plots, summary) runs one worker at a
  time under a second lock, after waiting for the trials this machine's other workers are running: every worker
  sees the same best trial, the first does the work and the others reuse its finished results.
* A trial RUNNING in Optuna (or MLflow) counts as interrupted only when its process (``host:pid``) is gone from
  this machine; a live worker's trial and run are never touched.
"""
from __future__ import annotations

import json
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import pipeline, stages
from .config import Params
from .naming import from_params
from .pipeline import FLOW, TASK, Trial  # noqa: E402  (pipeline sets Prefect's defaults first)
from .tracking import process_alive, store_lock, worker_id  # noqa: E402
from pruning import fileio  # noqa: E402
from pruning.errors import PruneBenchError, first_line  # noqa: E402
from pruning.fileio import write_json  # noqa: E402
from prefect import flow, task  # noqa: E402
import optuna  # noqa: E402
from filelock import FileLock  # noqa: E402

TUNE_DIR = Path("models/tune")
TUNED_PATH = Path("reports/tuned.json")
STUDY_DIR = Path("reports/tune")
PARAM_RATIO = "ratio."
WORKER_ATTR = "worker"


# --------------------------------------------------------------------------- checks before any study starts
def open_storage(url: str):
    """Optuna storage for ``sqlite:///...``, ``postgresql://...`` (any SQLAlchemy URL) or ``journal:<file>``."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend
            path = Path(url.split(":", 1)[1])
            if not path.parent.is_dir():
                raise OSError(f"folder {path.parent} does not exist")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise ValueError("expected sqlite:///<file>, postgresql://user:pass@host/db or journal:<file>")
        with warnings.catch_warnings(), store_lock(url):  # two workers creating one SQLite schema collide
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as e:  # optuna/SQLAlchemy raise many types (ArgumentError, OperationalError, ImportError, ...)
        reason = first_line(e)
        raise PruneBenchError(f"cannot open the Optuna storage {url!r}: {reason}")


def _engine_kwargs(url: str) -> dict:
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def check(params: Params, speedup: Optional[float]) -> list[str]:
    """Everything that can be wrong before a study starts; returns the layer-group names of the search space."""
    t = params.tune
    if speedup is not None and not speedup > 1:
        raise PruneBenchError(f"speedup must be > 1 (dense MACs / pruned MACs), got {speedup:g}")
    if stages.is_detection(params):
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


# --------------------------------------------------------------------------- the study
@dataclass
class Study:
    """What one study needs besides the Optuna object; a study is one method at one target."""
    params: Params
    method: str
    speedup: Optional[float]  # None: multi-objective, no target
    key: str
    name: str
    groups: list
    source: str               # the checkpoint every trial prunes (dense, or the method's sparse-trained one)
    experiment_id: str
    parent_run_id: Optional[str]  # this session's parent, set once the study has work to do
    tags: dict
    data: Optional[dict] = None   # pipeline.data_version: logged as every trial's dataset input

    @property
    def multi(self) -> bool:
        return self.speedup is None

    @property
    def work(self) -> Path:
        return TUNE_DIR / self.key


def study_key(p: Params, method: str, speedup: Optional[float], dense_hash: str, data_hash: str) -> str:
    """Everything a trial's outcome depends on: a change starts a new study, the same command resumes one."""
    search = p.tune.model_dump(exclude={"methods", "speedup", "trials", "final_epochs", "storage", "timeout"})
    return pipeline.make_key("study", pipeline.sparse_key(p, method, dense_hash, data_hash), method, speedup,
                             search, p.prune.calibration_batches, p.finetune.model_dump(), p.seed,
                             p.data.batch_size)


def study_name(p: Params, method: str, speedup: Optional[float], key: str) -> str:
    target = "pareto" if speedup is None else f"{speedup:g}x"
    return f"{p.model.name.replace('/', '-')}-{stages.dataset_slug(p.data.dataset)}-{method}-{target}-{key[:8]}"


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Samples each trial with a fresh sampler seeded from ``seed`` and the trial's number (see the module doc).

    One seed for a whole run would make every worker, and every resumed run, draw the same sequence; the trial
    number is unique in the study and known before anything is sampled.  Samplers keep their state between trials
    in the study's storage (TPE reads the finished trials, NSGA-II its generations), so a fresh one per trial
    samples as the long-lived one would.
    """

    def __init__(self, make, seed: int):
        self._make = make          # seed -> a sampler
        self._seed = seed
        self._by_trial: dict = {}  # trial number -> its sampler, until the trial ends

    def for_trial(self, number: int):
        if number not in self._by_trial:
            self._by_trial[number] = self._make(int(pipeline.make_key("sampler", self._seed, number)[:8], 16))
        return self._by_trial[number]

    def infer_relative_search_space(self, study, trial):
        return self.for_trial(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.for_trial(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.for_trial(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.for_trial(trial.number).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.for_trial(trial.number).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's seed is fixed by its number."""


def _sampler(p: Params) -> TrialSeededSampler:
    kind = p.tune.sampler
    if kind == "random":
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), p.seed)
    if kind == "nsga2":
        return TrialSeededSampler(lambda seed: optuna.samplers.NSGAIISampler(seed=seed), p.seed)

    def tpe(seed: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(5, p.tune.trials))
    return TrialSeededSampler(tpe, p.seed)


def _pruner(p: Params, multi: bool):
    if multi or p.tune.pruner == "none":  # Optuna's pruners work on a single objective only
        return optuna.pruners.NopPruner()
    if p.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=p.tune.epochs)
    # from the first finetune epoch on, once three trials have finished
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def load_study(s: Study):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if s.multi else ["maximize"]
    study = optuna.create_study(study_name=s.name, storage=open_storage(s.params.tune.storage), load_if_exists=True,
                                directions=directions, sampler=_sampler(s.params),
                                pruner=_pruner(s.params, s.multi))
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


# --------------------------------------------------------------------------- one trial
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


def with_prune(p: Params, protect: float, steps: int) -> Params:
    return p.model_copy(update={"prune": p.prune.model_copy(update={"protect": protect, "steps": steps,
                                                                      "scope": "protected"})})


@task(name="tune-trial", task_run_name="tune[{s.method} #{number}]", **TASK)
def trial_task(s: Study, number: int, trial, allocation: dict, protect: float, steps: int, run_id: str) -> dict:
    """Prune with the sampled allocation, finetune briefly; val accuracy reported to the pruner after every epoch
    (step = epoch), and judged by it after each but the last (a trial that ran to the end completes)."""
    tracker = pipeline._tracker(pipeline._uri(s.params))
    p = with_prune(s.params, protect, steps)
    work = s.work / f"trial-{number}"
    pr = stages.prune_stage(p, s.method, s.speedup, "protected", Path(s.source), work / "pruned.pt",
                            allocation=allocation, eval_split="val")
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
        pipeline.REPORTER.epoch(f"trial {number}", s.params.tune.epochs, row)
        if s.multi:
            return
        trial.report(row["val_acc"], row["epoch"])  # every epoch, the last too: later trials compare with it
        if row["epoch"] < s.params.tune.epochs and trial.should_prune():
            raise _Stop(row["epoch"])
    try:
        ft = stages.finetune_stage(p, work / "pruned.pt", work / "finetuned.pt", s.params.tune.epochs, on_epoch)
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
        pipeline.REPORTER.trial_start(f"{s.method} trial {trial.number}")
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
        pipeline.REPORTER.trial_end(f"{s.method} trial {trial.number}", _line(result))
        if s.speedup is not None:  # feasible when the target is met (always, unless the floors stop the scaling)
            trial.set_constraint("speedup_shortfall", s.speedup - result["speedup"])
        if result["outcome"] == "infeasible":
            raise optuna.TrialPruned(f"target {s.speedup:g}x not reached ({result['speedup']:.2f}x)")
        if result["outcome"] == "pruned":
            raise optuna.TrialPruned(f"stopped at step {result['pruned_at']}")
        trial.set_user_attr("val_acc", result["val_acc"])
        return (result["val_acc"], result["macs_pruned"]) if s.multi else result["val_acc"]
    return run


def _line(result: dict) -> dict:
    """A trial's outcome for the progress reporters."""
    cost = f"speedup {result['speedup']:.2f}x, val acc after pruning {result['val_acc_pruned']:.2f}"
    if result["outcome"] == "complete":
        return {"status": "ok", "line": f"val acc {result['val_acc']:.2f} ({cost})"}
    where = f" at step {result['pruned_at']}" if "pruned_at" in result else ""
    return {"status": result["outcome"], "line": f"{result['outcome']}{where} ({cost})"}


# --------------------------------------------------------------------------- after the study
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
def final_task(s: Study, allocation: dict, protect: float, steps: int, epochs: int) -> dict:
    """The best allocation with the full finetune, evaluated on the test split like a benchmark trial."""
    p = with_prune(s.params, protect, steps)
    work = s.work / "final"
    pr = stages.prune_stage(p, s.method, s.speedup, "protected", Path(s.source), work / "pruned.pt",
                            allocation=allocation)
    ft = stages.finetune_stage(p.model_copy(update={"finetune": p.finetune.model_copy(update={"epochs": epochs})}),
                               work / "pruned.pt", work / "finetuned.pt", epochs,
                               pipeline._on_epoch(f"final finetune {s.method}", epochs))
    ev = stages.evaluate_stage(p, work / "finetuned.pt")
    pr.pop("channels", None)
    return {**pr, **ft, "acc_finetuned": ev["acc"], "latency_pruned_b1": ev["latency_b1"], "eval": ev,
            "checkpoint": str(work / "finetuned.pt")}


def untuned(s: Study, tracker, dense: Path, dense_hash: str, data: dict) -> tuple[dict, dict]:
    """The benchmark's own trial at this speedup (scope from params.yaml), cached when the benchmark ran it,
    and the dense model's evaluation."""
    p = s.params
    dense_eval = pipeline.evaluate_dense(p, dense, dense_hash, data, str(pipeline.TRIALS_DIR))
    ctx = pipeline.SweepContext(p, str(dense), dense_hash, dense_eval, data, s.experiment_id, s.parent_run_id,
                                tracker.uri, str(pipeline.TRIALS_DIR), s.tags)
    return pipeline.run_trial(ctx, Trial(s.method, float(s.speedup), p.prune.scope)), dense_eval


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
            pipeline.REPORTER.message(f"study plot {name} skipped: {type(e).__name__}: {e}")
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


def record_tuned(entry: dict, path: Path = TUNED_PATH) -> None:
    """Add (or replace) this study's tuned trial in ``reports/tuned.json``, which the leaderboard reads.

    Read, changed and written under a lock: workers finishing different studies share the file.
    """
    with FileLock(TUNE_DIR / "tuned.lock"):
        tuned = json.loads(path.read_text()) if path.is_file() else {}
        tuned[f"{entry['model']}/{entry['dataset']}/{entry['method']}@{entry['speedup_target']:g}x"] = entry
        write_json(path, tuned)


# --------------------------------------------------------------------------- the flow
@flow(name="tune", flow_run_name=from_params("tune"), **FLOW)
def tune_flow(params: dict, methods: list, speedup: Optional[float] = None, trials: Optional[int] = None,
              name: Optional[str] = None, final: bool = True, groups: Optional[list] = None) -> list[dict]:
    """A study per method; ``speedup`` None with ``tune.multi_objective`` gives Pareto fronts.

    ``groups`` is what :func:`check` returned when the caller already checked these params (the CLI does, before
    anything starts); a scheduled run checks here.
    """
    from .tracking import experiment_name, source_tags
    p = Params.model_validate(params)
    multi = p.tune.multi_objective
    target = None if multi else float(speedup or p.tune.speedup)
    groups = groups or check(p, target)
    with setup_lock():  # workers started together on a fresh project prepare and pretrain once
        dense = pipeline.baseline(p)
    tracker = pipeline._tracker(pipeline._uri(p))
    data = pipeline.data_version(p)
    dense_hash = pipeline.file_digest(dense)
    exp = tracker.experiment(experiment_name(stages.dataset_slug(p.data.dataset), p.model.name))
    tags = {**source_tags("tune"), "dataset_version": data["digest"], "dataset": p.data.dataset,
            "dvc_md5": data["dvc_md5"], "prefect_flow_run_id": pipeline._flow_run_id(),
            "code_version": pipeline.code_version()}
    results = []
    for method in methods:
        key = study_key(p, method, target, dense_hash, data["content"])
        sname = name if name and len(methods) == 1 else study_name(p, method, target, key)
        with setup_lock():
            sp = pipeline.sparsified(p, method, str(dense), dense_hash, data["content"], str(pipeline.TRIALS_DIR))
        s = Study(p, method, target, key, sname, groups, sp["checkpoint"], exp, None, tags, data)
        results.append(run_study(s, tracker, dense, dense_hash, data, trials or p.tune.trials, final and not multi))
    return results


def session_parent(s: Study, tracker) -> str:
    """This invocation's parent run: the one of workers running the study now, else a new one (kind ``study``)."""
    from .tracking import KIND_STUDY
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
    path = STUDY_DIR / s.name / "summary.json"
    if running(study) or not path.is_file():
        return None
    summary = fileio.read_json(path)
    if summary.get("trials") != trial_states(study) or (final and not s.multi and "tuned" not in summary):
        return None
    return summary


def run_study(s: Study, tracker, dense: Path, dense_hash: str, data: dict, trials: int, final: bool) -> dict:
    """Top the study up to ``trials`` finished trials (shared with any other workers), then finish it."""
    study = load_study(s)
    with slot_lock(s):
        recovered = recover_interrupted(study, s, tracker)
        todo = max(0, trials - taken(study))
        done = None if todo or recovered else already_done(study, s, final)
        if done is None:  # under the slot lock: a worker starting now sees this one's parent
            s.parent_run_id = session_parent(s, tracker)
    if done is not None:
        pipeline.REPORTER.message(f"study {s.name}: nothing to do, {finished(study)} finished trial(s); results "
                                  f"under MLflow parent run {done.get('parent_run_id')}; no new run logged")
        return done
    pipeline.REPORTER.message(f"study {s.name}: {finished(study)} finished trial(s) in {s.params.tune.storage}"
                     + (f", {recovered} interrupted trial(s) queued again" if recovered else "")
                     + f"; running {todo} more")
    pipeline.REPORTER.sweep_start(todo, f"study {s.method}")
    start = time.perf_counter()
    try:
        run_trials(study, s, tracker, trials, todo)
        seconds = time.perf_counter() - start
        wait_for_workers(study)
        with finish_lock(s):  # one worker at a time; the next finds the untuned trial and final finetune done
            summary = finish_study(study, s, tracker, dense, dense_hash, data, seconds, final)
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
        pipeline.REPORTER.message(f"trial {trial.number} failed: {type(e).__name__}: {e}")
    except BaseException:  # Ctrl-C: the trial failed, the run stops
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, values)


def wait_for_workers(study, poll: float = 2.0) -> None:
    """Until this machine's other workers have ended their trials, so every worker picks the same best trial."""
    others = running(study, this_host_only=True)
    if others:
        pipeline.REPORTER.message(f"waiting for {len(others)} trial(s) other workers are running")
    while others:
        time.sleep(poll)
        others = running(study, this_host_only=True)


def finish_study(study, s: Study, tracker, dense: Path, dense_hash: str, data: dict, seconds: float,
                 final: bool) -> dict:
    """Summary, best trial, the final comparison, plots on the session's parent run (its last worker ends it)."""
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
            summary.update(compare_with_untuned(s, tracker, best, dense, dense_hash, data))
    tracker.log_metrics(s.parent_run_id, {f"trials_{k}": v for k, v in states.items()})
    out = STUDY_DIR / s.name
    for plot in study_plots(study, s, out):
        tracker.log_artifact(s.parent_run_id, plot, "study")
    write_json(out / "summary.json", summary)
    tracker.log_artifact(s.parent_run_id, out / "summary.json", "study")
    return summary


def compare_with_untuned(s: Study, tracker, best, dense: Path, dense_hash: str, data: dict) -> dict:
    """Full finetune of the best allocation, the untuned trial beside it, both on test; into reports/tuned.json."""
    p = s.params
    epochs = p.tune.final_epochs or p.finetune.epochs
    allocation, protect, steps = allocation_of(best, s)
    pipeline.REPORTER.sweep_start(1, "untuned trial at the same speedup")
    plain, dense_eval = untuned(s, tracker, dense, dense_hash, data)
    final_key = f"{s.key}:final:{best.number}"
    done = s.work / "final" / f"result-{best.number}.json"
    finetuned = tracker.finished_trial(s.experiment_id, final_key) if done.is_file() else None
    if finetuned:  # this best was finetuned already (by another worker, or an earlier session: linked here)
        tracker.link_trial(s.experiment_id, s.parent_run_id, finetuned)
        entry = fileio.read_json(done)
        record_tuned(entry)
        return _comparison(entry, plain)
    tracker.discard_unfinished(s.experiment_id, final_key)  # an interrupted final finetune: KILLED, kept as history
    run_id = tracker.start_child(s.experiment_id, s.parent_run_id, f"{s.method}@{s.speedup:g}x tuned",
                                 final_key, {"method": s.method, "speedup_target": s.speedup,
                                                    "scope": "tuned", "protect": protect,
                                                    "iterative_steps": steps, "finetune_epochs": epochs,
                                                    "best_trial": best.number,
                                                    **{f"{PARAM_RATIO}{g}": r for g, r in allocation.items()}},
                                 {**s.tags, "sweep_key": s.key, "tuned": "true"})
    try:
        final = final_task(s, allocation, protect, steps, epochs)
    except Exception as e:
        tracker.fail(run_id, f"{type(e).__name__}: {e}")
        raise
    lb = p.evaluate.latency_batch
    entry = {
        "status": "ok", "method": s.method, "scope": "tuned", "speedup_target": s.speedup, "model": p.model.name,
        "dataset": p.data.dataset, "study": s.name, "best_trial": best.number, "best_val_acc": best.value,
        "speedup": final["speedup"], "target_reached": final["target_reached"], "acc_dense": dense_eval["acc"],
        "acc_pruned": final["acc_pruned"], "acc_finetuned": final["acc_finetuned"],
        "macs_dense": final["macs_dense"], "macs_pruned": final["macs_pruned"],
        "params_dense": final["params_dense"], "params_pruned": final["params_pruned"],
        "latency_dense_b1": dense_eval["latency_b1"], "latency_pruned_b1": final["latency_pruned_b1"],
        **stages.compare(dense_eval, final["eval"], lb),
        "seconds_prune": final["seconds_prune"], "seconds_finetune": final["seconds_finetune"],
        "seconds_sparsify": 0.0, "seconds_total": final["seconds_prune"] + final["seconds_finetune"],
        "allocation": allocation, "kept": final["kept_by_group"], "protect": protect, "steps": steps,
        "finetune_history": final["finetune_history"], "checkpoint": final["checkpoint"],
        "untuned": {k: plain.get(k) for k in ("status", "scope", "acc_finetuned", "speedup", "macs_pruned",
                                               "params_pruned", "run_id", "error")},
    }
    tracker.log_metrics(run_id, {k: entry[k] for k in pipeline.METRICS if isinstance(entry.get(k), (int, float))})
    tracker.log_history(run_id, "finetune", entry["finetune_history"])
    tracker.log_artifact(run_id, final["checkpoint"], "checkpoint")
    tracker.finish(run_id)
    write_json(done, entry)
    record_tuned(entry)
    comparison = _comparison(entry, plain)
    tracker.log_metrics(s.parent_run_id, {k: v for k, v in comparison.items() if isinstance(v, (int, float))})
    return comparison


def _comparison(entry: dict, plain: dict) -> dict:
    return {"tuned": entry, "untuned": entry["untuned"], "acc_tuned": entry["acc_finetuned"],
            "acc_untuned": plain.get("acc_finetuned"), "macs_tuned": entry["macs_pruned"],
            "macs_untuned": plain.get("macs_pruned")}
