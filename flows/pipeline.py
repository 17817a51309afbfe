"""Prefect flows: prepare, pretrain, benchmark, leaderboard.

Tasks hand each other *files* (checkpoint and data paths) plus the validated params, never in-memory models, so
retries, resumes and remote workers behave.  Every task output is a checkpoint plus a small JSON written after it;
a task whose JSON exists returns it without recomputing.  A trial (sparsify -> prune -> finetune -> evaluate) lives
in ``models/trials/<trial_key>/``, its key a hash of the method, speedup, scope, every parameter it depends on, the
dense checkpoint, the data content and the ``pruning`` source code.  A trial whose ``result.json`` exists and whose
MLflow child run is FINISHED is skipped on a rerun, so a killed sweep resumes without training anything twice and
without duplicate runs.  The sparsify output of a method is cached by its own key and shared by all its speedups.

Prefect needs no server: without ``PREFECT_API_URL`` it runs a temporary local one; with it, flows report to that
server (``prefect server start``).  ``benchmark.concurrency`` > 1 runs methods side by side on threads, and
``benchmark.dask_address`` (``local`` or ``tcp://scheduler:8786``) runs them on a Dask cluster via prefect-dask.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import server as _server  # noqa: E402,F401  (sets Prefect's quiet defaults before it is imported)
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from pruning import fileio  # noqa: E402
from pruning.errors import PruneBenchError  # noqa: E402

from . import stages  # noqa: E402
from .config import Params  # noqa: E402
from .naming import from_params  # noqa: E402

class _UserErrorsStayOneLine(logging.Filter):
    """Drop Prefect's ERROR records (with their tracebacks) for a PruneBenchError: bad input raised inside a flow
    reaches the CLI, which prints it as one line; Prefect still records the failed state on the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, PruneBenchError) or "PruneBenchError" in record.getMessage())


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_UserErrorsStayOneLine())

TRIALS_DIR = Path("models/trials")
DENSE_PATH = Path("models/dense.pt")
RESULTS_PATH = Path("reports/benchmark.json")
REPORTS_DIR = Path("reports")
TASK = dict(cache_policy=NO_CACHE, persist_result=False)
FLOW = dict(persist_result=False, log_prints=False, validate_parameters=False)


# --------------------------------------------------------------------------- progress
class Reporter:
    """Progress hooks; the CLI installs a visible one, the default is silent."""

    def sweep_start(self, total: int, label: str = "benchmark") -> None: ...
    def trial_start(self, name: str) -> None: ...
    def trial_end(self, name: str, result: dict) -> None: ...
    def epoch(self, label: str, total: int, row: dict) -> None: ...
    def message(self, text: str) -> None: ...


REPORTER: Reporter = Reporter()


def set_reporter(reporter: Reporter) -> None:
    global REPORTER
    REPORTER = reporter


def _on_epoch(label: str, total: int):
    return lambda row: REPORTER.epoch(label, total, row)


# --------------------------------------------------------------------------- versions and keys
_DIGESTS: dict = {}


