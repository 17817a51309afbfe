"""The ``prunebench`` command line.  Bad input: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .env import quiet_environment

quiet_environment()

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Benchmark and apply structural pruning (PruningBench protocol on Torch-Pruning).")

PARAMS = typer.Option(Path("params.yaml"), "--params", help="the params.yaml to read defaults from")
PROFILE = typer.Option(None, "--profile", help="apply the overrides under profiles.<name> in params.yaml")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; a PruneBenchError becomes one line on stderr and exit code 2."""
    from pruning.errors import PruneBenchError
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn(*args, **kwargs)
        for w in caught:  # only prunebench's own warnings reach the user; library noise stays quiet
            if "pruning" in (w.filename or "") and "site-packages" not in (w.filename or ""):
                typer.echo(f"warning: {w.message}", err=True)
        return result
    except PruneBenchError as e:
        fail(str(e))


def load(params: Path, profile: Optional[str], overrides: Optional[dict] = None):
    from .config import load_params
    return run_guarded(load_params, params, profile, overrides)


def epoch_printer(label: str, total: int):
    """A progress line per epoch on stderr (stdout stays clean for --json)."""
    def show(row: dict) -> None:
        acc = f" val_acc {row['val_acc']:.2f}" if "val_acc" in row else ""
        typer.echo(f"  {label} epoch {row['epoch']}/{total}: loss {row['loss']:.4f}{acc}", err=True)
    return show


@app.command()
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
def prune(
    model: Optional[str] = typer.Option(None, "--model", help="resnet20 | resnet56 | resnet18 | resnet50 | vgg19 | timm/<name>"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="digits | cifar10 | cifar100 | imagefolder:<path>"),
    method: str = typer.Option(..., "--method", help="a criterion, or criterion+sparsifier (see `prunebench methods`)"),
    speedup: float = typer.Option(..., "--speedup", help="target dense MACs / pruned MACs (> 1)"),
    scope: Optional[str] = typer.Option(None, "--scope", help="local | global | protected | isomorphic"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="dense checkpoint to prune (else a cached baseline)"),
    finetune_epochs: Optional[int] = typer.Option(None, "--finetune-epochs", min=0, help="finetuning epochs after pruning"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the pruned checkpoint"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    params_file: Path = PARAMS,
    profile: Optional[str] = PROFILE,
):
    """Prune one model to a MACs speedup target and report accuracy, MACs, params and latency."""
    overrides = {"data": {k: v for k, v in {"dataset": dataset}.items() if v},
                 "model": {k: v for k, v in {"name": model}.items() if v},
                 "prune": {k: v for k, v in {"scope": scope}.items() if v}}
    params = load(params_file, profile, overrides)
    import pruning
    run_guarded(pruning.resolve, method)
    if not speedup > 1:
        fail(f"speedup must be > 1 (dense MACs / pruned MACs), got {speedup:g}")
    from . import stages
    if checkpoint is None:
        typer.echo(f"dense baseline: {params.model.name} on {params.data.dataset} (cached after the first run)", err=True)
        checkpoint = run_guarded(stages.dense_baseline, params,
                                 on_epoch=epoch_printer("pretrain", params.pretrain.epochs))
    elif not checkpoint.is_file():
        fail(f"checkpoint {checkpoint} does not exist")
    out = out or Path("models") / f"pruned-{params.model.name.replace('/', '-')}-{method}-{speedup:g}x.pt"
    epochs = params.finetune.epochs if finetune_epochs is None else finetune_epochs
    with tempfile.TemporaryDirectory(prefix="prunebench-") as work:
        result = run_guarded(stages.run_trial, params, method, speedup, params.prune.scope, checkpoint, out,
                             Path(work), finetune_epochs=epochs, on_epoch=epoch_printer("finetune", epochs))
    result.pop("channels", None)
    if as_json:
        typer.echo(json.dumps(result, default=float))
    else:
        show_result(result)


def show_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table("metric", "value")
    for key in ("method", "scope", "speedup_target", "speedup", "macs_dense", "macs_pruned", "params_dense",
                "params_pruned", "acc_dense", "acc_pruned", "acc_finetuned", "latency_speedup",
                "seconds_prune", "checkpoint"):
        value = result.get(key)
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def main():
    app()


if __name__ == "__main__":
    main()
