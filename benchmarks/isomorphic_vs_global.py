"""Isomorphic vs plain global pruning on deit_tiny and convnext_atto (digits, 32x32): the allocation each makes.

The accuracy comparison over seeds, with intervals, is benchmarks/isomorphic_claim.py (through the benchmark flow);
this script shows, after a short pretraining with each family's recipe, which layer kinds each scope prunes.

For each model: train a dense baseline briefly, prune two copies to the same MACs speedup, one with ``global``
(every group ranked against every other) and one with ``isomorphic`` (groups ranked only against structurally
identical peers), finetune both briefly, and print the kept fraction per layer kind and the accuracies.

    .venv/bin/python benchmarks/isomorphic_vs_global.py [--epochs 6] [--finetune 2] [--speedup 2] [--method l2]
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import time
from collections import defaultdict

import torch

import pruning
from pruning.recipes import recipe_for

MODELS = {"timm/deit_tiny_patch16_224": {"patch_size": 8}, "timm/convnext_atto": {}}  # name -> model kwargs


def allocation(channels: list) -> dict:
    """Mean kept fraction per layer kind (layer names with block indices folded: blocks.*.mlp.fc1)."""
    kinds = defaultdict(list)
    for row in channels:
        if "kept" in row:
            kinds[re.sub(r"\.\d+(?=\.|$)", ".*", row["layer"])].append(row["kept"])
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(kinds.items())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--finetune", type=int, default=2)
    ap.add_argument("--speedup", type=float, default=2.0)
    ap.add_argument("--method", default="l2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = pruning.load_data("digits", input_size=32)  # the size these figures were measured at
    spec = bundle.spec
    train_loader = bundle.loader("train", 64, shuffle=True, augment=True, flip=False)
    test_loader = bundle.loader("test", 256)
    results = []
    for name, kwargs in MODELS.items():
        pruning.seed_everything(0)
        recipe = recipe_for(name)
        dense = pruning.create_model(name, spec.num_classes, spec.in_chans, spec.input_size, **kwargs)
        t = time.perf_counter()
        pruning.train(dense, train_loader, recipe.phase("pretrain", epochs=args.epochs))
        acc_dense = pruning.accuracy(dense, test_loader)
        print(f"{name}: dense acc {acc_dense:.2f} ({time.perf_counter() - t:.0f}s)", flush=True)
        for scope in ("global", "isomorphic"):
            pruning.seed_everything(0)
            model = copy.deepcopy(dense)
            calib = bundle.loader("train", 64, shuffle=True, seed=0)
            model, report = pruning.prune(model, spec.example_inputs(), args.method, args.speedup, scope,
                                          data=calib, steps=50, calibration_batches=2,
                                          num_classes=spec.num_classes)
            acc_pruned = pruning.accuracy(model, test_loader)
            pruning.finetune(model, train_loader, recipe.phase("finetune", epochs=args.finetune))
            row = {"model": name, "scope": scope, "method": args.method, "speedup": round(report.speedup, 3),
                   "macs_pruned": report.macs_pruned, "params_pruned": report.params_pruned,
                   "acc_dense": round(acc_dense, 2), "acc_pruned": round(acc_pruned, 2),
                   "acc_finetuned": round(pruning.accuracy(model, test_loader), 2),
                   "seconds_prune": round(report.seconds_prune, 2), "allocation": allocation(report.channels)}
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n| model | scope | speedup | MACs | acc pruned | acc finetuned |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['scope']} | {r['speedup']} | {r['macs_pruned']} | {r['acc_pruned']} | "
              f"{r['acc_finetuned']} |")
    for name in MODELS:
        g, i = [r["allocation"] for r in results if r["model"] == name]
        diff = {k: (g[k], i[k]) for k in g if g[k] != i.get(k)}
        print(f"\n{name}: kept fraction per layer kind, global vs isomorphic (differing kinds only)")
        for k, (a, b) in diff.items():
            print(f"  {k:40s} global {a:.3f}  isomorphic {b:.3f}")


if __name__ == "__main__":
    main()
