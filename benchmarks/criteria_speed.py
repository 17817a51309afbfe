"""Pruning-step speed of the data-driven criteria against the floor: one pass over the calibration data.

For each criterion, ``pruning.prune(..., speedup=2)`` prunes a fresh ResNet-18 (CIFAR shapes, 100 classes) in the
protected scope with the same calibration batches; its ``seconds_prune`` (pruner construction, calibration and all
iterative steps) is compared with one forward+backward pass over those batches, timed right before it (the
physical floor for a data-driven criterion), and with ``l2``'s (which needs no data).

    .venv/bin/python benchmarks/criteria_speed.py                 # resnet18, 4 x 64 digits images at 32x32
    .venv/bin/python benchmarks/criteria_speed.py --criteria l2 hrank --batches 2

Prints a Markdown table and writes ``benchmarks/results/criteria_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pruning  # noqa: E402

DATA_DRIVEN = ["taylor", "hessian", "obdc", "hrank", "thinet", "cp"]
GOAL = {"thinet": 5.0, "cp": 5.0}  # x one calibration pass; 3.0 for the others
PAPER_RATIO_TO_L2 = {"hrank": 2100, "hessian": 400, "cp": 165}  # PruningBench, ResNet-18 / CIFAR-100, GPU


def calibration_batches(n_batches: int = 4, batch_size: int = 64, dataset: str = "digits") -> list:
    """The first ``n_batches`` batches of the training split (digits images are 32x32x3, CIFAR's shape)."""
    bundle = pruning.load_data(dataset, input_size=32)
    return list(islice(iter(bundle.loader("train", batch_size)), n_batches))


def build_model(model_name: str = "resnet18", num_classes: int = 100, seed: int = 0):
    torch.manual_seed(seed)
    return pruning.create_model(model_name, num_classes)


def measure_calibration_pass(model_name: str, num_classes: int, batches: list, repeats: int = 3) -> float:
    """Seconds of one forward+backward pass over the calibration batches (eval mode, as in calibration); median."""
    model = build_model(model_name, num_classes)
    model.eval()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_criterion(method: str, model_name: str, num_classes: int, batches: list, speedup: float = 2.0,
                      steps: int = 100, scope: str = "protected") -> dict:
    """Prune a fresh model with ``method``; the report's timings and the achieved speedup."""
    model = build_model(model_name, num_classes)
    example = batches[0][0][:1]
    _, report = pruning.prune(model, example, method=method, speedup=speedup, scope=scope, data=batches,
                              calibration_batches=len(batches), steps=steps, num_classes=num_classes)
    return {"method": method, "seconds_prune": report.seconds_prune, "seconds_calibrate": report.seconds_calibrate,
            "steps": report.steps_taken, "speedup": report.speedup, "calibration_samples": report.calibration_samples}


def run(model_name: str = "resnet18", num_classes: int = 100, n_batches: int = 4, batch_size: int = 64,
        criteria=None, speedup: float = 2.0, steps: int = 100) -> dict:
    allocator = pruning.latency.steady_allocator()  # as the prunebench command does
    criteria = list(criteria or ["l2"] + DATA_DRIVEN)
    if "l2" not in criteria:
        criteria.insert(0, "l2")
    batches = calibration_batches(n_batches, batch_size)
    rows = []
    for m in criteria:
        # the floor is timed right before each criterion: a shared machine's speed drifts within a run
        floor = measure_calibration_pass(model_name, num_classes, batches)
        rows.append({**measure_criterion(m, model_name, num_classes, batches, speedup, steps),
                     "seconds_calibration_pass": floor})
        print(f"{m}: {rows[-1]['seconds_prune']:.2f} s, calibration pass {floor:.2f} s", file=sys.stderr, flush=True)
    floor = statistics.median(r["seconds_calibration_pass"] for r in rows)
    l2 = next(r["seconds_prune"] for r in rows if r["method"] == "l2")
    for r in rows:
        r["ratio_to_pass"] = r["seconds_prune"] / r["seconds_calibration_pass"]
        r["ratio_to_l2"] = r["seconds_prune"] / l2
        r["goal_ratio_to_pass"] = GOAL.get(r["method"], 3.0) if r["method"] in DATA_DRIVEN else None
        r["meets_goal"] = None if r["goal_ratio_to_pass"] is None else r["ratio_to_pass"] <= r["goal_ratio_to_pass"]
        r["paper_ratio_to_l2"] = PAPER_RATIO_TO_L2.get(r["method"])
    return {"model": model_name, "num_classes": num_classes, "input": [3, 32, 32], "calibration_batches": n_batches,
            "batch_size": batch_size, "speedup_target": speedup, "steps": steps,
            "seconds_calibration_pass": floor, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.platform(), "allocator": allocator, "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['model']} (3x32x32, {result['num_classes']} classes), calibration "
             f"{result['calibration_batches']} x {result['batch_size']} images, target {result['speedup_target']:g}x "
             f"(protected); one forward+backward pass over the calibration set, timed right before each "
             f"criterion: median {result['seconds_calibration_pass']:.2f} s", "",
             "| criterion | prune s | of which calibrate s | steps | calib. pass s | x calib. pass | goal | x l2 | "
             "paper x l2 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        goal = f"<= {r['goal_ratio_to_pass']:g}" + (" ok" if r["meets_goal"] else " MISSED") \
            if r["goal_ratio_to_pass"] else "-"
        paper = f"{r['paper_ratio_to_l2']}" if r["paper_ratio_to_l2"] else "-"
        lines.append(f"| {r['method']} | {r['seconds_prune']:.2f} | {r['seconds_calibrate']:.2f} | {r['steps']} | "
                     f"{r['seconds_calibration_pass']:.2f} | {r['ratio_to_pass']:.2f} | {goal} | "
                     f"{r['ratio_to_l2']:.2f} | {paper} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--criteria", nargs="*", default=None)
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "criteria_speed.json"))
    args = parser.parse_args(argv)
    result = run(args.model, args.num_classes, args.batches, args.batch_size, args.criteria, args.speedup, args.steps)
    print(markdown(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