def file_digest(path: str | Path) -> str:
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def dir_digest(path: str | Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def dvc_md5(path: str | Path, lock: Path = Path("dvc.lock")) -> Optional[str]:
    """The md5 DVC recorded in dvc.lock for an output path, if any (logged beside the digest, never as it)."""
    if not lock.is_file():
        return None
    import yaml
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return None
    want = Path(path).as_posix().rstrip("/")
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if Path(str(out.get("path", ""))).as_posix().rstrip("/") == want:
                return out.get("md5")
    return None


def data_version(params: Params) -> dict:
    """The prepared data's content hash: in trial keys, and (its first 32 characters) the dataset digest MLflow
    shows.  Computed from the prepared files themselves, so data prepared by ``prunebench prepare`` and by
    ``dvc repro`` has one digest; DVC's own md5, when dvc.lock lists the folder, is kept beside it."""
    path = stages.prepared_path(params)
    content = dir_digest(path)
    return {"path": path.as_posix(), "content": content, "dvc_md5": dvc_md5(path), "digest": content[:32]}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the sources that determine trial results (the ``pruning`` package and the stage functions)."""
    import pruning
    root = Path(pruning.__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")) + [Path(stages.__file__)]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def make_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, data) -> None:
    fileio.write_json(path, data)


def _read_json(path: Path):
    return fileio.read_json(path)


def _once(work: str, step: str, compute) -> dict:
    """A step's result, computed once per trial folder: a rerun after a kill reuses the finished step's file."""
    done = Path(work) / f"{step}.json"
    if done.is_file():
        return _read_json(done)
    result = compute()
    _write_json(done, result)
    return result


@dataclass(frozen=True)
class Trial:
    method: str
    speedup: float
    scope: str

    @property
    def name(self) -> str:
        return f"{self.method}@{self.speedup:g}x/{self.scope}"


def trials_of(params: Params) -> list[Trial]:
    b = params.benchmark
    return [Trial(m, float(s), sc) for m in b.methods for sc in b.scopes for s in b.speedups]


def sparse_key(params: Params, method: str, dense_hash: str, data_hash: str) -> str:
    import pruning
    pair = pruning.resolve(method)
    sp = params.sparsify.model_dump() if pair.sparsifier else None
    return make_key("sparsify", pair.criterion.name, pair.sparsifier.name if pair.sparsifier else None, sp,
                    params.seed, params.data.batch_size, dense_hash, data_hash, code_version())


def trial_key(params: Params, trial: Trial, dense_hash: str, data_hash: str) -> str:
    prune = params.prune.model_dump(exclude={"scope"})
    return make_key("trial", sparse_key(params, trial.method, dense_hash, data_hash), trial.method,
                    float(trial.speedup), trial.scope, prune, params.finetune.model_dump(),
                    params.evaluate.model_dump(), params.seed, params.data.batch_size)


# --------------------------------------------------------------------------- tasks
@task(name="prepare", **TASK)
def prepare_task(params: Params) -> str:
    return str(stages.prepare(params))


@task(name="pretrain", **TASK)
def pretrain_task(params: Params, out: Optional[str] = None) -> str:
    """Train the dense baseline into ``out`` (or the per-params cache when ``out`` is None)."""
    on_epoch = _on_epoch("pretrain", params.pretrain.epochs)
    if out is None:
        return str(stages.dense_baseline(params, on_epoch=on_epoch))
    stages.pretrain(params, Path(out), on_epoch=on_epoch)
    return out


@task(name="evaluate-dense", **TASK)
def evaluate_dense_task(params: Params, dense: str, out: str) -> dict:
    if Path(out).is_file():
        return _read_json(Path(out))
    metrics = stages.evaluate_stage(params, Path(dense))
    _write_json(Path(out), metrics)
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
                                       _on_epoch(f"sparsify {method}", params.sparsify.epochs))
        return {**result, "checkpoint": str(out)}
    return _once(work, "sparsify", compute)


def sparsified(p: Params, method: str, dense: str, dense_hash: str, data_hash: str, trials_dir: str) -> dict:
    """The method's sparse-trained checkpoint, cached by its own key (shared by its speedups and tuning trials)."""
    work = Path(trials_dir) / "sparse" / sparse_key(p, method, dense_hash, data_hash)
    return sparsify_task(p, method, str(dense), str(work))


@task(name="prune", task_run_name="prune[{method}@{speedup}x/{scope}]", **TASK)
def prune_task(params: Params, method: str, speedup: float, scope: str, source: str, work: str) -> dict:
    out = Path(work) / "pruned.pt"

    def compute():
        result = stages.prune_stage(params, method, speedup, scope, Path(source), out)
        _write_channels(Path(work), result.pop("channels", []))
        return {**result, "checkpoint": str(out)}
    return _once(work, "prune", compute)


@task(name="finetune", task_run_name="finetune[{name}]", **TASK)
def finetune_task(params: Params, name: str, source: str, work: str) -> dict:
    out = Path(work) / "finetuned.pt"
    epochs = params.finetune.epochs

    def compute():
        if epochs > 0:
            result = stages.finetune_stage(params, Path(source), out, epochs, _on_epoch(f"finetune {name}", epochs))
        else:
            fileio.copy_file(source, out)
            result = {"seconds_finetune": 0.0, "finetune_history": []}
        return {**result, "checkpoint": str(out)}
    return _once(work, "finetune", compute)


@task(name="evaluate", task_run_name="evaluate[{name}]", **TASK)
def evaluate_task(params: Params, name: str, checkpoint: str, work: str) -> dict:
    return _once(work, "evaluate", lambda: stages.evaluate_stage(params, Path(checkpoint)))


def _write_channels(work: Path, channels: list) -> None:
    import csv
    import io
    _write_json(work / "channels.json", channels)
    if channels:
        cols = list(dict.fromkeys(k for row in channels for k in row))
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=cols)
        w.writeheader()
        w.writerows(channels)
        fileio.write_text(work / "channels.csv", text.getvalue())


