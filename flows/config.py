"""The params.yaml schema: one pydantic model per stage, validated before any work starts."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator,
                      model_validator)

from pruning.data import DATASETS, input_size_of, is_known_dataset
from pruning.errors import PruneBenchError, one_line
from pruning.methods import resolve
from pruning.models import create_model, is_known_model, list_models
from pruning.recipes import FamilyRecipe, list_recipes, recipe_for
from pruning.steps import SCOPES, TARGETS, check_prune_args
from pruning.train import OPTIMIZERS, SCHEDULES, Recipe


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Section):
    dataset: str = "digits"
    root: str = "data/raw"
    download: bool = False
    prepared_dir: str = "data"
    input_size: Optional[int] = Field(None, ge=4)  # None: the dataset's own (digits 8, CIFAR 32, imagefolder 32)
    batch_size: int = Field(64, ge=1)

    @field_validator("dataset")
    @classmethod
    def known_dataset(cls, v):
        if not is_known_dataset(v):
            raise ValueError(f"unknown dataset {v!r}; choose one of: {', '.join(DATASETS)}")
        if v.startswith("imagefolder:") and not Path(v.split(":", 1)[1]).is_dir():
            raise ValueError(f"imagefolder path {v.split(':', 1)[1]!r} does not exist")
        return v  # detection yaml paths are checked (with every missing path named) when loaded


class ModelParams(_Section):
    name: str = "resnet20"
    kwargs: Dict[str, Any] = Field(default_factory=dict)  # to the family's builder (timm.create_model)
    recipe: str = "auto"                                   # auto: the model family's (pruning.recipes)
    checkpoint: Optional[str] = None

    @field_validator("recipe")
    @classmethod
    def known_recipe(cls, v):
        if v != "auto" and v not in list_recipes():
            raise ValueError(f"unknown recipe {v!r}; choose one of: auto, {', '.join(list_recipes())}")
        return v

    @field_validator("name")
    @classmethod
    def known_model(cls, v):
        if is_known_model(v):
            return v
        raise ValueError(f"unknown model {v!r}; choose one of: {', '.join(list_models())}")

    @field_validator("checkpoint")
    @classmethod
    def checkpoint_exists(cls, v):
        if v is not None and not Path(v).is_file():
            raise ValueError(f"checkpoint {v!r} does not exist")
        return v


class TrainParams(_Section):
    """One training phase; a value left out (null) is the model family's recipe's (filled in on validation)."""
    epochs: Optional[int] = Field(None, ge=0)
    lr: Optional[float] = Field(None, gt=0)
    optimizer: Optional[str] = None
    momentum: Optional[float] = Field(None, ge=0, lt=1)
    weight_decay: Optional[float] = Field(None, ge=0)
    schedule: Optional[str] = None
    warmup_epochs: Optional[int] = Field(None, ge=0)
    label_smoothing: Optional[float] = Field(None, ge=0, lt=1)
    clip_grad: Optional[float] = Field(None, gt=0)
    milestones: Optional[List[float]] = None  # multistep: fractions of the epochs where the lr drops (0.6 of 100: 60)

    @field_validator("milestones")
    @classmethod
    def fractions_in_order(cls, v):
        if v is None:
            return v
        if not all(0 < m < 1 for m in v) or list(v) != sorted(set(v)):
            raise ValueError(f"milestones {list(v)} must be increasing fractions of the epochs in (0, 1), "
                             f"e.g. [0.6, 0.8] for epochs 60 and 80 of 100")
        return [float(m) for m in v]

    @field_validator("optimizer")
    @classmethod
    def known_optimizer(cls, v):
        return v if v is None else _choice("optimizer", v, OPTIMIZERS)

    @field_validator("schedule")
    @classmethod
    def known_schedule(cls, v):
        return v if v is None else _choice("schedule", v, SCHEDULES)

    def recipe(self, epochs: Optional[int] = None) -> Recipe:
        """This phase as a :class:`pruning.train.Recipe` (values resolved, ``epochs`` replaced when given)."""
        fields = {k: getattr(self, k) for k in TrainParams.model_fields}
        fields["milestones"] = tuple(fields["milestones"])
        return Recipe(**{**fields, **({} if epochs is None else {"epochs": epochs})})


class FinetuneParams(TrainParams):
    distill: float = Field(0.0, ge=0, le=1)    # weight of distillation from the dense model (0: off, the paper's)
    temperature: float = Field(4.0, gt=0)      # distillation temperature


class SparsifyParams(_Section):
    epochs: int = Field(5, ge=0)
    lr: float = Field(0.01, gt=0)
    reg: Optional[float] = Field(None, ge=0)        # None: each sparsifier's own default strength
    delta_reg: Optional[float] = Field(None, ge=0)  # growing_reg's increase per epoch; None: its default


class PruneParams(_Section):
    scope: str = "protected"
    protect: float = Field(0.1, ge=0, lt=1)
    steps: int = Field(100, ge=1)
    calibration_batches: int = Field(4, ge=1)
    recalibrate_bn: int = Field(0, ge=0)  # training batches that re-estimate BatchNorm statistics after pruning
    head_ratio: float = Field(0.0, ge=0, lt=1)               # attention: fraction of whole heads removed
    head_dim_ratio: Optional[float] = Field(None, ge=0, lt=1)  # None: head dims ranked in the scope
    target: str = "macs"           # what a speedup divides: macs (the paper's) | params | latency (measured)
    round_to: Optional[int] = Field(None, ge=1)  # keep pruned widths a multiple of this (None: any width)
    latency_batch: int = Field(32, ge=1)         # the batch a latency target is measured at (as evaluate's)

    @field_validator("scope")
    @classmethod
    def known_scope(cls, v):
        return _scope(v)

    @field_validator("target")
    @classmethod
    def known_target(cls, v):
        if v not in TARGETS:
            raise ValueError(f"unknown target {v!r}; choose one of: {', '.join(TARGETS)}")
        return v


class EvaluateParams(_Section):
    latency_batch: int = Field(32, ge=1)
    latency_repeats: int = Field(20, ge=1)
    threads: Optional[int] = Field(None, ge=1)  # intra-op threads every latency is timed at (None: the process's)
    # more batches timed besides 1 and latency_batch (None: 256 on a GPU, none on a CPU)
    latency_sweep: Optional[List[int]] = None
    compile: bool = False  # also time the torch.compile'd model at the same batches

    @field_validator("latency_sweep")
    @classmethod
    def _positive_batches(cls, v):
        if v is not None and any(b < 1 for b in v):
            raise ValueError(f"latency_sweep batches must be >= 1, got {v}")
        return v

    def sweep_on(self, device) -> List[int]:
        """The extra batches timed on ``device``."""
        if self.latency_sweep is not None:
            return list(self.latency_sweep)
        return [GPU_SWEEP_BATCH] if device.type == "cuda" else []


GPU_SWEEP_BATCH = 256  # a GPU is far from full at batch 32


DENSE_MODES = ("shared", "per_seed")


def _seeds(v: list) -> list:
    """Seeds as given: integers >= 0 (numpy's and torch's generators take no negative seed), each once."""
    bad = [s for s in v if s < 0]
    if bad:
        raise ValueError(f"seeds must be integers >= 0, got {bad[0]}")
    repeated = sorted({s for s in v if v.count(s) > 1})
    if repeated:
        raise ValueError(f"seed {repeated[0]} is listed twice")
    return v

# PruningBench's method set: the built-in default, equal to params.yaml's (a profile's value is judged against it)
ALL_METHODS = ["random", "l1", "l2", "fpgm", "lamp", "bnscale", "taylor", "hessian", "obdc", "hrank", "thinet", "cp",
               "bnscale+bnscale_reg", "bnscale+group_lasso", "l2+group_norm", "l2+growing_reg", "l2+group_lasso"]


class BenchmarkParams(_Section):
    methods: List[str] = Field(default_factory=lambda: list(ALL_METHODS), min_length=1)
    speedups: List[float] = Field(default_factory=lambda: [2.0, 4.0], min_length=1)
    scopes: List[str] = Field(default_factory=lambda: ["protected"], min_length=1)
    # a trial per seed: it drives data order, augmentation, calibration batches, the random criterion, sparse
    # training and finetuning (and the dense pretraining when `dense` is per_seed)
    seeds: Annotated[List[StrictInt], AfterValidator(_seeds)] = Field(default_factory=lambda: [0, 1, 2],
                                                                         min_length=1)
    # shared: one dense baseline (the top-level seed) for every seed | per_seed
    dense: Annotated[str, AfterValidator(lambda v: _choice("dense", v, DENSE_MODES))] = "shared"
    concurrency: int = Field(2, ge=1)       # worker processes, each running a method's trials
    dask_address: Optional[str] = None      # spread trials with prefect-dask: "local" or a scheduler address

    @field_validator("methods")
    @classmethod
    def known_methods(cls, v):
        return _methods(v)

    @field_validator("speedups")
    @classmethod
    def speedups_above_one(cls, v):
        return _speedups(v)

    @field_validator("scopes")
    @classmethod
    def known_scopes(cls, v):
        return [_scope(s) for s in v]


class TuneParams(_Section):
    """Optuna search over pruning-ratio allocations (``prunebench tune``)."""
    methods: List[str] = Field(default_factory=lambda: ["l2"], min_length=1)  # what the scheduled study tunes
    speedup: float = 4.0                     # the MACs target every trial meets (single-objective mode)
    trials: int = Field(20, ge=1)            # finished (complete or pruned) trials the study reaches
    epochs: int = Field(2, ge=1)             # the short finetune of each trial, reported per epoch to the pruner
    final_epochs: Optional[int] = Field(None, ge=1)  # the best allocation's full finetune (default: finetune.epochs)
    layer_groups: int = Field(4, ge=1, le=16)  # at most this many layer groups, each with its own ratio
    ratio_range: List[float] = Field(default_factory=lambda: [0.2, 1.0])    # per layer-group ratio
    protect_range: List[float] = Field(default_factory=lambda: [0.05, 0.3])  # every group keeps >= this share
    steps: List[int] = Field(default_factory=lambda: [50, 100], min_length=1)  # iterative-steps choices
    multi_objective: bool = False            # accuracy vs MACs, no fixed target: a Pareto front
    sampler: str = "tpe"                     # tpe | random | nsga2
    pruner: str = "median"                   # median | hyperband | none (single-objective only)
    storage: str = "sqlite:///optuna.db"     # sqlite:///..., postgresql://..., or journal:<file>
    timeout: Optional[float] = Field(None, gt=0)  # seconds for this invocation (the study resumes later)

    @field_validator("methods")
    @classmethod
    def known_methods(cls, v):
        return _methods(v)

    @field_validator("speedup")
    @classmethod
    def speedup_above_one(cls, v):
        return _speedups([v])[0]

    @field_validator("ratio_range")
    @classmethod
    def ratio_range_ok(cls, v):
        return _range("ratio_range", v, lambda x: 0 < x <= 1, "within (0, 1]")

    @field_validator("protect_range")
    @classmethod
    def protect_range_ok(cls, v):
        return _range("protect_range", v, lambda x: 0 < x < 1, "within (0, 1): every group keeps a channel")

    @field_validator("steps")
    @classmethod
    def steps_ok(cls, v):
        if any(s < 1 for s in v):
            raise ValueError(f"every iterative-steps choice must be >= 1; got {v}")
        return sorted(set(v))

    @field_validator("sampler")
    @classmethod
    def known_sampler(cls, v):
        return _choice("sampler", v, ("tpe", "random", "nsga2"))

    @field_validator("pruner")
    @classmethod
    def known_pruner(cls, v):
        return _choice("pruner", v, ("median", "hyperband", "none"))


class Schedule(_Section):
    cron: str
    enabled: bool = True
    profile: Optional[str] = None   # a params.yaml profile the scheduled run applies

    @field_validator("cron")
    @classmethod
    def valid_cron(cls, v):
        from datetime import datetime

        from cronsim import CronSim, CronSimError  # what Prefect's scheduler stack uses; light to import
        try:
            CronSim(v, datetime(2000, 1, 1))
        except (CronSimError, ValueError):
            raise ValueError(f"{v!r} is not a cron expression (minute hour day-of-month month day-of-week)")
        if len(v.split()) != 5:
            raise ValueError(f"{v!r} must have 5 fields: minute hour day-of-month month day-of-week")
        return v


class ScheduleParams(_Section):
    """Prefect deployments ``prunebench serve`` registers: the benchmark and the tuning study, each on a cron."""
    timezone: str = "UTC"
    benchmark: Optional[Schedule] = Field(default_factory=lambda: Schedule(cron="0 2 * * *"))
    tune: Optional[Schedule] = Field(default_factory=lambda: Schedule(cron="0 3 * * 6"))

    @field_validator("timezone")
    @classmethod
    def known_timezone(cls, v):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (an IANA name such as UTC or Europe/Berlin)")
        return v


class ComputeParams(_Section):
    """Where every stage runs: checked against this machine before any work (a missing GPU is one line, exit 2)."""
    device: str = "auto"          # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    precision: str = "fp32"       # fp32 | bf16 | fp16: mixed-precision training (fp16 with loss scaling, CUDA)
    deterministic: bool = True    # reproducible kernels; false lets cuDNN autotune (faster, not bit-reproducible)
    channels_last: bool = False   # NHWC memory layout while training (faster convolutions on tensor cores)

    @field_validator("device")
    @classmethod
    def available_here(cls, v):
        from pruning.device import resolve_device
        try:
            resolve_device(v)
        except PruneBenchError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def precision_on_this_device(self):
        from pruning.device import check_precision, resolve_device
        try:
            check_precision(self.precision, resolve_device(self.device))
        except PruneBenchError as e:
            raise ValueError(str(e)) from None
        return self

    def torch_device(self):
        from pruning.device import resolve_device
        return resolve_device(self.device)


class TrackingParams(_Section):
    mlflow_uri: str = "sqlite:///mlflow.db"


class Params(_Section):
    profile: Optional[str] = None           # a profiles.<name> to apply (what `dvc exp run -S profile=quick` sets)
    seed: int = 0
    compute: ComputeParams = Field(default_factory=ComputeParams)
    data: DataParams = Field(default_factory=DataParams)
    model: ModelParams = Field(default_factory=ModelParams)
    pretrain: TrainParams = Field(default_factory=TrainParams)
    sparsify: SparsifyParams = Field(default_factory=SparsifyParams)
    prune: PruneParams = Field(default_factory=PruneParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    schedules: ScheduleParams = Field(default_factory=ScheduleParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    profiles: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def resolve_recipe(self):
        """Fill every training value left out with the model family's recipe, so the rest of the program (and every
        key hashed from these params) sees the values that train."""
        family = recipe_for(self.model.name, self.model.recipe)
        for phase in ("pretrain", "finetune"):
            section, base = getattr(self, phase), getattr(family, phase)
            for name in TrainParams.model_fields:
                if getattr(section, name) is None:
                    value = getattr(base, name)
                    setattr(section, name, list(value) if isinstance(value, tuple) else value)
        return self

    @model_validator(mode="after")
    def model_takes_kwargs(self):
        """``model.kwargs`` the model does not take are refused before any work (the model is built once to see)."""
        if self.model.kwargs:
            size = input_size_of(self.data.dataset, self.data.input_size)
            try:
                create_model(self.model.name, 10, 3, size, **self.model.kwargs)
            except PruneBenchError as e:
                raise ValueError(str(e)) from None
        return self

    def family_recipe(self) -> FamilyRecipe:
        return recipe_for(self.model.name, self.model.recipe)

    @property
    def is_detection(self) -> bool:
        """A YOLO model or a detection dataset: trials run through ultralytics' trainer and validator."""
        from pruning.detection import is_detection_dataset
        from pruning.models.yolo import is_yolo
        return is_yolo(self.model.name) or is_detection_dataset(self.data.dataset)


