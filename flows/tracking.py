"""MLflow tracking: the one module of prunebench that talks to MLflow.

Layout: one experiment per (dataset, model) named ``prunebench/<dataset>/<model>``; a parent run per invocation
that does work (a finished run is history: never reopened, retagged or given more artifacts), a child run per
trial, found again by its ``trial_key`` tag.  Parallel ``tune`` workers on one study share one parent per
*session*: a worker joins the RUNNING parent of its study while a process listed in that parent's
``live_workers`` tag is alive, and the last worker to leave ends it (:meth:`Tracker.join_parent` /
:meth:`Tracker.leave_parent`).  Everything goes through an explicit ``MlflowClient`` and run ids,
never MLflow's fluent "active run": tasks on other threads or Dask workers log safely, and no third-party callback
(ultralytics' MLflow integration ends whatever run is *active*) can take over or close one of these runs.

Several processes may share one store (parallel ``prunebench tune`` workers): with a SQLite store, creating the
schema and finding-or-creating a parent run happen under a file lock beside the database file.  Every run records
the process that started it (tag ``worker`` = ``host:pid``).  A run of this trial key still RUNNING when a later
attempt starts counts as interrupted only when its process is gone from this host; it is then ended as KILLED
(with its end time) and kept as history, tagged ``superseded_by`` the new attempt's run.  A run of a live process
(or of another host, which cannot be checked from here) is never touched.  Lookups of results look at FINISHED
runs only.  A cached trial reused under another parent (a benchmark reusing the trial a tuning study ran) gets a
``trial-link`` child under the new parent with the same params and final metrics, so every parent lists all its
trials; lookups of results ignore links.
"""
from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

KIND_BENCHMARK = "benchmark"
KIND_TRIAL = "trial"
KIND_PRETRAIN = "pretrain"
KIND_STUDY = "study"
KIND_TUNE_TRIAL = "tune-trial"
KIND_TRIAL_LINK = "trial-link"
WORKER_TAG = "worker"
LIVE_WORKERS_TAG = "live_workers"

# Keep third-party MLflow integrations (ultralytics reads these) from starting, naming or keeping runs of their own.
_THIRD_PARTY_ENV = {"MLFLOW_KEEP_RUN_ACTIVE": "false"}


def tracking_uri(configured: Optional[str] = None) -> str:
    """``MLFLOW_TRACKING_URI`` wins over params.yaml's ``tracking.mlflow_uri``; default ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"


def worker_id() -> str:
    """This process as ``host:pid``, recorded on every run (and Optuna trial) it starts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(worker: str) -> bool:
    """Whether the process a ``host:pid`` names may still be running.

    False only when it is certainly gone: a process of this host that no longer exists, or no (valid) name at all
    (runs recorded before workers were).  Another host's process cannot be checked from here and counts as alive.
    """
    host, _, pid = (worker or "").partition(":")
    if not host or not pid.isdigit():
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)  # signal 0: an existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def store_lock(uri: str):
    """A file lock beside a SQLite database (``<file>.lock``), a no-op for other stores (servers serialise).

    Creating a SQLite schema is not safe from two processes at once ("table ... already exists"); holding this
    lock around the first connection lets any number of processes start together.  No lock when the database's
    folder does not exist: the store then fails with its own error rather than the lock creating the folder.
    """
    if not uri.startswith("sqlite:"):
        return contextlib.nullcontext()
    from sqlalchemy.engine import make_url
    database = make_url(uri).database
    if not database or database == ":memory:" or not Path(database).parent.is_dir():
        return contextlib.nullcontext()
    from filelock import FileLock
    return FileLock(f"{database}.lock")


def experiment_name(dataset: str, model: str) -> str:
    return f"prunebench/{dataset}/{model}"


def guard_third_party() -> None:
    """Stop ultralytics' (and similar) MLflow/DVC callbacks from logging into, ending or creating runs.

    Applied in-process only: the user's ultralytics settings file is left untouched.
    """
    for key, value in _THIRD_PARTY_ENV.items():
        os.environ.setdefault(key, value)
    settings_mod = sys.modules.get("ultralytics.utils")
    settings = getattr(settings_mod, "SETTINGS", None) if settings_mod else None
    if settings is not None:
        for key in ("mlflow", "dvc", "wandb", "comet", "clearml", "neptune", "tensorboard", "raytune"):
            if key in settings:
                dict.__setitem__(settings, key, False)  # bypass JSONDict's save-to-disk


