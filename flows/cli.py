"""The ``prunebench`` command line.  Bad input: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import contextlib
import functools
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .env import quiet_environment

quiet_environment()

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Benchmark and apply structural pruning (PruningBench protocol on Torch-Pruning).")

def _read_local_params() -> dict:
    """./params.yaml as plain data for help texts only (no validation: a broken file is reported when loaded)."""
    import yaml
    try:
        raw = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


_LOCAL_PARAMS = _read_local_params()


def default_from(key: str) -> str:
    """What a flag's help shows as its default: the value under ``key`` in ./params.yaml (a flag overrides it)."""
    value = _LOCAL_PARAMS
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return f"params.yaml {key}"
    shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"params.yaml {key}: {shown}"


# Filled in from the model registry and the dataset list when help is shown (see :func:`registry_help`): importing
# the registries costs seconds (torch), which a command that is not asked for help should not pay.
MODELS_HELP = "{models}"
DATASETS_HELP = "{datasets}"


def model_option(help_text: str = MODELS_HELP):
    return typer.Option(None, "--model", show_default=default_from("model.name"), help=help_text)


def dataset_option(help_text: str = DATASETS_HELP):
    return typer.Option(None, "--dataset", show_default=default_from("data.dataset"), help=help_text)


def registry_help() -> dict:
    """The help texts' choices, from the registries themselves."""
    from pruning.data import DATASETS
    from pruning.detection.data import DETECTION_DATASETS
    from pruning.models import list_models
    from pruning.models.yolo import is_yolo
    models = list_models()
    datasets = list(dict.fromkeys(DATASETS + DETECTION_DATASETS))
    return {"{models}": " | ".join(models),
            "{classifiers}": " | ".join(m for m in models if not is_yolo(m)),
            "{datasets}": " | ".join(datasets),
            "{classification_datasets}": " | ".join(d for d in DATASETS if d not in DETECTION_DATASETS
                                                    and not d.endswith(".yaml"))}


PARAMS = typer.Option(None, "--params", show_default="params.yaml",
                      help="the params.yaml to read defaults from (built-in defaults when ./params.yaml is absent)")
PROFILE = typer.Option(None, "--profile", help="apply the overrides under profiles.<name> in params.yaml")
DEVICE = typer.Option(None, "--device", show_default=default_from("compute.device"),
                      help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")


def compute_overrides(device: Optional[str]) -> dict:
    """``--device`` as a params override (checked with the rest of the params, before any work)."""
    return {"compute": {"device": device}} if device else {}


def show_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"
    typer.echo(f"prunebench {of('prunebench')} (torch {of('torch')}, torch-pruning {of('torch-pruning')}, "
               f"prefect {of('prefect')}, mlflow {of('mlflow')}, optuna {of('optuna')}, dvc {of('dvc')})")
    raise typer.Exit()


@app.callback()
def root(_version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                       help="print prunebench's version (and its main libraries') and exit")):
    """Benchmark and apply structural pruning (PruningBench protocol on Torch-Pruning)."""


