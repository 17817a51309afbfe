"""One trial's record: what a trial measured, built once from what its steps report.

Every trial (the CLI's ``prunebench prune``, a benchmark trial, a tuned trial's final run and a YOLO trial)
becomes a :class:`TrialRecord` through :meth:`TrialRecord.from_steps` or :meth:`TrialRecord.from_detection`;
``result.json``, ``reports/benchmark.json``, the leaderboard and MLflow all read that record, so a figure means
the same thing everywhere.  What the library applied is what is recorded: ``protect`` is the protection
:func:`pruning.prune` used (0 for the ``global`` scope, whatever ``prune.protect`` says).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from .stats import bootstrap_interval

TRIAL_RESAMPLES = 2000  # a trial's bootstrap (about 80 ms); its ends move by about one image between resampling seeds

# The metrics every classification trial logs to MLflow (besides the derived leaderboard columns).
METRICS = ("acc_dense", "acc_pruned", "acc_finetuned", "macs_dense", "macs_pruned", "params_dense",
           "params_pruned", "speedup", "latency_speedup", "seconds_sparsify", "seconds_prune", "seconds_finetune",
           "seconds_evaluate", "seconds_total", "seconds_calibrate", "latency_dense_b1", "latency_pruned_b1",
           "acc_finetuned_lo", "acc_finetuned_hi", "steps_taken", "calibration_samples", "protect", "finetune_epochs",
           "achieved")
DETECTION = ("map50_95_dense", "map50_dense", "map50_95_pruned", "map50_pruned", "map50_95_finetuned",
             "map50_finetuned", "imgsz", "seconds_per_step")


@dataclass
class TrialRecord:
    """A trial's outcome; ``status`` is ``ok`` or ``failed`` (then ``error`` says why and most fields are None)."""
    method: str
    scope: str
    speedup_target: Optional[float]
    seed: Optional[int] = None                # the trial's seed (data order, criterion draws, training)
    status: str = "ok"
    error: Optional[str] = None
    task: str = "classify"                    # or "detect" (YOLO): mAP fields instead of accuracies
    # what pruning.prune reports
    speedup: Optional[float] = None           # dense MACs / pruned MACs, reached
    target: str = "macs"                      # what speedup_target divides: macs | params | latency
    achieved: Optional[float] = None          # the target's speedup reached (latency: confirmed by timing)
    round_to: Optional[int] = None            # the channel multiple pruned widths were kept to
    latency_check: dict = field(default_factory=dict)  # a latency target's confirming timing (pruning.latency)
    target_reached: Optional[bool] = None
    macs_dense: Optional[int] = None
    macs_pruned: Optional[int] = None
    params_dense: Optional[int] = None
    params_pruned: Optional[int] = None
    protect: Optional[float] = None           # as applied
    steps_taken: Optional[int] = None
    max_steps: Optional[int] = None
    calibration_samples: Optional[int] = None
    warnings: list = field(default_factory=list)
    # accuracy (%) on the test split: dense, right after pruning, after finetuning (= after pruning at 0 epochs)
    acc_dense: Optional[float] = None
    acc_pruned: Optional[float] = None
    acc_finetuned: Optional[float] = None
    acc_finetuned_lo: Optional[float] = None  # 95% bootstrap interval of acc_finetuned over the test images
    acc_finetuned_hi: Optional[float] = None
    test_correct: Optional[str] = None        # per test image, in the split's order: 1 right, 0 wrong
    finetune_epochs: int = 0
    # CPU latency (seconds per batch) and its speedups beside the MACs speedup
    latency_dense_b1: Optional[float] = None
    latency_pruned_b1: Optional[float] = None
    latency_speedup: Optional[float] = None   # batch 1
    latency_batch: Optional[int] = None
    latency_speedup_batch: Optional[float] = None
    latency_speedup_range: Optional[list] = None  # batch 1: min and max over the interleaved timing rounds
    latency_threads: Optional[int] = None
    latency_device: Optional[str] = None      # what every latency was timed on (cpu (2 cores), cuda:0 (NVIDIA ...))
    # dense / pruned latency at every batch timed (b1, b32, b256, ...; compiled_b1 ... with evaluate.compile)
    latency_sweep: dict = field(default_factory=dict)
    # wall seconds per step
    seconds_sparsify: float = 0.0
    seconds_calibrate: float = 0.0
    seconds_prune: float = 0.0
    seconds_finetune: float = 0.0
    seconds_evaluate: float = 0.0
    seconds_total: float = 0.0
    sparsify_history: list = field(default_factory=list)
    finetune_history: list = field(default_factory=list)
    sparsity: dict = field(default_factory=dict)  # how sparse training moved the group norms (pruning.sparsity)
    checkpoint: Optional[str] = None
    # detection (task "detect")
    map50_95_dense: Optional[float] = None
    map50_dense: Optional[float] = None
    map50_95_pruned: Optional[float] = None
    map50_pruned: Optional[float] = None
    map50_95_finetuned: Optional[float] = None
    map50_finetuned: Optional[float] = None
    imgsz: Optional[int] = None
    seconds_per_step: Optional[float] = None
    # the run that computed it (set by the benchmark flow)
    trial_key: Optional[str] = None
    run_id: Optional[str] = None
    cached: bool = False
    seconds_wall: Optional[float] = None
    recipe: dict = field(default_factory=dict)  # the recipe card (see flows.stages.recipe_card)
    extra: dict = field(default_factory=dict)  # a tuned trial's allocation and study, a detection dataset, ...

    # ------------------------------------------------------------------ built from the steps
    @classmethod
    def from_steps(cls, method: str, scope: str, speedup_target: Optional[float], prune: dict, final: dict,
                   dense: dict, latency_batch: int, finetune: Optional[dict] = None, sparsify: Optional[dict] = None,
                   finetune_epochs: int = 0, seed: Optional[int] = None, recipe: Optional[dict] = None,
                   **extra) -> "TrialRecord":
        """A classification trial from its steps' outputs: ``prune`` (the prune stage: :meth:`PruneReport.summary`
        plus ``acc_pruned``), ``final`` and ``dense`` (evaluations of the finetuned and dense models),
        ``finetune`` and ``sparsify`` (their stages' results, absent when the step did not run)."""
        finetune, sparsify = finetune or {}, sparsify or {}
        correct = final.get("correct")
        lo, hi = bootstrap_interval([c == "1" for c in correct], n_resamples=TRIAL_RESAMPLES) if correct \
            else (None, None)
        seconds = {"seconds_sparsify": sparsify.get("seconds_sparsify", 0.0),
                   "seconds_prune": prune["seconds_prune"], "seconds_finetune": finetune.get("seconds_finetune", 0.0),
                   "seconds_evaluate": final["seconds_evaluate"]}
        return cls(
            method=method, scope=scope, speedup_target=speedup_target, seed=seed, **_report_fields(prune),
            acc_dense=dense["acc"], acc_pruned=prune["acc_pruned"], acc_finetuned=final["acc"], acc_finetuned_lo=lo,
            acc_finetuned_hi=hi, test_correct=correct, finetune_epochs=finetune_epochs, recipe=dict(recipe or {}), latency_dense_b1=dense["latency_b1"],
            latency_pruned_b1=final["latency_b1"], latency_batch=latency_batch, **_latency_speedups(
                dense, final, latency_batch), latency_device=final.get("device"),
            latency_sweep=_sweep_speedups(dense, final),
            seconds_calibrate=prune.get("seconds_calibrate", 0.0), **seconds,
            seconds_total=sum(seconds.values()), sparsify_history=sparsify.get("sparsify_history", []),
            sparsity=dict(sparsify.get("sparsity") or {}),
            finetune_history=finetune.get("finetune_history", []), checkpoint=final.get("checkpoint"), extra=extra)

    @classmethod
    def from_detection(cls, method: str, scope: str, speedup_target: float, prune: dict, dense: dict,
                       pruned: dict, final: dict, finetune_epochs: int, seconds_finetune: float,
                       seconds_total: float, checkpoint: str, imgsz: int, seed: Optional[int] = None,
                       recipe: Optional[dict] = None, **extra) -> "TrialRecord":
        """A YOLO trial: ``prune`` is the report's summary, the others ``evaluate_yolo`` results (``final`` is
        ``pruned`` when nothing was finetuned).  The ``acc_*`` fields hold the headline score the leaderboard
        ranks by, mAP50-95 in percent (the summary's ``metric`` says so); the ``map*`` fields keep both mAPs."""
        return cls(
            method=method, scope=scope, speedup_target=speedup_target, seed=seed, task="detect",
            **_report_fields(prune), acc_dense=100.0 * dense["map50_95"], acc_pruned=100.0 * pruned["map50_95"],
            acc_finetuned=100.0 * final["map50_95"], recipe=dict(recipe or {}),
            map50_95_dense=dense["map50_95"], map50_dense=dense["map50"], map50_95_pruned=pruned["map50_95"],
            map50_pruned=pruned["map50"], map50_95_finetuned=final["map50_95"], map50_finetuned=final["map50"],
            finetune_epochs=finetune_epochs, latency_dense_b1=dense["latency_b1"],
            latency_pruned_b1=final["latency_b1"], latency_batch=8, **_latency_speedups(dense, final, 8),
            seconds_calibrate=prune.get("seconds_calibrate", 0.0), seconds_prune=prune["seconds_prune"],
            seconds_per_step=prune["seconds_prune"] / max(prune["steps_taken"], 1),
            seconds_finetune=seconds_finetune, seconds_total=seconds_total, checkpoint=checkpoint, imgsz=imgsz,
            extra=extra)

    @classmethod
    def failed(cls, method: str, scope: str, speedup_target: Optional[float], error: str,
               seed: Optional[int] = None) -> "TrialRecord":
        return cls(method=method, scope=scope, speedup_target=speedup_target, seed=seed, status="failed", error=error)

    # ------------------------------------------------------------------ as data
    def to_dict(self) -> dict:
        """Flat JSON-ready data: the fields (detection ones only for a detection trial, the latency speedup at the
        latency batch also as ``latency_speedup_b<batch>``) and ``extra``'s keys at the top level."""
        data = asdict(self)
        extra = data.pop("extra")
        if self.task != "detect":
            for name in DETECTION:
                data.pop(name)
        if self.latency_batch is not None:
            data[f"latency_speedup_b{self.latency_batch}"] = self.latency_speedup_batch
        return {**data, **extra}

    @classmethod
    def from_dict(cls, data: dict) -> "TrialRecord":
        """The inverse of :meth:`to_dict`: unknown keys go back to ``extra``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        derived = f"latency_speedup_b{data.get('latency_batch')}"
        extra = {k: v for k, v in data.items() if k not in names and k != derived}
        return cls(**{k: v for k, v in data.items() if k in names}, extra={**data.get("extra", {}), **extra})

    def derived(self) -> dict:
        """The leaderboard's derived columns, so MLflow's runs table can show what the leaderboard shows."""
        try:
            return {"delta_acc": self.acc_finetuned - self.acc_dense,
                    "params_kept": self.params_pruned / self.params_dense,
                    "macs_kept": self.macs_pruned / self.macs_dense}
        except (TypeError, ZeroDivisionError):
            return {}

    def metrics(self) -> dict:
        """The numeric figures MLflow logs for this trial."""
        names = METRICS + (DETECTION if self.task == "detect" else ())
        out = {k: float(getattr(self, k)) for k in names if isinstance(getattr(self, k), (int, float))}
        if self.latency_speedup_batch is not None:
            out[f"latency_speedup_b{self.latency_batch}"] = self.latency_speedup_batch
        out.update({f"latency_speedup_{batch}": v for batch, v in self.latency_sweep.items()
                    if f"latency_speedup_{batch}" not in out and batch != "b1"})
        out["target_reached"] = float(bool(self.target_reached))
        return {**out, **self.derived(), **{k: float(v) for k, v in self.sparsity.items()}}


def _sweep_speedups(dense: dict, final: dict) -> dict:
    """Dense over pruned median latency at every batch both evaluations timed, plain and compiled."""
    sweep = {}
    for key, pruned in final.items():
        timed = key.startswith(("latency_b", "compiled_latency_b")) and not key.endswith("_spread")
        if timed and dense.get(key) and pruned:
            sweep[key.replace("latency_", "")] = dense[key] / pruned
    return dict(sorted(sweep.items(), key=lambda kv: (kv[0].startswith("compiled"), int(kv[0].rsplit("b", 1)[1]))))


def _latency_speedups(dense: dict, final: dict, batch: int) -> dict:
    """Dense over pruned latency at batch 1 and ``batch``: the interleaved timing of the two models when the
    evaluation made one (it names the ``latency_speedup_b*`` keys), else the ratio of their separate medians."""
    key = f"latency_b{batch}"
    return {"latency_speedup": final.get("latency_speedup_b1", dense["latency_b1"] / final["latency_b1"]),
            "latency_speedup_batch": final.get(f"latency_speedup_b{batch}", dense[key] / final[key]),
            "latency_speedup_range": final.get("latency_speedup_b1_range"),
            "latency_threads": final.get("latency_threads")}


REPORT_FIELDS = ("speedup", "target", "achieved", "round_to", "target_reached", "macs_dense", "macs_pruned", "params_dense", "params_pruned",
                 "protect", "steps_taken", "max_steps", "calibration_samples", "warnings")


def _report_fields(report: dict) -> dict:
    """The record's fields that :meth:`pruning.PruneReport.summary` reports."""
    fields = {k: report[k] for k in REPORT_FIELDS if k in report}
    if report.get("latency"):
        fields["latency_check"] = dict(report["latency"])
    return fields