# --------------------------------------------------------------------------- one trial
@dataclass
class SweepContext:
    """What every trial needs; picklable (Dask) and free of live objects."""
    params: Params
    dense: str
    dense_hash: str
    dense_eval: dict
    data: dict
    experiment_id: str
    parent_run_id: Optional[str]
    tracking_uri: str
    trials_dir: str
    tags: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _tracker(uri: str):
    from .tracking import Tracker
    return Tracker(uri)


def trial_params(ctx: SweepContext, trial: Trial, key: str) -> dict:
    import pruning
    p = ctx.params
    pair = pruning.resolve(trial.method)
    return {
        "method": trial.method, "criterion": pair.criterion.name,
        "sparsifier": pair.sparsifier.name if pair.sparsifier else "none", "scope": trial.scope,
        "speedup_target": trial.speedup, "protect": p.prune.protect, "iterative_steps": p.prune.steps,
        "calibration_batches": p.prune.calibration_batches,
        "calibration_size": p.prune.calibration_batches * p.data.batch_size,
        **{f"finetune_{k}": v for k, v in p.finetune.model_dump().items()},
        **({f"sparsify_{k}": v for k, v in p.sparsify.model_dump().items()} if pair.sparsifier else {}),
        "batch_size": p.data.batch_size, "seed": p.seed, "model": p.model.name, "dataset": p.data.dataset,
        "dataset_digest": ctx.data["digest"], "git_rev": ctx.tags.get("git_rev"),
        "prefect_flow_run_id": ctx.tags.get("prefect_flow_run_id"), "trial_key": key,
    }


def _assemble(trial: Trial, ctx: SweepContext, sp: dict, pr: dict, ft: dict, ev: dict) -> dict:
    lb = ctx.params.evaluate.latency_batch
    seconds = {"seconds_sparsify": sp["seconds_sparsify"], "seconds_prune": pr["seconds_prune"],
               "seconds_finetune": ft["seconds_finetune"], "seconds_evaluate": ev["seconds_evaluate"]}
    return {
        "status": "ok", "method": trial.method, "scope": trial.scope, "speedup_target": trial.speedup,
        "speedup": pr["speedup"], "target_reached": pr["target_reached"], "warnings": pr.get("warnings", []),
        "acc_dense": ctx.dense_eval["acc"], "acc_pruned": pr["acc_pruned"], "acc_finetuned": ev["acc"],
        "macs_dense": pr["macs_dense"], "macs_pruned": pr["macs_pruned"],
        "params_dense": pr["params_dense"], "params_pruned": pr["params_pruned"],
        "latency_dense_b1": ctx.dense_eval["latency_b1"], "latency_pruned_b1": ev["latency_b1"],
        **stages.compare(ctx.dense_eval, ev, lb),
        "steps_taken": pr["steps_taken"], "calibration_samples": pr["calibration_samples"],
        "seconds_calibrate": pr["seconds_calibrate"], **seconds, "seconds_total": sum(seconds.values()),
        "sparsify_history": sp.get("sparsify_history", []), "finetune_history": ft.get("finetune_history", []),
        "checkpoint": ft["checkpoint"],
    }


METRICS = ("acc_dense", "acc_pruned", "acc_finetuned", "macs_dense", "macs_pruned", "params_dense",
           "params_pruned", "speedup", "latency_speedup", "seconds_sparsify", "seconds_prune", "seconds_finetune",
           "seconds_evaluate", "seconds_total", "seconds_calibrate", "latency_dense_b1", "latency_pruned_b1",
           "steps_taken", "calibration_samples")


def leaderboard_columns(result: dict) -> dict:
    """The leaderboard's derived columns, so MLflow's runs table can show what the leaderboard shows."""
    try:
        return {"delta_acc": result["acc_finetuned"] - result["acc_dense"],
                "params_kept": result["params_pruned"] / result["params_dense"],
                "macs_kept": result["macs_pruned"] / result["macs_dense"]}
    except (KeyError, TypeError, ZeroDivisionError):
        return {}