def fail(message: str) -> None:
    """One line on stderr and exit code 2: multi-line messages (a library's own) are folded into one."""
    typer.echo(f"error: {one_line_message(message)}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors():
    """Bad input raised in the block (a PruneBenchError) becomes one line on stderr and exit code 2; prunebench's
    own warnings are shown (library noise stays quiet)."""
    from pruning.errors import PruneBenchError
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    except PruneBenchError as e:
        fail(str(e))
    finally:
        for w in caught:
            if "pruning" in (w.filename or "") and "site-packages" not in (w.filename or ""):
                typer.echo(f"warning: {w.message}", err=True)


def guarded(command):
    """A command whose bad input (anywhere in it) is one line and exit code 2: see :func:`user_errors`."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        with user_errors():
            return command(*args, **kwargs)
    return run


SMOKE_TEST_PROFILE = "quick"


def load(params: Optional[Path], profile: Optional[str], overrides: Optional[dict] = None):
    """params.yaml (or the file named by ``--params``, which must then exist), validated; bad input exits 2."""
    from .config import load_params
    with user_errors():
        return load_params(params or Path("params.yaml"), profile, overrides, required=params is not None)


@app.command()
@guarded
def methods(as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """List the registered criteria and sparsifiers."""
    from pruning.methods import list_methods
    rows = [m.describe() for m in list_methods()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table("name", "stage", "needs data", "summary")
    for r in rows:
        table.add_row(r["name"], r["stage"], "yes" if r["needs_data"] else "no", r["summary"])
    Console().print(table)


@app.command()
@guarded
def prune(
    model: Optional[str] = model_option(),
    dataset: Optional[str] = dataset_option(),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=4, show_default=default_from("data.input_size"),
                                             help="image side in pixels (default: the dataset's own; digits 8)"),
    method: str = typer.Option(..., "--method", help="a criterion, or criterion+sparsifier (see `prunebench methods`)"),
    speedup: float = typer.Option(..., "--speedup", help="dense / pruned (> 1) of the --target: MACs by default"),
    target: Optional[str] = typer.Option(None, "--target", show_default=default_from("prune.target"),
                                         help="macs | params | latency (measured here, at --latency-batch)"),
    round_to: Optional[int] = typer.Option(None, "--round-to", min=1, show_default=default_from("prune.round_to"),
                                           help="keep every pruned width a multiple of this many channels"),
    latency_batch: Optional[int] = typer.Option(None, "--latency-batch", min=1,
                                                show_default=default_from("prune.latency_batch"),
                                                help="batch size a latency target is measured at"),
    scope: Optional[str] = typer.Option(None, "--scope", show_default=default_from("prune.scope"),
                                        help="local | global | protected | isomorphic"),
    model_kwargs: Optional[str] = typer.Option(None, "--model-kwargs", show_default=default_from("model.kwargs"),
                                               help="to timm.create_model: patch_size=8,depth=6 or a JSON object"),
    recipe: Optional[str] = typer.Option(None, "--recipe", show_default=default_from("model.recipe"),
                                         help="training recipe: auto (the model family's) or a name"),
    recalibrate_bn: Optional[int] = typer.Option(None, "--recalibrate-bn", min=0,
                                                 show_default=default_from("prune.recalibrate_bn"),
                                                 help="training batches re-estimating BatchNorm statistics after pruning"),
    distill: Optional[float] = typer.Option(None, "--distill", show_default=default_from("finetune.distill"),
                                            help="weight of distillation from the dense model while finetuning, in [0, 1]"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="dense checkpoint to prune (else a cached baseline)"),
    finetune_epochs: Optional[int] = typer.Option(None, "--finetune-epochs", min=0, show_default=default_from("finetune.epochs"),
                                                  help="finetuning epochs after pruning"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the pruned checkpoint"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    device: Optional[str] = DEVICE,
    params_file: Optional[Path] = PARAMS,
    profile: Optional[str] = PROFILE,
):
    """Prune one model to a speedup target (MACs, params or measured latency) and report accuracy, MACs, params
    and latency."""
    overrides = {"data": {k: v for k, v in {"dataset": dataset, "input_size": input_size}.items() if v},
                 "model": {k: v for k, v in {"name": model, "recipe": recipe,
                                             "kwargs": parse_model_kwargs(model_kwargs)}.items() if v is not None},
                 "prune": {k: v for k, v in {"scope": scope, "recalibrate_bn": recalibrate_bn, "target": target,
                                             "round_to": round_to, "latency_batch": latency_batch}.items()
                           if v is not None},
                 "finetune": {"distill": distill} if distill is not None else {}, **compute_overrides(device)}
    params = load(params_file, profile, overrides)
    import pruning

    from .progress import reporting
    pruning.resolve(method)
    pruning.check_prune_args(speedup, params.prune.scope, params.prune.protect, params.prune.steps)
    from . import stages
    if params.is_detection:  # YOLO on a detection dataset: ultralytics trainer and validator
        if checkpoint is not None and not checkpoint.is_file():
            fail(f"checkpoint {checkpoint} does not exist")
        out = out or Path("models") / f"pruned-{params.model.name}-{method}-{speedup:g}x.pt"
        with tempfile.TemporaryDirectory(prefix="prunebench-") as work:
            record = stages.detection_trial(params, method, speedup, params.prune.scope, checkpoint, out,
                                            Path(work), finetune_epochs=finetune_epochs)
        typer.echo(json.dumps(record.to_dict(), default=float)) if as_json else show_result(record.to_dict())
        return
    stages.preflight(params)  # input size and a trial prune, before any training
    stages.check_reachable(params, speedup)
    if checkpoint is None:
        typer.echo(f"dense baseline: {params.model.name} on {params.data.dataset} (cached after the first run)", err=True)
        with reporting() as reporter:
            checkpoint = stages.dense_baseline(params, on_epoch=reporter.on_epoch("pretrain", params.pretrain.epochs))
    elif not checkpoint.is_file():
        fail(f"checkpoint {checkpoint} does not exist")
    out = out or Path("models") / f"pruned-{params.model.name.replace('/', '-')}-{method}-{speedup:g}x.pt"
    epochs = params.finetune.epochs if finetune_epochs is None else finetune_epochs
    with tempfile.TemporaryDirectory(prefix="prunebench-") as work, reporting() as reporter:
        record = stages.run_trial(params, method, speedup, params.prune.scope, checkpoint, out, Path(work),
                                  finetune_epochs=epochs, on_epoch=reporter.on_epoch("finetune", epochs))
    result = record.to_dict()
    if as_json:
        typer.echo(json.dumps(result, default=float))
    else:
        show_result(result)


def parse_model_kwargs(text: Optional[str]) -> Optional[dict]:
    """``--model-kwargs patch_size=8,depth=6`` (values read as YAML scalars) or a JSON object."""
    if text is None:
        return None
    import yaml
    text = text.strip()
    try:
        if text.startswith("{"):
            value = json.loads(text)
        else:
            value = {}
            for item in filter(None, (part.strip() for part in text.split(","))):
                key, sep, raw = item.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"{item!r} is not key=value")
                value[key.strip()] = yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as e:
        fail(f"--model-kwargs takes key=value pairs (patch_size=8,depth=6) or a JSON object: {e}")
    if not isinstance(value, dict):
        fail("--model-kwargs takes key=value pairs or a JSON object")
    return value


# --------------------------------------------------------------------------- the orchestrated workflow
def parse_seeds(values: List[str]) -> list[int]:
    """``--seeds 0,1,2`` (or repeated): integers >= 0, each once, at least one."""
    items = _split_list(values) or []
    try:
        seeds = [int(v) for v in items]
    except ValueError:
        fail(f"--seeds takes integers, e.g. 0,1,2; got {','.join(items)}")
    if not seeds:
        fail("--seeds needs at least one seed")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        fail(f"--seeds takes distinct integers >= 0; got {','.join(items)}")
    return seeds


def _split_list(values: Optional[List[str]]) -> Optional[list]:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def start_server():
    """Start Prefect's temporary server first, so it boots while params are validated and torch loads."""
    from .server import spawn_temporary_server
    spawn_temporary_server()


def run_flow(fn, uri, *args, **kwargs):
    """Install progress output, start Prefect and MLflow side by side, run a flow."""
    from .benchmark import warm_up
    from .progress import reporting
    with reporting(to_prefect_runs=True):
        warm_up(uri)
        return fn(*args, **kwargs)


@app.command("params")
@guarded
def resolve_params(out: Path = typer.Option(Path("params"), "--out", help="folder for <stage>.json"),
                   params_file: Optional[Path] = PARAMS, profile: Optional[str] = PROFILE):
    """Write each DVC stage's effective params (profile applied) to <out>/<stage>.json, the stage's only input."""
    from pruning import fileio

    from .config import STAGE_PARAMS, stage_params
    params = load(params_file, profile)
    for stage in STAGE_PARAMS:
        path = fileio.write_json(Path(out) / f"{stage}.json", stage_params(params, stage), indent=2)
        typer.echo(f"{stage}: {path}", err=True)


@app.command()
@guarded
def prepare(params_file: Optional[Path] = PARAMS, profile: Optional[str] = PROFILE):
    """Materialise the dataset into data/<name>/ (a DVC output)."""
    start_server()
    params = load(params_file, profile)
    from .benchmark import prepare_flow
    run_flow(prepare_flow, None, params.model_dump())


@app.command()
@guarded
def pretrain(out: Path = typer.Option(Path("models/dense.pt"), "--out", help="where to write the dense checkpoint"),
             device: Optional[str] = DEVICE, params_file: Optional[Path] = PARAMS, profile: Optional[str] = PROFILE):
    """Train the dense baseline into models/dense.pt (a DVC output); skipped when it is up to date."""
    start_server()
    params = load(params_file, profile, compute_overrides(device))
    from . import stages
    from .benchmark import pretrain_flow
    stages.preflight(params)
    path = run_flow(pretrain_flow, None, params.model_dump(), str(out))
    typer.echo(f"dense baseline: {path}", err=True)


@app.command()
@guarded
def export(checkpoint: Path = typer.Option(..., "--checkpoint", help="a prunebench checkpoint, e.g. models/dense.pt"),
           out: Path = typer.Option(..., "--out", help="weights.safetensors or weights.pth (the model's own key names: "
                                                       "timm's for timm/<name>); an ultralytics .pt for YOLO; "
                                                       "model.onnx (dense or pruned) for deployment")):
    """Export a checkpoint for other tools: a dense model's weights (.safetensors, .pth, or .pt for YOLO, which
    model.checkpoint reads back), or any model as ONNX, timed in ONNX Runtime beside PyTorch when it is installed."""
    from pruning.export import ONNX_SUFFIX, export_weights
    path = export_weights(checkpoint, out)
    typer.echo(f"{'model' if path.suffix == ONNX_SUFFIX else 'weights'}: {path}", err=True)
    if path.suffix == ONNX_SUFFIX:
        typer.echo(runtime_latencies(checkpoint, path), err=True)


def runtime_latencies(checkpoint: Path, onnx_path: Path) -> str:
    """Batch-1 latency of the checkpoint in PyTorch and of its ONNX export in ONNX Runtime, at the same threads."""
    import importlib.util

    import torch

    import pruning
    from pruning import latency
    if importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime is not installed (pip install 'prunebench[onnx]'): no runtime latency measured"
    model, meta = pruning.load_checkpoint(checkpoint)
    images = torch.randn(1, meta["in_chans"], meta["input_size"], meta["input_size"])
    torch_time = latency.measure(model, images)
    ort_time = latency.measure(onnx_path, images, threads=torch_time.threads)
    return (f"latency at batch 1, {torch_time.threads} threads (median of {torch_time.repeats}): PyTorch "
            f"{torch_time.median * 1e3:.2f} ms, ONNX Runtime {ort_time.median * 1e3:.2f} ms")



@app.command()
@guarded
def benchmark(
    methods: Optional[List[str]] = typer.Option(None, "--methods", show_default=default_from("benchmark.methods"),
                                                help="methods to run (repeat or comma-separate)"),
    speedups: Optional[List[str]] = typer.Option(None, "--speedups", show_default=default_from("benchmark.speedups"),
                                                 help="speedup targets of the --target, e.g. 2,4"),
    target: Optional[str] = typer.Option(None, "--target", show_default=default_from("prune.target"),
                                         help="macs | params | latency: rank methods at equal MACs or at equal "
                                              "measured latency"),
    round_to: Optional[int] = typer.Option(None, "--round-to", min=1, show_default=default_from("prune.round_to"),
                                           help="keep every pruned width a multiple of this many channels"),
    scopes: Optional[List[str]] = typer.Option(None, "--scope", "--scopes", show_default=default_from("benchmark.scopes"),
                                               help="local | global | protected | isomorphic"),
    seeds: Optional[List[str]] = typer.Option(None, "--seeds", show_default=default_from("benchmark.seeds"),
                                              help="a trial per seed, e.g. 0,1,2 (finished seeds are reused)"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", show_default=default_from("benchmark.concurrency"),
                                              help="methods run side by side (worker processes)"),
    dask: Optional[str] = typer.Option(None, "--dask", show_default=default_from("benchmark.dask_address"),
                                       help="run trials on Dask: 'local' or a scheduler address"),
    tracking_from: Optional[Path] = typer.Option(None, "--tracking-from",
                                                 help="read the tracking section (MLflow store) from this params file"),
    write_leaderboard: bool = typer.Option(True, "--leaderboard/--no-leaderboard",
                                           help="also write reports/leaderboard.* (dvc.yaml runs it as its own stage)"),
    device: Optional[str] = DEVICE,
    params_file: Optional[Path] = PARAMS,
    profile: Optional[str] = PROFILE,
):
    """Run methods x speedups x scopes (params.yaml's benchmark section), each trial tracked in MLflow."""
    start_server()
    bench = {}
    if methods:
        bench["methods"] = _split_list(methods)
    if speedups:
        try:
            bench["speedups"] = [float(s) for s in _split_list(speedups)]
        except ValueError:
            fail(f"--speedups takes numbers, got {speedups}")
    if scopes:
        bench["scopes"] = _split_list(scopes)
    if seeds:
        bench["seeds"] = parse_seeds(seeds)
    if concurrency is not None:
        bench["concurrency"] = concurrency
    if dask:
        bench["dask_address"] = dask
    prune_overrides = {k: v for k, v in {"target": target, "round_to": round_to}.items() if v is not None}
    params = load(params_file, profile, {"benchmark": bench, "prune": prune_overrides, **compute_overrides(device)})
    if tracking_from is not None:
        params = params.model_copy(update={"tracking": load(tracking_from, None).tracking})
    from . import leaderboard as lb
    from . import stages
    from .benchmark import run_benchmark
    from .layout import RESULTS_PATH
    from .report import leaderboard_flow
    from .tracking import tracking_uri
    if params.benchmark.dask_address:
        from .cluster import check_scheduler
        check_scheduler(params.benchmark.dask_address)
    stages.preflight(params)
    stages.check_reachable(params, max(params.benchmark.speedups))
    summary = run_flow(run_benchmark, tracking_uri(params.tracking.mlflow_uri), params)
    board = leaderboard_flow() if write_leaderboard else None
    lb.print_table(summary, board)
    failed = [t for t in summary["trials"] if t.get("status") != "ok"]
    if failed:
        typer.echo(f"{len(failed)} of {len(summary['trials'])} trial(s) failed (see the leaderboard and MLflow)",
                   err=True)
    where_to_look(params, f"{RESULTS_PATH}" + (", reports/leaderboard.md (.csv, .png)"
                                                         if write_leaderboard else ""))


@app.command()
@guarded
def tune(
    methods: Optional[List[str]] = typer.Option(None, "--method", "--methods",
                                                show_default=default_from("tune.methods"),
                                                help="method(s) to tune (repeat or comma-separate)"),
    speedup: Optional[float] = typer.Option(None, "--speedup", show_default=default_from("tune.speedup"),
                                           help="MACs target every trial meets (> 1)"),
    model: Optional[str] = model_option("{classifiers}"),
    dataset: Optional[str] = dataset_option("{classification_datasets}"),
    trials: Optional[int] = typer.Option(None, "--trials", show_default=default_from("tune.trials"),
                                         help="finished trials the study reaches (resumes)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", show_default=default_from("tune.epochs"),
                                         help="short finetune epochs per trial"),
    multi_objective: Optional[bool] = typer.Option(None, "--multi-objective/--single-objective",
                                                   show_default=default_from("tune.multi_objective"),
                                                   help="accuracy vs MACs (Pareto front, no target)"),
    storage: Optional[str] = typer.Option(None, "--storage", show_default=default_from("tune.storage"),
                                          help="Optuna storage: sqlite:///optuna.db, journal:<file>, postgresql://..."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="name the study (one method only)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", show_default=default_from("tune.timeout"),
                                            help="stop starting trials after this many seconds"),
    final: bool = typer.Option(True, "--final/--no-final",
                               help="full finetune of the best allocation, compared with the untuned trial"),
    device: Optional[str] = DEVICE,
    params_file: Optional[Path] = PARAMS,
    profile: Optional[str] = PROFILE,
):
    """Tune the pruning-ratio allocation of each method with Optuna; the best one is compared with the untuned trial."""
    start_server()
    tune_over = {k: v for k, v in {"speedup": speedup, "trials": trials, "epochs": epochs, "storage": storage,
                                   "multi_objective": multi_objective, "timeout": timeout}.items() if v is not None}
    if methods:
        tune_over["methods"] = _split_list(methods)
    params = load(params_file, profile, {"tune": tune_over, "model": {"name": model} if model else {},
                                         "data": {"dataset": dataset} if dataset else {},
                                         **compute_overrides(device)})
    methods = params.tune.methods
    if study_name and len(methods) > 1:
        fail("--study-name names one study: give a single --method")
    from . import tune as tuning
    from .layout import RESULTS_PATH, STUDY_DIR, TUNED_PATH
    from .report import leaderboard_flow
    from .tracking import tracking_uri
    target = None if params.tune.multi_objective else params.tune.speedup
    groups = tuning.check(params, target)  # before anything starts: nothing written on bad input
    summaries = run_flow(tuning.tune_flow, tracking_uri(params.tracking.mlflow_uri), params.model_dump(), methods,
                         target, params.tune.trials, study_name, final, groups)
    show_studies(summaries)
    if final and not params.tune.multi_objective:
        if RESULTS_PATH.is_file():
            leaderboard_flow()
            typer.echo("tuned trials added to reports/leaderboard.* beside the untuned ones", err=True)
        else:
            typer.echo("tuned results in reports/tuned.json; `prunebench benchmark` puts them in the leaderboard",
                       err=True)
    where_to_look(params, f"{TUNED_PATH}, study plots in {STUDY_DIR}/, Optuna storage "
                          f"{params.tune.storage}")


def where_to_look(params, outputs: str) -> None:
    """The closing lines: where the results are and how to open them."""
    from .tracking import experiment_name, tracking_uri
    uri = tracking_uri(params.tracking.mlflow_uri)
    ui_flag = "" if uri == "sqlite:///mlflow.db" else f" (MLflow store {uri})"
    typer.echo(f"results: {outputs}\n"
               f"MLflow runs: `prunebench ui`{ui_flag}, then http://127.0.0.1:5000, experiment "
               f"{experiment_name(params.data.dataset, params.model.name)}\n"
               f"Prefect flow runs: `prefect server start`, then http://127.0.0.1:4200/runs", err=True)
    if params.profile == SMOKE_TEST_PROFILE:
        typer.echo(f"profile {SMOKE_TEST_PROFILE}: a smoke test of the whole chain (a few epochs); its figures are "
                   f"not results (see benchmarks/README.md for measured ones)", err=True)


def show_studies(summaries: list) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    for s in summaries:
        t = s["trials"]
        console.print(f"study [bold]{s['study']}[/bold] ({s['storage']}): {t['complete']} complete, "
                      f"{t['pruned']} pruned, {t['fail']} failed", highlight=False)
        if s.get("pareto"):
            table = Table("trial", "val acc", "MACs", title="Pareto front (accuracy vs MACs)")
            for row in s["pareto"]:
                table.add_row(str(row["number"]), f"{row['val_acc']:.2f}", f"{row['macs_pruned'] / 1e6:.2f}M")
            console.print(table)
        if s.get("tuned"):
            table = Table("", "acc (test)", "speedup", "MACs", "allocation", title=f"{s['method']} at "
                          f"{s['speedup_target']:g}x: best trial {s['best']['number']} "
                          f"(val {s['best']['val_acc']:.2f})")
            tuned, plain = s["tuned"], s["untuned"]
            kept = ", ".join(f"{g} {v:.2f}" for g, v in tuned["kept"].items())
            table.add_row("tuned", f"{tuned['acc_finetuned']:.2f}", f"{tuned['speedup']:.2f}x",
                          f"{tuned['macs_pruned'] / 1e6:.2f}M", f"kept: {kept}; protect {tuned['protect']:.2f}, "
                          f"{tuned['steps']} steps")
            if plain.get("status") == "ok":
                table.add_row(f"untuned ({plain['scope']})", f"{plain['acc_finetuned']:.2f}",
                              f"{plain['speedup']:.2f}x", f"{plain['macs_pruned'] / 1e6:.2f}M", "")
            else:
                table.add_row("untuned", "failed", "", "", str(plain.get("error")))
            console.print(table)


@app.command()
@guarded
def serve(
    dry_run: bool = typer.Option(False, "--dry-run", help="list the deployments and their next runs, then exit"),
    params_file: Optional[Path] = PARAMS,
):
    """Serve the scheduled deployments of params.yaml's schedules section (needs `prefect server start`)."""
    params = load(params_file, None)
    from . import schedules
    deployments = schedules.deployments(params, params_file or Path("params.yaml"))
    schedules.show(deployments, params)
    if dry_run:
        return
    schedules.check_server()
    schedules.serve(deployments)


@app.command()
@guarded
def leaderboard(results: Path = typer.Option(Path("reports/benchmark.json"), "--results",
                                             help="the benchmark summary to aggregate"),
                out: Path = typer.Option(Path("reports"), "--out", help="folder for the reports"),
                seeds: Optional[List[str]] = typer.Option(None, "--seeds",
                                                          help="only these seeds' trials, e.g. 0,1")):
    """Aggregate the benchmark into reports/ (CSV, Markdown, PNG, DVC metrics and plots), MLflow and Prefect."""
    if not results.is_file():
        fail(f"{results} does not exist; run `prunebench benchmark` first")
    from . import leaderboard as lb
    from .report import leaderboard_flow
    summary = lb.load_summary(results)
    chosen = parse_seeds(seeds) if seeds else None
    if chosen is not None:
        lb.seed_subset(summary, chosen, results)  # refused before anything is written
    start_server()
    board = run_flow(leaderboard_flow, summary.get("tracking_uri"), str(results), str(out), chosen)
    lb.print_table(board.summary, board)


@app.command()
@guarded
def ui(port: int = typer.Option(5000, "--port", help="port on 127.0.0.1"),
       params_file: Optional[Path] = PARAMS):
    """Serve the MLflow UI for this project's tracking store on 127.0.0.1."""
    from .tracking import tracking_uri
    configured = None
    if params_file is not None or Path("params.yaml").is_file():
        configured = load(params_file, None).tracking.mlflow_uri
    uri = tracking_uri(configured)
    typer.echo(f"MLflow UI for {uri} on http://127.0.0.1:{port} (Ctrl+C stops it)", err=True)
    import subprocess
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", uri]
    raise typer.Exit(subprocess.call(cmd))


def show_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table("metric", "value")
    for key in ("method", "scope", "speedup_target", "speedup", "macs_dense", "macs_pruned", "params_dense",
                "params_pruned", "acc_dense", "acc_pruned", "acc_finetuned", "map50_95_dense", "map50_dense",
                "map50_95_pruned", "map50_pruned", "map50_95_finetuned", "map50_finetuned", "latency_speedup",
                "seconds_prune", "seconds_per_step", "checkpoint"):
        if key not in result:
            continue
        value = result.get(key)
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def command_line():
    """The click command behind ``app``, its ``--model``/``--dataset`` help filled in from the registries when help
    is asked for."""
    command = typer.main.get_command(app)
    if not {"-h", "--help"} & set(sys.argv[1:]):
        return command
    choices = registry_help()
    for sub in getattr(command, "commands", {}).values():
        for param in sub.params:
            if getattr(param, "help", None) in choices:
                param.help = choices[param.help]
    return command


def main():
    """Run the CLI; a wrong flag or value (a usage error) is one line and exit code 2 like any other bad input."""
    from pruning.latency import steady_allocator
    steady_allocator()  # freed activations are reused, not faulted in afresh: training and pruning ~10% faster
    try:
        code = command_line().main(standalone_mode=False, prog_name="prunebench")
    except typer.Abort:  # Ctrl+C
        typer.echo("aborted", err=True)
        code = 130
    except Exception as e:
        if not _is_usage_error(e):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `prunebench`: typer has printed the help already
            code = 0
        else:
            command = e.ctx.command_path if getattr(e, "ctx", None) else "prunebench"
            typer.echo(f"error: {one_line_message(e.format_message())} (see `{command} -h`)", err=True)
            code = 2
    sys.exit(code if isinstance(code, int) else 0)


def _is_usage_error(error: Exception) -> bool:
    """click's usage errors (typer vendors click, so they are recognised by their interface, not their class)."""
    return callable(getattr(error, "format_message", None)) and getattr(error, "exit_code", None) == 2


def one_line_message(text: str) -> str:
    from pruning.errors import one_line
    return one_line(text)


if __name__ == "__main__":
    main()
