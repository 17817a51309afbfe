"""Per-criterion pruning benchmark (issue: engine): step seconds, ratio to l2, MACs and latency speedups.

    .venv/bin/python benchmarks/prune_bench.py [--models resnet20 resnet18] [--speedups 2 4]

resnet20 runs on the embedded digits data (32x32); resnet18 on CIFAR shapes (3x32x32, 100 classes, random
calibration images, since CIFAR itself is not bundled).  Weights are untrained: step time, MACs and latency do not
depend on training, accuracy does (see the benchmark flow for accuracy).  Writes benchmarks/results/prune_bench.json
and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import warnings
from pathlib import Path

import torch

import pruning

CRITERIA = ["random", "l1", "l2", "fpgm", "lamp", "bnscale", "taylor", "hessian", "obdc"]


def workload(model_name: str):
    if model_name == "resnet20":
        bundle = pruning.load_data("digits", input_size=32)  # the size these figures were measured at
        return 10, bundle.spec.example_inputs(), bundle.loader("train", 64, shuffle=True)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 100, (64,), generator=g)) for _ in range(4)]
    return 100, torch.randn(1, 3, 32, 32), data


def measure(model_name: str, criterion: str, speedup: float, steps: int) -> dict:
    num_classes, example, data = workload(model_name)
    torch.manual_seed(0)
    dense = pruning.create_model(model_name, num_classes)
    batch = example.expand(32, *example.shape[1:]).contiguous()
    lat_dense = pruning.measure_latency(dense, example), pruning.measure_latency(dense, batch, repeats=5)
    model, report = pruning.prune(dense, example, criterion, speedup, data=data, calibration_batches=4, steps=steps)
    lat_pruned = pruning.measure_latency(model, example), pruning.measure_latency(model, batch, repeats=5)
    return {"model": model_name, "criterion": criterion, "speedup_target": speedup, "speedup": report.speedup,
            "seconds_prune": report.seconds_prune, "steps": report.steps_taken,
            "latency_speedup_b1": lat_dense[0] / lat_pruned[0], "latency_speedup_b32": lat_dense[1] / lat_pruned[1]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
    parser.add_argument("--speedups", nargs="+", type=float, default=[2.0, 4.0])
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for model_name in args.models:
        for speedup in args.speedups:
            for criterion in args.criteria:
                rows.append(measure(model_name, criterion, speedup, args.steps))
                print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        l2 = next(r for r in rows if r["model"] == row["model"] and r["speedup_target"] == row["speedup_target"]
                  and r["criterion"] == "l2")
        row["ratio_to_l2"] = row["seconds_prune"] / l2["seconds_prune"]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    out = Path(__file__).parent / "results" / "prune_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"\nMachine: {machine}\n")
    print("| model | criterion | target | MACs speedup | latency speedup b1 | latency speedup b32 | step s | vs l2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['criterion']} | {r['speedup_target']:g}x | {r['speedup']:.2f}x | "
              f"{r['latency_speedup_b1']:.2f}x | {r['latency_speedup_b32']:.2f}x | {r['seconds_prune']:.2f} | "
              f"{r['ratio_to_l2']:.1f}x |")


if __name__ == "__main__":
    main()