def _log_trial(tracker, run_id: str, ctx: SweepContext, result: dict, work: Path) -> None:
    metrics = {k: result[k] for k in METRICS if result.get(k) is not None}
    metrics.update({k: v for k, v in result.items() if k.startswith("latency_speedup_b")})
    metrics["target_reached"] = float(bool(result.get("target_reached")))
    metrics.update(leaderboard_columns(result))
    tracker.log_metrics(run_id, metrics)
    tracker.log_history(run_id, "finetune", result.get("finetune_history"))
    tracker.log_history(run_id, "sparsify", result.get("sparsify_history"))
    tracker.log_artifact(run_id, result["checkpoint"], "checkpoint")
    for name in ("channels.csv", "channels.json"):
        if (work / name).is_file():
            tracker.log_artifact(run_id, work / name, "channels")
    plot = _trial_plot(work, result)
    if plot:
        tracker.log_artifact(run_id, plot, "plots")


def _trial_plot(work: Path, result: dict) -> Optional[Path]:
    """Finetune curves and kept fraction per layer, one PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    channels = _read_json(work / "channels.json") if (work / "channels.json").is_file() else []
    hist = result.get("finetune_history") or []
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
    fig.suptitle(f"{result['method']} @ {result['speedup_target']:g}x ({result['scope']})")
    fig.tight_layout()
    out = work / "trial.png"
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out


def run_trial(ctx: SweepContext, trial: Trial) -> dict:
    """One trial through its four tasks, resumable, tracked as one MLflow child run; errors are recorded."""
    p = ctx.params
    key = trial_key(p, trial, ctx.dense_hash, ctx.data["content"])
    work = Path(ctx.trials_dir) / key
    result_file = work / "result.json"
    tracker = _tracker(ctx.tracking_uri)
    base = {"trial_key": key, "method": trial.method, "scope": trial.scope, "speedup_target": trial.speedup}
    REPORTER.trial_start(trial.name)
    if result_file.is_file():
        done_run = tracker.finished_trial(ctx.experiment_id, key)
        if done_run:
            tracker.link_trial(ctx.experiment_id, ctx.parent_run_id, done_run)  # listed under this parent too
            result = {**_read_json(result_file), **base, "run_id": done_run, "cached": True}
            REPORTER.trial_end(trial.name, result)
            return result
    tracker.discard_unfinished(ctx.experiment_id, key)
    run_id = tracker.start_child(ctx.experiment_id, ctx.parent_run_id, trial.name, key,
                                 trial_params(ctx, trial, key), ctx.tags)
    tracker.log_dataset(run_id, p.data.dataset, ctx.data["digest"], ctx.data["path"],
                        {"dataset_version": ctx.data["digest"], "git_rev": ctx.tags.get("git_rev", "")})
    try:
        if result_file.is_file():  # computed before a crash, not yet in MLflow: log it, do not retrain
            result = _read_json(result_file)
        else:
            start = time.perf_counter()
            sp = sparsified(p, trial.method, ctx.dense, ctx.dense_hash, ctx.data["content"], ctx.trials_dir)
            pr = prune_task(p, trial.method, trial.speedup, trial.scope, sp["checkpoint"], str(work))
            ft = finetune_task(p, trial.name, pr["checkpoint"], str(work))
            ev = evaluate_task(p, trial.name, ft["checkpoint"], str(work))
            result = {**_assemble(trial, ctx, sp, pr, ft, ev), "seconds_wall": time.perf_counter() - start}
            _write_json(result_file, result)
        _log_trial(tracker, run_id, ctx, result, work)
        tracker.finish(run_id)
    except Exception as e:  # one failing trial is recorded, the sweep goes on
        error = f"{type(e).__name__}: {e}"
        tracker.fail(run_id, error)
        result = {"status": "failed", "error": error}
    except BaseException:
        tracker.finish(run_id, "KILLED")
        raise
    result = {**result, **base, "run_id": run_id, "cached": False}
    REPORTER.trial_end(trial.name, result)
    return result


@task(name="method-trials", task_run_name="trials[{method}]", **TASK)
def method_trials_task(ctx: SweepContext, method: str, trials: list) -> list:
    """All trials of one method in order (they share its sparsify output): the unit spread over workers."""
    return [run_trial(ctx, t) for t in trials]


# --------------------------------------------------------------------------- flows
def _flow_run_id() -> Optional[str]:
    from prefect.runtime import flow_run
    return flow_run.id


def ensure_prepared(params: Params) -> Path:
    path = stages.prepared_path(params)
    if not (path / "meta.json").is_file():
        prepare_task(params)
    return path


def dense_for(params: Params, dense_path: Path = DENSE_PATH) -> Optional[Path]:
    """``models/dense.pt`` when it was trained with these params, else None."""
    if not Path(dense_path).is_file():
        return None
    import pruning
    meta = pruning.read_checkpoint(dense_path)
    return Path(dense_path) if meta.get("extra", {}).get("baseline_key") == stages.baseline_key(params) else None


def baseline(p: Params, dense_path: Path = DENSE_PATH) -> Path:
    """The prepared data and the dense baseline: ``models/dense.pt`` when it fits these params, else a cached one."""
    ensure_prepared(p)
    dense = dense_for(p, Path(dense_path))
    if dense is None:
        REPORTER.message(f"{dense_path} missing or trained with other params: using a cached baseline "
                         f"(pretrained on first use)")
        dense = Path(pretrain_task(p, None))
    return dense


def evaluate_dense(p: Params, dense: Path, dense_hash: str, data: dict, trials_dir: str) -> dict:
    key = make_key(dense_hash, p.evaluate.model_dump(), data["content"])
    return evaluate_dense_task(p, str(dense), str(Path(trials_dir) / f"dense-{key}.json"))


@flow(name="prepare", flow_run_name=from_params("prepare"), **FLOW)
def prepare_flow(params: dict) -> str:
    p = Params.model_validate(params)
    path = prepare_task(p)
    REPORTER.message(f"prepared {p.data.dataset} in {path}")
    return path


@flow(name="pretrain", flow_run_name=from_params("pretrain"), **FLOW)
def pretrain_flow(params: dict, out: str = str(DENSE_PATH)) -> str:
    p = Params.model_validate(params)
    ensure_prepared(p)
    if dense_for(p, Path(out)):
        REPORTER.message(f"{out} is up to date")
        return out
    return pretrain_task(p, out)


def cached_run(tracker, experiment_id: str, trials_dir: str, key: str) -> Optional[str]:
    """The FINISHED run that computed this trial, when its result is cached under ``trials_dir``."""
    if not (Path(trials_dir) / key / "result.json").is_file():
        return None
    return tracker.finished_trial(experiment_id, key)


@flow(name="benchmark", flow_run_name=from_params("benchmark"), **FLOW)
def benchmark_flow(params: dict, trials_dir: str = str(TRIALS_DIR), dense_path: str = str(DENSE_PATH),
                   results_path: str = str(RESULTS_PATH)) -> dict:
    """Every (method, speedup, scope) trial of params.yaml's benchmark section; writes ``results_path``.

    An invocation that computes anything gets a new MLflow parent run: its new trials as children, the cached
    ones linked (``trial-link``), its leaderboard and the best model per (method, speedup) registered.  One with
    nothing to compute (every trial cached) creates no run and says where the trials are.
    """
    from .tracking import experiment_name, source_tags
    p = Params.model_validate(params)
    dense = baseline(p, Path(dense_path))
    tracker = _tracker(_uri(p))
    data = data_version(p)
    dense_hash = file_digest(dense)
    trials = trials_of(p)
    exp_name = experiment_name(stages.dataset_slug(p.data.dataset), p.model.name)
    exp = tracker.experiment(exp_name)
    tags = {**source_tags("benchmark"), "dataset_version": data["digest"], "dataset": p.data.dataset,
            "dvc_md5": data["dvc_md5"], "prefect_flow_run_id": _flow_run_id(), "code_version": code_version()}
    keys = [trial_key(p, t, dense_hash, data["content"]) for t in trials]
    sweep = make_key("sweep", sorted(keys))
    done = [cached_run(tracker, exp, trials_dir, k) for k in keys]
    parent = None
    if all(done):
        where = sorted({tracker.client.get_run(r).data.tags.get("mlflow.parentRunId", r) for r in done})
        REPORTER.message(f"nothing to compute: all {len(trials)} trial(s) are cached (MLflow parent run(s) "
                         f"{', '.join(where)}); no new run logged")
    else:
        parent = tracker.parent_run(exp, sweep, f"benchmark-{p.model.name}-{stages.dataset_slug(p.data.dataset)}",
                                    {"methods": p.benchmark.methods, "speedups": p.benchmark.speedups,
                                     "scopes": p.benchmark.scopes, "profile": p.profile, "seed": p.seed,
                                     "model": p.model.name, "dataset": p.data.dataset,
                                     "dataset_digest": data["digest"], "concurrency": p.benchmark.concurrency,
                                     "trials": len(trials)}, tags)
        tracker.log_dataset(parent, p.data.dataset, data["digest"], data["path"],
                            {"dataset_version": data["digest"]})
    dense_eval = evaluate_dense(p, dense, dense_hash, data, trials_dir)
    ctx = SweepContext(p, str(dense), dense_hash, dense_eval, data, exp, parent, tracker.uri, trials_dir, tags)
    try:
        results = _run_trials(ctx, trials)
    except BaseException:
        if parent:
            tracker.finish(parent, "KILLED")
        raise
    failed = sum(r["status"] != "ok" for r in results)
    summary = {"experiment_id": exp, "experiment_name": exp_name, "parent_run_id": parent,
               "tracking_uri": tracker.uri, "sweep_key": sweep, "dataset": p.data.dataset, "model": p.model.name,
               "data_version": data["digest"], "git_rev": tags["git_rev"], "acc_dense": dense_eval["acc"],
               "dense": {k: v for k, v in dense_eval.items()}, "speedups": p.benchmark.speedups,
               "scopes": p.benchmark.scopes, "methods": p.benchmark.methods, "trials": results}
    _write_json(Path(results_path), summary)
    if parent:
        _finish_parent(tracker, ctx, summary, results_path, failed)
    return summary


def _run_trials(ctx: SweepContext, trials: list) -> list:
    """Every trial, a method's trials in order (they share its sparse training); methods side by side when
    ``benchmark.concurrency`` > 1 or on Dask."""
    p = ctx.params
    REPORTER.sweep_start(len(trials))
    by_method: dict = {}
    for t in trials:
        by_method.setdefault(t.method, []).append(t)
    if not (p.benchmark.concurrency > 1 or p.benchmark.dask_address):
        return [run_trial(ctx, t) for ts in by_method.values() for t in ts]
    futures = [method_trials_task.submit(ctx, m, ts) for m, ts in by_method.items()]
    results = []
    for (m, ts), fut in zip(by_method.items(), futures):
        try:
            results.extend(fut.result())
        except Exception as e:  # the worker itself died
            results.extend({"status": "failed", "error": f"{type(e).__name__}: {e}", "method": t.method,
                            "scope": t.scope, "speedup_target": t.speedup} for t in ts)
    return results


def _finish_parent(tracker, ctx: SweepContext, summary: dict, results_path: str, failed: int) -> None:
    """Everything this invocation's parent gets before it ends: counts, its own leaderboard, the best models."""
    import tempfile

    from . import leaderboard
    parent, results = ctx.parent_run_id, summary["trials"]
    tracker.log_metrics(parent, {"acc_dense": summary["acc_dense"], "trials_ok": len(results) - failed,
                                 "trials_failed": failed, "trials_cached": sum(bool(r.get("cached"))
                                                                               for r in results)})
    tracker.log_artifact(parent, results_path, "reports")
    # the leaderboard of this invocation's trials only (a later `tune` adds rows to reports/, never to this run)
    with tempfile.TemporaryDirectory() as tmp:
        files = leaderboard.write_reports(summary, Path(tmp))
        for path in files.values():
            if Path(path).is_file():
                tracker.log_artifact(parent, path, "leaderboard")
        tracker.log_metrics(parent, leaderboard.flat_metrics(summary, leaderboard.build(summary)))
    try:
        register_best_models(tracker, ctx, results)
    except Exception as e:  # the results stand without the registry; say why
        REPORTER.message(f"model registration skipped: {type(e).__name__}: {e}")
    tracker.finish(parent, "FINISHED" if failed < len(results) else "FAILED")