def _methods(names: list) -> list:
    for name in names:
        try:
            resolve(name)
        except PruneBenchError as e:
            raise ValueError(str(e))
    return names


def _speedups(v: list) -> list:
    for speedup in v:
        try:
            check_prune_args(speedup)  # the library's own rule
        except PruneBenchError as e:
            raise ValueError(str(e)) from None
    return v


def _range(name: str, v: list, ok, what: str) -> list:
    if len(v) != 2:
        raise ValueError(f"{name} takes [low, high]; got {v}")
    low, high = v
    if not (ok(low) and ok(high)):
        raise ValueError(f"{name} {v} must lie {what}")
    if not low < high:
        raise ValueError(f"{name} {v} is empty or inverted: low must be < high")
    return [float(low), float(high)]


def _choice(name: str, v: str, choices: tuple) -> str:
    if v not in choices:
        raise ValueError(f"unknown {name} {v!r}; choose one of: {', '.join(choices)}")
    return v


def _scope(v: str) -> str:
    if v not in SCOPES:
        raise ValueError(f"unknown scope {v!r}; choose one of: {', '.join(SCOPES)}")
    return v


def load_params(path: str | Path = "params.yaml", profile: Optional[str] = None,
                overrides: Optional[dict] = None, required: bool = False) -> Params:
    """Read, merge (profile, then overrides: nested dicts), and validate; every problem is listed in one error.

    A missing file means the built-in defaults, unless ``required`` (the user named the file explicitly).
    """
    path = Path(path)
    raw = read_yaml(path) if path.exists() or required else {}
    profile = profile or raw.get("profile")
    if profile:
        chosen = _profile(raw, profile, path)
        refuse_conflicts(raw, chosen, profile, path)
        raw = deep_merge(raw, chosen)
        raw["profile"] = profile
    raw = deep_merge(raw, overrides or {})
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise PruneBenchError(format_errors(e, path))


