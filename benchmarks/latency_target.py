"""Latency as a target (issue 15): does a measured latency target land, does rounding channels turn MACs into wall time,
and is the latency-targeted model as accurate as a MACs-targeted one at equal measured latency?

    .venv/bin/python benchmarks/latency_target.py targets  [--models resnet18 mobilenetv3 deit] [--batches 1 32]
    .venv/bin/python benchmarks/latency_target.py rounding [--models resnet18 mobilenetv3] [--round-to 8 16]
    .venv/bin/python benchmarks/latency_target.py accuracy [--seeds 0 1 2]
    .venv/bin/python benchmarks/latency_target.py table [--models resnet18 resnet20] [--batches 1 32]
    .venv/bin/python benchmarks/latency_target.py cli [--input-size 32] [--latency-batch 1]
        [--pretrain-epochs 20] [--finetune-epochs 10]
    (add --save to merge the part's rows into benchmarks/results/latency_target.json, replacing rerun ones)

``targets``: each model pruned with ``target="latency"``, ``speedup=2`` at each batch (l2, protected scope), saved,
read back from disk, and timed against a freshly built dense model in 5 independent measurements (each the median
of 5 interleaved rounds); the figure is the median of the 5, with their range.  ``reachable`` is the latency
speedup of the most pruning the protection allows (every group at 10% of its channels): no allocation does better.
Weights are untrained: latency does not depend on them.  ``rounding``: MACs target 2x without and with
``round_to``; the latency speedup at batch 1 and 32 against the MACs speedup.  ``accuracy``: resnet20 (``--model``)
on digits at 32x32, latency at batch 32 (``--latency-batch``), through ``prunebench prune`` (trained dense baseline,
10 finetune epochs, every seed): the latency-targeted model against a MACs-targeted one whose MACs speedup was chosen
(bisection on the trained dense checkpoint) to give the same measured latency speedup; both saved models are then
timed like ``targets``' (5 independent measurements against a dense model), so their latencies compare directly.

Models at CIFAR shapes (3x32x32): resnet18 (prunebench's CIFAR variant), timm mobilenetv3_small_050, timm
deit_tiny_patch16_224 with patch_size 8 (16 tokens).  Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import pruning  # noqa: E402
from pruning import allocation, latency  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "latency_target.json"
MODELS = {  # name -> (prunebench model, create_model kwargs)
    "resnet18": ("resnet18", {}),
    "mobilenetv3": ("timm/mobilenetv3_small_050", {}),
    "deit": ("timm/deit_tiny_patch16_224", {"patch_size": 8}),
    "resnet20": ("resnet20", {}),
}
EXAMPLE = torch.randn(1, 3, 32, 32)
MEASUREMENTS = 5


def build(model: str):
    name, kwargs = MODELS[model]
    torch.manual_seed(0)
    return pruning.create_model(name, 10, 3, 32, **kwargs).eval()


def independent_timing(checkpoint: Path, model: str, batch: int, threads: int) -> dict:
    """The saved checkpoint read back and timed against a fresh dense model, ``MEASUREMENTS`` times."""
    pruned, _ = pruning.load_checkpoint(checkpoint)
    dense = build(model)
    inputs = latency.batch_of(EXAMPLE, batch)
    runs = [latency.compare(dense, pruned, inputs, rounds=5, repeats=10, threads=threads)["speedup"]
            for _ in range(MEASUREMENTS)]
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def save(model: str, pruned, path: Path) -> Path:
    name, kwargs = MODELS[model]
    pruned.prunebench_kwargs = kwargs
    return pruning.save_checkpoint(path, pruned, model_name=name, num_classes=10, in_chans=3, input_size=32)


def targets(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for batch in args.batches:
                start = time.perf_counter()
                pruned, report = pruning.prune(build(model), EXAMPLE, "l2", args.speedup, "protected",
                                               target="latency", latency_batch=batch, latency_threads=args.threads,
                                               latency_cache=Path(tmp) / "cache")
                seconds = time.perf_counter() - start
                check = independent_timing(save(model, pruned, Path(tmp) / f"{model}-{batch}.pt"), model, batch,
                                           args.threads)
                reachable = allocation.reachable_speedup(build(model), EXAMPLE, report.protect, target="latency",
                                                         latency_batch=batch, latency_threads=args.threads)
                row = {"model": model, "batch": batch, "threads": report.latency["threads"],
                       "target": args.speedup, "reported": report.achieved, "macs_speedup": report.speedup,
                       "reachable": reachable,
                       "independent": check, "within_5pct": abs(check["median"] / args.speedup - 1) <= 0.05,
                       "seconds_prune": seconds, "steps": report.steps_taken}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def table(args) -> list[dict]:
    """How steady the per-layer latency table is: two tables measured from scratch, one after the other, and the
    per-channel cost (``LatencyTable.slope`` at the dense width) of every layer side in both: their Spearman rank
    correlation and the median relative difference.  The costs decide which layers a latency target prunes, so a
    table that disagrees with itself makes trials differ by their measurement, not their method."""
    from scipy.stats import spearmanr
    rows = []
    for model in args.models:
        for batch in args.batches:
            net = build(model)
            layers = [(sig, side, latency.dense_width(sig, side)) for sig in
                      {latency.signature(m, s) for m, s in latency.layer_inputs(net, EXAMPLE).items()} - {None}
                      for side in ("out", "in") if not (sig[0] == "conv" and sig[7] > 1)]
            start = time.perf_counter()
            costs = [[latency.LatencyTable(batch, args.threads).slope(*layer) for layer in layers]
                     for _ in range(2)]
            first, second = map(np.array, costs)
            relative = np.abs(first - second) / np.maximum((first + second) / 2, 1e-12)
            row = {"model": model, "batch": batch, "layer_sides": len(layers),
                   "spearman": float(spearmanr(first, second).statistic),
                   "median_relative_difference": float(np.median(relative)),
                   "zero_costs": int((first == 0).sum() + (second == 0).sum()),
                   "seconds_per_table": (time.perf_counter() - start) / 2}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def rounding(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for round_to in [None, *args.round_to]:
                try:
                    pruned, report = pruning.prune(build(model), EXAMPLE, "l2", args.speedup, "protected",
                                                   round_to=round_to)
                except pruning.PruneBenchError as refused:  # a multiple wider than a layer: the product says no
                    rows.append({"model": model, "round_to": round_to, "refused": str(refused)})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                path = save(model, pruned, Path(tmp) / f"{model}-{round_to}.pt")
                row = {"model": model, "round_to": round_to, "macs_speedup": report.speedup}
                for batch in args.batches:
                    check = independent_timing(path, model, batch, args.threads)
                    row[f"latency_speedup_b{batch}"] = check
                    row[f"latency_over_macs_b{batch}"] = check["median"] / report.speedup
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def macs_speedup_for_latency(dense: Path, goal: float, batch: int, threads: int) -> float:
    """The MACs speedup at which plain (MACs-targeted) l2 pruning of the trained ``dense`` checkpoint runs ``goal``
    times faster (bisection; the trained weights decide where l2 prunes, so the allocation is the trial's own)."""
    def trained():
        return pruning.load_checkpoint(dense)[0].eval()
    low, high = 1.05, 12.0
    for _ in range(8):
        middle = (low * high) ** 0.5
        try:
            pruned, _ = pruning.prune(trained(), EXAMPLE, "l2", middle, "protected")
        except pruning.PruneBenchError:  # more MACs than the protection lets go
            high = middle
            continue
        speedup = latency.compare(trained(), pruned, latency.batch_of(EXAMPLE, batch), rounds=5, repeats=10,
                                  threads=threads)["speedup"]
        low, high = (middle, high) if speedup < goal else (low, middle)
    return round(high, 3)


def accuracy(args) -> dict:
    """Both targets through ``prunebench prune`` on one trained ``args.model`` (seed 0's baseline), each seed's
    prune and finetune with that seed, latency measured at ``args.latency_batch``."""
    from tests.helpers import make_project
    out = {"trials": []}
    with tempfile.TemporaryDirectory() as tmp:
        proj, env = make_project(Path(tmp), profile=None)
        dense = None
        for seed in args.seeds:
            _set_params(proj / "params.yaml", seed=seed)
            for target in ("latency", "macs"):
                if target == "macs" and "macs_speedup_for_equal_latency" not in out:  # once the dense is trained
                    out["macs_speedup_for_equal_latency"] = macs_speedup_for_latency(
                        dense, args.speedup, args.latency_batch, args.threads)
                speedup = args.speedup if target == "latency" else out["macs_speedup_for_equal_latency"]
                cmd = [str(Path(sys.executable).parent / "prunebench"), "prune", "--model", args.model, "--dataset",
                       "digits", "--input-size", "32", "--method", "l2", "--speedup", str(speedup), "--target",
                       target, "--latency-batch", str(args.latency_batch), "--json", "--out", "trial.pt"]
                cmd += ["--checkpoint", str(dense)] if dense else []
                proc = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(proc.stderr.strip().splitlines()[-1])
                dense = dense or next((proj / "models" / "cache").glob(f"dense-{args.model}-*.pt"))
                record = json.loads(proc.stdout)
                trial = {k: record.get(k) for k in ("target", "speedup", "achieved", "latency_speedup",
                                                    "latency_speedup_range", "latency_batch",
                                                    "latency_speedup_batch", "acc_dense", "acc_finetuned",
                                                    "acc_finetuned_lo", "acc_finetuned_hi")}
                trial["seed"] = seed
                # both targets' models timed alike, interleaved with a dense one: "equal latency" checked on one
                # footing (a trial's own figures come from timings taken at different moments)
                trial["independent"] = independent_timing(proj / "trial.pt", args.model, args.latency_batch,
                                                          args.threads)
                print(json.dumps(trial), flush=True)
                out["trials"].append(trial)
    out["paired"] = paired_difference(out["trials"])
    print(json.dumps(out["paired"]), flush=True)
    return out


def paired_difference(trials: list[dict]) -> dict:
    """Latency-targeted minus MACs-targeted finetuned accuracy, seed by seed (the same dense model, data and finetune
    recipe per seed): the differences, their mean with its 95% t-interval, and the paired t-test's p-value."""
    from scipy import stats
    by_seed = {(t["seed"], t["target"]): t["acc_finetuned"] for t in trials}
    seeds = sorted({t["seed"] for t in trials if (t["seed"], "macs") in by_seed and (t["seed"], "latency") in by_seed})
    diffs = [by_seed[s, "latency"] - by_seed[s, "macs"] for s in seeds]
    if len(diffs) < 2:
        return {"seeds": seeds, "differences": diffs}
    test = stats.ttest_1samp(diffs, 0.0)
    low, high = test.confidence_interval(0.95)
    return {"seeds": seeds, "differences": diffs, "mean": float(np.mean(diffs)), "interval": [float(low), float(high)],
            "p_value": float(test.pvalue)}


def cli(args) -> list[dict]:
    """The issue's check, as a user runs it: ``prunebench prune --model resnet18 --dataset digits --method l2
    --speedup 2 --target latency --json`` in a fresh project (the default latency batch, 32; ``--input-size``, else
    digits' native 8x8), then the saved checkpoint against the dense baseline it was pruned from, timed
    independently.  ``--pretrain-epochs`` and ``--finetune-epochs`` shorten training: latency does not depend on it."""
    from tests.helpers import make_project
    with tempfile.TemporaryDirectory() as tmp:
        proj, env = make_project(Path(tmp), profile=None)
        _set_params(proj / "params.yaml", pretrain={"epochs": args.pretrain_epochs})
        cmd = [str(Path(sys.executable).parent / "prunebench"), "prune", "--model", "resnet18", "--dataset", "digits",
               "--method", "l2", "--speedup", str(args.speedup), "--target", "latency", "--json", "--out", "pruned.pt",
               "--finetune-epochs", str(args.finetune_epochs)]
        cmd += ["--input-size", str(args.input_size)] if args.input_size else []
        cmd += ["--latency-batch", str(args.latency_batch)] if args.latency_batch else []
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr.strip().splitlines()[-1])
        record = json.loads(proc.stdout)
        check = record["latency_check"]
        pruned, _ = pruning.load_checkpoint(proj / "pruned.pt")
        dense, meta = pruning.load_checkpoint(next((proj / "models" / "cache").glob("dense-resnet18-*.pt")))
        inputs = latency.batch_of(torch.randn(1, 3, meta["input_size"], meta["input_size"]), check["batch"])
        runs = [latency.compare(dense, pruned, inputs, rounds=5, repeats=10, threads=check["threads"])["speedup"]
                for _ in range(MEASUREMENTS)]
    row = {"command": " ".join(["prunebench", *cmd[1:]]), "model": "resnet18", "batch": check["batch"],
           "input_size": meta["input_size"], "pretrain_epochs": args.pretrain_epochs,
           "seconds": time.perf_counter() - start,
           "reported": record["achieved"], "target_reached": record["target_reached"], "latency_check": check,
           "macs_speedup": record["speedup"], "acc_dense": record["acc_dense"],
           "acc_finetuned": record["acc_finetuned"],
           "independent": {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}}
    print(json.dumps(row), flush=True)
    return [row]