def registered_name(p: Params, method: str, speedup: float) -> str:
    """``prunebench-<dataset>-<model>-<method>-x<speedup>``, with what MLflow names cannot hold as ``-``."""
    import re
    raw = f"prunebench-{stages.dataset_slug(p.data.dataset)}-{p.model.name}-{method}-x{speedup:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def best_per_target(results: list) -> dict:
    """The trial with the highest ``acc_finetuned`` per (method, speedup target), among the ok ones."""
    best: dict = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        key = (r["method"], float(r["speedup_target"]))
        if key not in best or r["acc_finetuned"] > best[key]["acc_finetuned"]:
            best[key] = r
    return best


def register_best_models(tracker, ctx: SweepContext, results: list) -> list:
    """Log each (method, speedup)'s best pruned model to the parent as an MLflow model and register it; a trial
    already registered (a cached best) is not registered again.  Returns the new ``(name, version)`` pairs."""
    import mlflow
    mlflow.set_tracking_uri(tracker.uri)
    registered, images = [], None
    for (method, speedup), result in best_per_target(results).items():
        name = registered_name(ctx.params, method, speedup)
        versions = tracker.client.search_model_versions(f"name = '{name}'")
        if any(v.tags.get("trial_key") == result["trial_key"] for v in versions):
            continue
        if images is None:  # two real test images: the input example, and what the signature is inferred from
            images = next(iter(stages.load_bundle(ctx.params).loader("test", 2)))[0].numpy()
        registered.append((name, log_pytorch_model(tracker, ctx.parent_run_id, result, name, images)))
    return registered