def read_yaml(path: Path) -> dict:
    """params.yaml as a mapping; a missing, unreadable or malformed file is one line naming where it breaks."""
    if not path.exists():
        raise PruneBenchError(f"params file {path} does not exist")
    if not path.is_file():
        raise PruneBenchError(f"params file {path} is not a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PruneBenchError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})")
    except OSError as e:
        raise PruneBenchError(f"cannot read {path}: {e.strerror or type(e).__name__}")
    except yaml.YAMLError as e:
        raise PruneBenchError(f"{path} is not valid YAML: {_yaml_problem(e)}")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PruneBenchError(f"{path} must hold a mapping of stage sections, not a {type(raw).__name__}")
    return raw


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: the problem and where it is (1-based line and column)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or one_line(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _profile(raw: dict, name: str, path: Path) -> dict:
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise PruneBenchError(f"{path}: profiles must be a mapping of profile names to overrides")
    if name not in profiles:
        raise PruneBenchError(f"unknown profile {name!r}; {path} defines: {', '.join(map(str, profiles)) or 'none'}")
    if not isinstance(profiles[name], dict):
        raise PruneBenchError(f"{path}: profiles.{name} must be a mapping of stage sections (like "
                              f"{{pretrain: {{epochs: 2}}}}), not {profiles[name]!r}")
    return profiles[name]


def refuse_conflicts(raw: dict, profile_values: dict, profile: str, path: Path) -> None:
    """A value the user set in params.yaml (not the built-in default) that the profile would silently replace
    with another value is refused, naming the key, both values and the ways out."""
    defaults = Params().model_dump()
    for key, own, theirs in _overlaps(raw, profile_values):
        default = _lookup(defaults, key)
        # null is "the default" (a training value left to the recipe)
        if default is not _MISSING and own is not None and own != default and own != theirs:
            raise PruneBenchError(
                f"{path} sets {key}: {own!r} but profile {profile!r} sets {key}: {theirs!r}; keep one of them "
                f"(set {key} in profiles.{profile}, or restore its default {default!r}, or run without the profile)")


_MISSING = object()


def _overlaps(raw: dict, profile_values: dict, prefix: str = ""):
    """(dotted key, params.yaml value, profile value) for every leaf the profile sets and params.yaml also holds."""
    for name, theirs in profile_values.items():
        key, own = f"{prefix}{name}", raw.get(name, _MISSING) if isinstance(raw, dict) else _MISSING
        if own is _MISSING:
            continue
        if isinstance(theirs, dict) and isinstance(own, dict):
            yield from _overlaps(own, theirs, f"{key}.")
        else:
            yield key, own, theirs


def _lookup(tree, dotted: str):
    for name in dotted.split("."):
        if not isinstance(tree, dict) or name not in tree:
            return _MISSING  # an unknown key: validation names it
        tree = tree[name]
    return tree


# What each DVC stage's command reads, after the profile is applied: `prunebench params` writes it to
# params/<stage>.json, the stage runs on that file alone, and DVC reruns a stage only when its file changes.
STAGE_PARAMS = {
    "prepare": {"data": {"dataset", "root", "download", "prepared_dir", "input_size"}},
    "pretrain": {"seed": True, "compute": True, "data": True, "model": True, "pretrain": True},
    # not `tracking`: where results are logged is no input of the results (the command reads it from params.yaml)
    "benchmark": {"seed": True, "compute": True, "data": True, "model": True, "pretrain": True,  # dense.pt current?
                  "sparsify": True, "prune": True, "finetune": True, "evaluate": True, "benchmark": True},
}


def stage_params(params: Params, stage: str) -> dict:
    """The effective values one stage reads (JSON-ready; validated again when the stage loads them)."""
    return params.model_dump(mode="json", include=STAGE_PARAMS[stage])


def format_errors(error: ValidationError, path: Path) -> str:
    """Every validation problem, on one line: ``params.yaml: 2 problems: a.b: ...; c: ...``."""
    problems = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}")
    count = f"{len(problems)} problems: " if len(problems) > 1 else ""
    return f"{path}: {count}{'; '.join(problems)}"


def deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
