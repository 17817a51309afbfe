"""What a benchmark and a tuning study set up alike before their trials: prepared data, the dense baseline, the
data and code versions, the MLflow experiment and the tags every run of the invocation carries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pruning

from . import progress
from .config import Params
from .engine import flow_run_id
from .keys import baseline_key, code_version, data_version, dense_eval_key, detection_folder, file_digest
from .layout import DENSE_PATH, TRIALS_DIR, dataset_slug, dense_eval_path, prepared_dir
from .stages import detection_baseline, is_prepared, recipe_card
from .tasks import evaluate_dense_task, prepare_task, pretrain_task
from .tracking import Tracker, experiment_name, source_tags, tracker_for, tracking_uri


@dataclass
class SweepContext:
    """What every trial of an invocation needs; picklable (Dask) and free of live objects."""
    params: Params
    dense: str
    dense_hash: str
    data: dict                       # keys.data_version
    experiment_id: str
    experiment_name: str
    tracking_uri: str
    trials_dir: str
    tags: dict = field(default_factory=dict)
    parent_run_id: Optional[str] = None   # set once the invocation has work to do
    dense_eval: Optional[dict] = None     # the dense model's evaluation, once measured
    seed_baselines: dict = field(default_factory=dict)  # benchmark.dense per_seed: seed -> its dense baseline

    @property
    def tracker(self) -> Tracker:
        return tracker_for(self.tracking_uri)

    def with_parent(self, parent_run_id: Optional[str]) -> "SweepContext":
        return dataclasses.replace(self, parent_run_id=parent_run_id)

    @property
    def recipe(self) -> dict:
        """The recipe card every record of this context carries (needs the dense evaluation)."""
        return recipe_card(self.params, self.dense_eval["acc"] if self.dense_eval else None)

    def for_seed(self, seed: int) -> "SweepContext":
        """The context a trial of ``seed`` runs in: params whose ``seed`` is the trial's, and with
        ``benchmark.dense: per_seed`` the dense baseline pretrained with that seed (see :meth:`with_seed_baselines`)."""
        params = self.params.model_copy(update={"seed": seed})
        own = self.seed_baselines.get(seed)
        if own is None:
            return dataclasses.replace(self, params=params)
        return dataclasses.replace(self, params=params, **own)

    def with_seed_baselines(self, seeds: list) -> "SweepContext":
        """With ``benchmark.dense: per_seed``, a dense baseline per seed (pretrained on first use, cached by its
        key) and its evaluation; with ``shared``, this context as it is."""
        if self.params.benchmark.dense != "per_seed":
            return self
        baselines = {}
        for seed in seeds:
            params = self.params.model_copy(update={"seed": seed})
            dense = Path(self.dense) if seed == self.params.seed else Path(pretrain_task(params, None))
            own = dataclasses.replace(self, params=params, dense=str(dense), dense_hash=file_digest(dense),
                                      dense_eval=None).evaluated()
            baselines[seed] = {"dense": own.dense, "dense_hash": own.dense_hash, "dense_eval": own.dense_eval}
        return dataclasses.replace(self, seed_baselines=baselines)

    def evaluated(self) -> "SweepContext":
        """This context with the dense model's evaluation (measured once per dense model, data and settings)."""
        if self.dense_eval is not None:
            return self
        key = dense_eval_key(self.params, self.dense_hash, self.data["content"])
        measured = evaluate_dense_task(self.params, self.dense, str(dense_eval_path(self.trials_dir, key)))
        return dataclasses.replace(self, dense_eval=measured)


def uri_of(params: Optional[Params]) -> str:
    return tracking_uri(params.tracking.mlflow_uri if params else None)


def ensure_prepared(params: Params) -> Path:
    if params.is_detection:  # a detection dataset is read where it lies (shapes: generated on first use)
        return detection_folder(params)
    path = prepared_dir(params.data.prepared_dir, params.data.dataset)
    if not is_prepared(params):
        prepare_task(params)
    return path


def dense_for(params: Params, dense_path: Path = DENSE_PATH) -> Optional[Path]:
    """``models/dense.pt`` when it was trained with these params, else None."""
    if not Path(dense_path).is_file():
        return None
    meta = pruning.read_checkpoint(dense_path)
    return Path(dense_path) if meta.get("extra", {}).get("baseline_key") == baseline_key(params) else None


def baseline(params: Params, dense_path: Path = DENSE_PATH) -> Path:
    """The prepared data and the dense baseline: ``models/dense.pt`` when it fits these params, else a cached one."""
    ensure_prepared(params)
    if params.is_detection:
        return detection_baseline(params)
    dense = dense_for(params, Path(dense_path))
    if dense is None:
        progress.current().message(f"{dense_path} missing or trained with other params: using a cached baseline "
                                   f"(pretrained on first use)")
        dense = Path(pretrain_task(params, None))
    return dense


def open_sweep(params: Params, command: str, dense: Path, trials_dir: str | Path = TRIALS_DIR) -> SweepContext:
    """The context of a ``command`` (``benchmark`` or ``tune``) invocation on the dense model ``dense``."""
    tracker = tracker_for(uri_of(params))
    data = data_version(params)
    name = experiment_name(dataset_slug(params.data.dataset), params.model.name)
    tags = {**source_tags(command), "dataset_version": data["digest"], "dataset": params.data.dataset,
            "dvc_md5": data["dvc_md5"], "prefect_flow_run_id": flow_run_id(), "code_version": code_version()}
    return SweepContext(params, str(dense), file_digest(dense), data, tracker.experiment(name), name, tracker.uri,
                        str(trials_dir), tags)