def log_pytorch_model(tracker, run_id: str, result: dict, name: str, images) -> str:
    """The trial's pruned model as an MLflow pytorch model on ``run_id``, registered as ``name``; returns the
    version.  prunebench itself keeps loading the weights-only checkpoint.

    Pickle format: MLflow 3's default (``pt2``, torch.export) costs about 30 s per model on 2 cores against 2-4 s.
    Explicit pip requirements spare MLflow inferring them (seconds of imports).
    """
    import importlib.metadata as md

    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    import pruning
    model, _ = pruning.load_checkpoint(result["checkpoint"])
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    info = mlflow.pytorch.log_model(
        model, name=name, signature=infer_signature(images, logits), input_example=images,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"torch-pruning=={md.version('torch-pruning')}",
                          f"numpy=={md.version('numpy')}"], serialization_format="pickle",
        registered_model_name=name, run_id=run_id, await_registration_for=0)
    version = str(info.registered_model_version)
    for key, value in {"trial_key": result["trial_key"], "trial_run_id": result.get("run_id"),
                       "acc_finetuned": result["acc_finetuned"]}.items():
        tracker.client.set_model_version_tag(name, version, key, str(value))
    return version


@flow(name="leaderboard", **FLOW)
def leaderboard_flow(results_path: str = str(RESULTS_PATH), out_dir: str = str(REPORTS_DIR)) -> list:
    """Aggregate the benchmark (and tuned rows) into reports/ (CSV, Markdown, PNGs, metrics, plot data) and
    Prefect artifacts.  MLflow is not touched: each benchmark parent logged its own leaderboard when it ran, and a
    finished run is never edited."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from . import leaderboard
    from .tune import TUNED_PATH
    summary = leaderboard.load_summary(Path(results_path))
    if TUNED_PATH.is_file():
        summary = leaderboard.with_tuned(summary, _read_json(TUNED_PATH))
    files = leaderboard.write_reports(summary, Path(out_dir))
    rows = leaderboard.build(summary)
    create_table_artifact(key="prunebench-leaderboard", table=leaderboard.table_rows(rows),
                          description=f"prunebench leaderboard: {summary['model']} on {summary['dataset']}")
    create_markdown_artifact(key="prunebench-leaderboard-md", markdown=Path(files["md"]).read_text())
    return rows


def _uri(params: Optional[Params]) -> str:
    from .tracking import tracking_uri
    return tracking_uri(params.tracking.mlflow_uri if params else None)


# --------------------------------------------------------------------------- entry points
def warm_up(uri: Optional[str] = None) -> None:
    """Open the MLflow store while the Prefect server finishes starting (each takes seconds)."""
    t = threading.Thread(target=lambda: _tracker(uri) if uri else None, daemon=True)
    t.start()
    from .server import wait_for_server
    wait_for_server()
    t.join()


def run_benchmark(params: Params, **paths) -> dict:
    flow_fn = benchmark_flow
    b = params.benchmark
    if b.dask_address:
        from prefect_dask import DaskTaskRunner
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": b.concurrency, "threads_per_worker": 1}) \
            if b.dask_address == "local" else DaskTaskRunner(address=b.dask_address)
        flow_fn = benchmark_flow.with_options(task_runner=runner)
    elif b.concurrency > 1:
        from prefect.task_runners import ThreadPoolTaskRunner
        flow_fn = benchmark_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=b.concurrency))
    return flow_fn(params.model_dump(), **paths)