def _quiet_loggers() -> None:
    for name in ("mlflow", "alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def git_rev(cwd: Optional[Path] = None) -> str:
    """The git revision of the project (``+dirty`` when tracked files changed), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags(command: str, rev: Optional[str] = None) -> dict:
    """MLflow's standard tags (the UI's Source, User and Version columns) plus the DVC experiment when
    ``dvc exp run`` started this process (DVC sets ``DVC_EXP_NAME`` and ``DVC_EXP_BASELINE_REV`` for it)."""
    rev = rev or git_rev()
    tags = {"mlflow.source.name": f"prunebench {command}", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": rev.split("+")[0], "git_rev": rev, "git_dirty": str(rev.endswith("+dirty"))}
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _str(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


class Tracker:
    """A thin, thread-safe wrapper over ``MlflowClient`` with prunebench's run layout."""

    def __init__(self, uri: Optional[str] = None):
        guard_third_party()
        _quiet_loggers()
        from mlflow import MlflowClient
        self.uri = tracking_uri(uri)
        with store_lock(self.uri):  # the client creates (or migrates) a SQLite schema: one process at a time
            self.client = MlflowClient(self.uri)

    # ------------------------------------------------------------------ experiments and runs
    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, tags={"prunebench": "1"})
            except Exception:  # created concurrently by another process
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _search(self, experiment_id: str, flt: str) -> list:
        return list(self.client.search_runs([experiment_id], filter_string=flt, max_results=1000))

    def parent_run(self, experiment_id: str, sweep_key: str, name: str, params: dict, tags: dict,
                   kind: str = KIND_BENCHMARK) -> str:
        """A new parent run for this invocation of a sweep (or study).

        Earlier parents of the same key are history and stay as they are; one left RUNNING by a process that
        died (a killed sweep) is ended as KILLED first.
        """
        with store_lock(self.uri):
            for run in self._parents(experiment_id, sweep_key, kind):
                self._end_if_interrupted(run)
            return self._new_parent(experiment_id, sweep_key, name, params, tags, kind)

    def _parents(self, experiment_id: str, sweep_key: str, kind: str) -> list:
        return self._search(experiment_id, f"tags.sweep_key = '{sweep_key}' and tags.kind = '{kind}'")

    def _new_parent(self, experiment_id: str, sweep_key: str, name: str, params: dict, tags: dict,
                    kind: str) -> str:
        run = self.client.create_run(experiment_id, run_name=name, tags={
            "kind": kind, "sweep_key": sweep_key, **{k: _str(v) for k, v in tags.items() if v is not None},
            WORKER_TAG: worker_id(), LIVE_WORKERS_TAG: worker_id()})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def latest_parent(self, experiment_id: str, sweep_key: str, kind: str = KIND_BENCHMARK) -> Optional[str]:
        """The most recent FINISHED parent of this key, if any (where an all-cached rerun points the user)."""
        done = [r for r in self._parents(experiment_id, sweep_key, kind) if r.info.status == "FINISHED"]
        return max(done, key=lambda r: r.info.start_time).info.run_id if done else None

    def join_parent(self, experiment_id: str, sweep_key: str, name: str, params: dict, tags: dict,
                    kind: str) -> str:
        """The parent of this study's current session: joined while one of its workers is alive, else new.

        Workers started together on one study share one parent; each adds itself to ``live_workers`` and
        :meth:`leave_parent` removes it.  A RUNNING parent none of whose workers is alive was interrupted: KILLED.
        """
        with store_lock(self.uri):
            for run in self._parents(experiment_id, sweep_key, kind):
                if run.info.status != "RUNNING":
                    continue
                alive = self._live_workers(run)
                if alive:
                    self.set_tags(run.info.run_id, {LIVE_WORKERS_TAG: ",".join(alive + [worker_id()])})
                    return run.info.run_id
                self.finish(run.info.run_id, "KILLED")
            return self._new_parent(experiment_id, sweep_key, name, params, tags, kind)

    def leave_parent(self, run_id: str, status: str = "FINISHED") -> bool:
        """This worker is done with a session parent; the last one out ends it with ``status``.  Returns whether
        this worker ended it."""
        with store_lock(self.uri):
            others = [w for w in self._live_workers(self.client.get_run(run_id)) if w != worker_id()]
            if others:
                self.set_tags(run_id, {LIVE_WORKERS_TAG: ",".join(others)})
                return False
            self.set_tags(run_id, {LIVE_WORKERS_TAG: ""})
            self.finish(run_id, status)
            return True

    @staticmethod
    def _live_workers(run) -> list:
        listed = run.data.tags.get(LIVE_WORKERS_TAG, run.data.tags.get(WORKER_TAG, ""))
        return [w for w in listed.split(",") if w and process_alive(w)]

    def _attempts(self, experiment_id: str, trial_key: str) -> list:
        """The runs that computed this trial (links to them left out)."""
        return [r for r in self._search(experiment_id, f"tags.trial_key = '{trial_key}'")
                if r.data.tags.get("kind") != KIND_TRIAL_LINK]

    def finished_trial(self, experiment_id: str, trial_key: str) -> Optional[str]:
        """The run id of a FINISHED run that computed this trial key, if one exists."""
        for run in self._attempts(experiment_id, trial_key):
            if run.info.status == "FINISHED":
                return run.info.run_id
        return None

    def _end_if_interrupted(self, run) -> bool:
        """End a RUNNING run whose process is gone as KILLED (now its end time); False for a live process's run."""
        if run.info.status != "RUNNING":
            return True
        if process_alive(run.data.tags.get(WORKER_TAG, "")):
            return False
        self.finish(run.info.run_id, "KILLED")
        return True

    def discard_unfinished(self, experiment_id: str, trial_key: str) -> int:
        """Before a new attempt of this trial: end the runs earlier attempts left RUNNING when their process died
        (KILLED, with an end time); they stay as history, and :meth:`start_child` marks them superseded.

        A RUNNING run of a live process is left alone.  Returns how many runs were ended.
        """
        ended = 0
        for run in self._attempts(experiment_id, trial_key):
            if run.info.status == "RUNNING" and self._end_if_interrupted(run):
                ended += 1
        return ended

    def delete_runs(self, experiment_id: str, flt: str) -> int:
        """Delete the runs matching a filter (e.g. a superseded result), returning how many.

        A RUNNING run of a live process is never deleted; one of a dead process is ended as KILLED first.
        """
        found = [r for r in self._search(experiment_id, flt) if self._end_if_interrupted(r)]
        for run in found:
            self.client.delete_run(run.info.run_id)
        return len(found)

    def start_child(self, experiment_id: str, parent_id: Optional[str], name: str, trial_key: str,
                    params: dict, tags: dict, kind: str = KIND_TRIAL) -> str:
        """A child run of ``parent_id`` for one trial; earlier unfinished attempts of the key are marked superseded
        by it (tag ``superseded_by``), so a resumed sweep shows one result per trial."""
        all_tags = {"kind": kind, "trial_key": trial_key, **tags, WORKER_TAG: worker_id()}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        earlier = [r for r in self._attempts(experiment_id, trial_key)
                   if r.info.status in ("FAILED", "KILLED") and "superseded_by" not in r.data.tags]
        run = self.client.create_run(experiment_id, run_name=name, tags={k: _str(v) for k, v in all_tags.items()})
        self.log_params(run.info.run_id, params)
        for old in earlier:
            self.set_tags(old.info.run_id, {"superseded_by": run.info.run_id})
        return run.info.run_id

    def link_trial(self, experiment_id: str, parent_id: Optional[str], run_id: str) -> Optional[str]:
        """List a cached trial's FINISHED run under ``parent_id`` too, when it belongs to another parent.

        A lightweight ``trial-link`` child (tags ``trial_key`` and ``linked_run_id``, the same params and final
        metrics, no artifacts) is created once per parent; returns its id, or None when no link is needed.
        """
        run = self.client.get_run(run_id)
        if not parent_id or run.data.tags.get("mlflow.parentRunId") == parent_id:
            return None
        for link in self._search(experiment_id, f"tags.linked_run_id = '{run_id}'"):
            if link.data.tags.get("mlflow.parentRunId") != parent_id:
                continue
            if link.info.status == "FINISHED":
                return link.info.run_id
            self._end_if_interrupted(link)  # its process died while writing it: KILLED, and a new one follows
        tags = {k: v for k, v in run.data.tags.items()
                if k.startswith(("mlflow.source.", "mlflow.user")) or not k.startswith("mlflow.")}
        tags.pop("superseded_by", None)
        tags.update({"kind": KIND_TRIAL_LINK, "linked_run_id": run_id, "mlflow.parentRunId": parent_id,
                     WORKER_TAG: worker_id()})
        link = self.client.create_run(experiment_id, run_name=run.info.run_name, tags=tags)
        self.log_params(link.info.run_id, run.data.params)
        self.log_metrics(link.info.run_id, run.data.metrics)
        self.finish(link.info.run_id)
        return link.info.run_id

    def start_run(self, experiment_id: str, name: str, kind: str, params: dict, tags: dict) -> str:
        run = self.client.create_run(experiment_id, run_name=name, tags={
            "kind": kind, **{k: _str(v) for k, v in tags.items()}, WORKER_TAG: worker_id()})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    # ------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, _str(v)) for k, v in params.items() if v is not None]
        for i in range(0, len(items), 90):
            self.client.log_batch(run_id, params=items[i:i + 90])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag
        items = [RunTag(k, _str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(run_id, tags=items)

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
        for i in range(0, len(items), 900):
            self.client.log_batch(run_id, metrics=items[i:i + 900])

    def log_history(self, run_id: str, prefix: str, history: Iterable[dict]) -> None:
        """Per-epoch rows as step metrics: ``<prefix>_loss`` and ``<prefix>_acc`` at step = epoch."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = []
        for row in history or []:
            step = int(row.get("epoch", 0))
            if "loss" in row:
                items.append(Metric(f"{prefix}_loss", float(row["loss"]), now, step))
            if row.get("val_acc") is not None:
                items.append(Metric(f"{prefix}_acc", float(row["val_acc"]), now, step))
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, version_tags: dict) -> None:
        """``log_input`` of the prepared dataset, its digest a hash of the prepared files' content (the same
        whether ``prunebench prepare`` or ``dvc repro`` wrote them)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        dataset = Dataset(name=name, digest=digest[:36], source_type="local",
                          source=json.dumps({"uri": source, **version_tags}))
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, error: str) -> None:
        self.set_tags(run_id, {"error": error[:5000]})
        try:
            self.client.log_param(run_id, "error", error[:500])
        except Exception:
            pass
        self.finish(run_id, "FAILED")

    def runs(self, experiment_id: str, flt: str = "") -> list:
        return self._search(experiment_id, flt)

    def log_record(self, run_id: str, record, artifacts: Iterable[tuple[Path, str]] = ()) -> None:
        """A trial's :class:`~flows.record.TrialRecord`: its metrics, per-epoch histories as step metrics, the
        protection the library applied as a param, its checkpoint and the given ``(file, folder)`` artifacts."""
        self.log_metrics(run_id, record.metrics())
        if record.protect is not None:
            self.log_params(run_id, {"protect": record.protect})
        self.log_history(run_id, "finetune", record.finetune_history)
        self.log_history(run_id, "sparsify", record.sparsify_history)
        if record.checkpoint:
            self.log_artifact(run_id, record.checkpoint, "checkpoint")
        for path, folder in artifacts:
            if Path(path).is_file():
                self.log_artifact(run_id, path, folder)

    def log_model(self, run_id: str, model, images, name: str, tags: dict) -> str:
        """A pruned model as an MLflow pytorch model on ``run_id``, registered as ``name`` with ``tags`` on the
        version; returns the version.  ``images`` (a small numpy batch) is the input example and what the
        signature is inferred from.

        Pickle format: MLflow 3's default (``pt2``, torch.export) costs about 30 s per model on 2 cores against 2-4 s.
        Explicit pip requirements spare MLflow inferring them (seconds of imports).
        """
        import importlib.metadata as md

        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature
        mlflow.set_tracking_uri(self.uri)
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(images)).numpy()
        info = mlflow.pytorch.log_model(
            model, name=name, signature=infer_signature(images, logits), input_example=images,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"torch-pruning=={md.version('torch-pruning')}", f"numpy=={md.version('numpy')}"],
            serialization_format="pickle", registered_model_name=name, run_id=run_id, await_registration_for=0)
        version = str(info.registered_model_version)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))
        return version

    def parent_of(self, run_id: str) -> str:
        """The parent run of a child run (the run itself when it has none)."""
        return self.client.get_run(run_id).data.tags.get("mlflow.parentRunId", run_id)

    def registered_versions(self, name: str) -> list:
        return self.client.search_model_versions(f"name = '{name}'")


@functools.lru_cache(maxsize=4)
def tracker_for(uri: str) -> Tracker:
    """One :class:`Tracker` per store and process (opening a store costs seconds)."""
    return Tracker(uri)
