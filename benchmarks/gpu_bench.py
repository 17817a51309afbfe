"""Training throughput and pruning-step times on the device (the GPU where there is one), on CIFAR-100-shaped
synthetic data (nothing to download), beside PruningBench's published GPU step times.

* ``throughput``: images/s of :func:`pruning.train` (the code every stage trains with) on resnet18, resnet50 and
  vgg19 at batch 128, on the CPU and on the GPU when there is one, in fp32 and in mixed precision (bf16 where the
  device has it, else fp16 with loss scaling); and the projected wall time of one paper-protocol trial's finetune
  (100 epochs of 50,000 images) at the best rate.
* ``loader``: images/s of the training loader (shuffled, augmented: what every training stage reads) over one
  epoch of 50,000 CIFAR-100-shaped images, on the CPU and, on a GPU, with the images kept on it; beside the
  training rate, it says what share of a training step reading the data costs.
* ``prune``: ``seconds_prune`` of every criterion at 2x on resnet18 (100 classes, protected scope, 4 calibration
  batches of 64) on the device, beside the paper's ResNet-18 / CIFAR-100 step times.

    .venv/bin/python benchmarks/gpu_bench.py --save                 # every part, every model
    .venv/bin/python benchmarks/gpu_bench.py throughput --models resnet18 --batches 5

Writes ``benchmarks/results/gpu_bench.json`` (``--save``), keyed by the device it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pruning  # noqa: E402
from pruning import device as dev  # noqa: E402
from pruning.data import DataBundle, DataSpec  # noqa: E402

MODELS = ["resnet18", "resnet50", "vgg19"]
CRITERIA = ["random", "l1", "l2", "fpgm", "lamp", "bnscale", "taylor", "hessian", "obdc", "hrank", "thinet", "cp"]
# PruningBench's pruning-step times, ResNet-18 on CIFAR-100, GPU (../shared/reference, issue 16)
PAPER_SECONDS = {"l2": 0.26, "taylor": 1.6, "obdc": 4.9, "thinet": 7.8, "cp": 43.0, "hessian": 106.0,
                 "hrank": 548.0}
PAPER_TRIAL_IMAGES = 100 * 50_000  # one paper trial's finetune: 100 epochs over CIFAR-100's training set
BATCH = 128
LOADER_IMAGES = 50_000  # CIFAR-100's training set
RESULTS = ROOT / "benchmarks" / "results" / "gpu_bench.json"


def synthetic_batches(n: int, batch: int = BATCH, seed: int = 0) -> list:
    """``n`` CIFAR-100-shaped batches (3x32x32, 100 classes) of random images and labels."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(100, (batch,), generator=g))
            for _ in range(n)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model_name: str, device: torch.device, precision: str, batches: int) -> float:
    """Training images/s of ``pruning.train`` over ``batches`` batches, after one untimed warm-up batch."""
    torch.manual_seed(0)
    model = dev.place(pruning.create_model(model_name, 100, 3, 32), device)
    data = synthetic_batches(batches + 1)
    recipe = pruning.Recipe(epochs=1, lr=0.01)
    pruning.train(model, data[:1], recipe, precision=precision)  # warm-up: kernels chosen, memory allocated
    synchronize(device)
    start = time.perf_counter()
    pruning.train(model, data[1:], recipe, precision=precision)
    synchronize(device)
    return batches * BATCH / (time.perf_counter() - start)


def mixed_precision(device: torch.device):
    """The mixed precision this device runs (None: none worth measuring)."""
    for precision in ("bf16", "fp16"):
        try:
            dev.check_precision(precision, device)
            return precision
        except pruning.PruneBenchError:
            continue
    return None


def _devices(args) -> list[torch.device]:
    """The CPU, and the GPU when there is one (and ``--device`` does not say cpu)."""
    gpu = dev.resolve_device("auto")
    return [torch.device("cpu")] + ([gpu] if args.device != "cpu" and gpu.type != "cpu" else [])


def throughput(args) -> list[dict]:
    rows = []
    for model in args.models:
        for device in _devices(args):
            for precision in filter(None, ("fp32", mixed_precision(device))):
                rate = images_per_second(model, device, precision, args.batches)
                row = {"model": model, "device": dev.device_name(device), "precision": precision,
                       "images_per_s": rate, "paper_finetune_hours": PAPER_TRIAL_IMAGES / rate / 3600}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def loader_rates(args) -> list[dict]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (LOADER_IMAGES, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 100, LOADER_IMAGES)
    bundle = DataBundle(DataSpec("cifar100-shaped", 100, 3, 32), {"train": (images, labels)})
    rows = []
    for device in _devices(args):
        loader = bundle.loader("train", BATCH, shuffle=True, augment=True, device=device)
        start = time.perf_counter()
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
        synchronize(device)
        row = {"device": dev.device_name(device), "images_per_s": LOADER_IMAGES / (time.perf_counter() - start),
               "resident": x.device.type != "cpu" and loader.dataset.images.device.type != "cpu"}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def prune_times(args) -> list[dict]:
    device = dev.resolve_device(args.device)
    calibration = synthetic_batches(4, batch=64, seed=1)
    rows = []
    for criterion in args.criteria:
        torch.manual_seed(0)
        model = dev.place(pruning.create_model("resnet18", 100, 3, 32), device)
        _, report = pruning.prune(model, torch.randn(1, 3, 32, 32), criterion, 2.0, "protected", data=calibration,
                                  calibration_batches=4, num_classes=100)
        row = {"criterion": criterion, "device": dev.device_name(device), "seconds_prune": report.seconds_prune,
               "speedup": report.speedup, "paper_seconds": PAPER_SECONDS.get(criterion)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=["throughput", "loader", "prune", "all"], default="all")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--batches", type=int, default=20, help="timed training batches per measurement")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    pruning.latency.steady_allocator()  # as the prunebench command does
    result = {}
    if args.part in ("throughput", "all"):
        result["throughput"] = throughput(args)
    if args.part in ("loader", "all"):
        result["loader"] = loader_rates(args)
    if args.part in ("prune", "all"):
        result["prune"] = prune_times(args)
    if args.save:
        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        where = dev.device_name(dev.resolve_device(args.device))
        saved[where] = {**saved.get(where, {}), **result, "torch": torch.__version__, "cores": os.cpu_count()}
        RESULTS.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
