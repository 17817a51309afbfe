"""MLflow tracking: the one module of prunebench that talks to MLflow.

Layout: one experiment per (dataset, model) named ``prunebench/<dataset>/<model>``; a parent run per benchmark
sweep (reused when the same sweep is run again or resumed, so a resumed sweep stays under one parent); a child run
per trial, found again by its ``trial_key`` tag.  Everything goes through an explicit ``MlflowClient`` and run ids,
never MLflow's fluent "active run": tasks on other threads or Dask workers log safely, and no third-party callback
(ultralytics' MLflow integration ends whatever run is *active*) can take over or close one of these runs.
"""
from __future__ import annotations

import json
import logging
import os
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

# Keep third-party MLflow integrations (ultralytics reads these) from starting, naming or keeping runs of their own.
_THIRD_PARTY_ENV = {"MLFLOW_KEEP_RUN_ACTIVE": "false"}


def tracking_uri(configured: Optional[str] = None) -> str:
    """``MLFLOW_TRACKING_URI`` wins over params.yaml's ``tracking.mlflow_uri``; default ``sqlite:///mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or "sqlite:///mlflow.db"


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
        """The parent run of this sweep (or study): reused when it ran before (resume), else created."""
        found = self._search(experiment_id, f"tags.sweep_key = '{sweep_key}' and tags.kind = '{kind}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=name, tags={"kind": kind, "sweep_key": sweep_key})
            run_id = run.info.run_id
            self.log_params(run_id, params)
        self.set_tags(run_id, tags)
        return run_id

    def finished_trial(self, experiment_id: str, trial_key: str) -> Optional[str]:
        """The run id of a FINISHED child run for this trial key, if one exists."""
        for run in self._search(experiment_id, f"tags.trial_key = '{trial_key}'"):
            if run.info.status == "FINISHED":
                return run.info.run_id
        return None

    def discard_unfinished(self, experiment_id: str, trial_key: str) -> int:
        """Delete runs of this trial left RUNNING/FAILED/KILLED by an earlier attempt, so a retry leaves one run."""
        n = 0
        for run in self._search(experiment_id, f"tags.trial_key = '{trial_key}'"):
            if run.info.status != "FINISHED":
                self.client.delete_run(run.info.run_id)
                n += 1
        return n

    def delete_runs(self, experiment_id: str, flt: str) -> int:
        """Delete the runs matching a filter (e.g. a superseded result), returning how many."""
        found = self._search(experiment_id, flt)
        for run in found:
            self.client.delete_run(run.info.run_id)
        return len(found)

    def start_child(self, experiment_id: str, parent_id: Optional[str], name: str, trial_key: str,
                    params: dict, tags: dict, kind: str = KIND_TRIAL) -> str:
        all_tags = {"kind": kind, "trial_key": trial_key, **tags}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(experiment_id, run_name=name, tags={k: _str(v) for k, v in all_tags.items()})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_run(self, experiment_id: str, name: str, kind: str, params: dict, tags: dict) -> str:
        run = self.client.create_run(experiment_id, run_name=name,
                                     tags={"kind": kind, **{k: _str(v) for k, v in tags.items()}})
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
        """``log_input`` of the prepared dataset, its digest being the DVC md5 (or a content hash without DVC)."""
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