def _set_params(params_file: Path, **sections) -> None:
    """Top-level values (``seed=1``) or sections' keys (``pretrain={"epochs": 2}``) set in a project's params.yaml."""
    import yaml
    params = yaml.safe_load(params_file.read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            params[key] = {**params.get(key, {}), **value}
        else:
            params[key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["targets", "rounding", "accuracy", "cli", "table"])
    ap.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--round-to", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--model", default="resnet20", choices=list(MODELS), help="accuracy: the model trained")
    ap.add_argument("--latency-batch", type=int, default=None,
                    help="accuracy (default 32) and cli (default: prunebench's): the batch latency is measured at")
    ap.add_argument("--speedup", type=float, default=2.0)
    ap.add_argument("--input-size", type=int, default=None, help="cli: image side (default: digits' native 8)")
    ap.add_argument("--pretrain-epochs", type=int, default=20, help="cli: dense training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="cli: finetuning epochs")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    if args.part == "accuracy":
        args.latency_batch = args.latency_batch or 32
    warnings.simplefilter("ignore")
    if args.models is None:
        args.models = {"targets": ["resnet18", "mobilenetv3", "deit"], "table": ["resnet18", "resnet20"]}.get(
            args.part, ["resnet18", "mobilenetv3"])
    result = {"targets": targets, "rounding": rounding, "accuracy": accuracy, "cli": cli, "table": table}[args.part](args)
    if args.save:
        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        if isinstance(result, list):  # rows of models: a rerun of some keeps the others'
            rerun = {_key(n) for n in result}
            result = [r for r in saved.get(args.part, {}).get("rows", []) if _key(r) not in rerun] + result
        saved[args.part] = {"rows": result, "machine": {"cpu": latency.cpu_name(), "cores": os.cpu_count(),
                                                        "threads": args.threads, "torch": torch.__version__,
                                                        "python": platform.python_version()}}
        RESULTS.write_text(json.dumps(saved, indent=1, default=float) + "\n")
    return 0


def _key(row: dict) -> tuple:
    """What a row measured (its model, batch or rounding)."""
    return tuple(row.get(k) for k in ("model", "batch", "round_to", "seed", "input_size"))


if __name__ == "__main__":
    sys.exit(main())
