"""Does every model family learn from scratch on the embedded data?  Pretraining accuracy and wall time per family.

    .venv/bin/python benchmarks/family_targets.py [--families deit convnext ...] [--epochs N] [--threads N] [--save]

Each family is trained from scratch with the recipe prunebench picks for it (:mod:`pruning.recipes`, printed), on
the embedded data, on the CPU: the classification families on digits at 32x32 (test accuracy on digits' 540 test
images, target >= 90%), yolov8n on the generated ``shapes`` set (mAP50 on its validation images, target >= 0.5).
The model geometry for small inputs (``model.kwargs``) is the one documented in the README: a DeiT at 32x32 takes
``patch_size: 8`` (16 tokens).  Writes benchmarks/results/family_targets.json (--save merges per family) and prints
a Markdown table.  Wall time is for this machine with ``--threads`` torch threads; run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.env import quiet_environment  # noqa: E402

quiet_environment()  # before torch loads: OpenMP threads that spin-wait are many times slower on a busy machine

import torch  # noqa: E402

import pruning  # noqa: E402
from pruning.recipes import recipe_for  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "family_targets.json"

# family -> (registry model name, model kwargs, input size, target)
FAMILIES = {
    "deit": ("timm/deit_tiny_patch16_224", {"patch_size": 8}, 32, 90.0),
    "convnext": ("timm/convnext_atto", {}, 32, 90.0),
    "mobilenetv3": ("timm/mobilenetv3_small_050", {}, 32, 90.0),
    "efficientnet": ("timm/efficientnet_b0", {}, 32, 90.0),
    "resnet20": ("resnet20", {}, 8, 90.0),
    "yolov8n": ("yolov8n", {}, None, 0.5),
}


def classification(family: str, epochs: int | None, seed: int, kwargs: dict | None = None, batch: int = 64,
                   recipe_name: str = "auto") -> dict:
    name, default_kwargs, size, target = FAMILIES[family]
    kwargs = default_kwargs if kwargs is None else kwargs
    recipe = recipe_for(name, recipe_name)
    phase = recipe.phase("pretrain", epochs=epochs)
    pruning.seed_everything(seed)
    bundle = pruning.load_data("digits", input_size=size)
    model = pruning.create_model(name, bundle.spec.num_classes, bundle.spec.in_chans, size, **kwargs)
    train = bundle.loader("train", batch, shuffle=True, augment=size >= 16, seed=seed, flip=recipe.flip)
    start = time.perf_counter()
    history = pruning.train(model, train, phase, bundle.loader("val", 256),
                            on_epoch=lambda row: print(f"  {family} epoch {row['epoch']}: val {row['val_acc']:.2f}",
                                                       flush=True))
    seconds = time.perf_counter() - start
    acc = pruning.accuracy(model, bundle.loader("test", 256))
    return {"model": name, "kwargs": kwargs, "input_size": size, "recipe": recipe.name, "phase": phase.describe(),
            "metric": "test accuracy (%)", "value": round(acc, 2), "target": target, "met": acc >= target,
            "seconds_pretrain": round(seconds, 1), "val_curve": [round(h["val_acc"], 2) for h in history],
            "params": sum(p.numel() for p in model.parameters()), "batch_size": batch}


def detection(family: str, epochs: int | None, seed: int, imgsz: int | None) -> dict:
    from pruning.detection import load_detection_data, yolo
    name, _, _, target = FAMILIES[family]
    recipe = recipe_for(name)
    phase = recipe.phase("pretrain", epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_detection_data("shapes", tmp, imgsz)
        pruning.seed_everything(seed)
        model = pruning.create_model(name, data.num_classes, 3, data.imgsz)
        start = time.perf_counter()
        model = yolo.finetune_yolo(model, data.yaml, data.imgsz, phase.epochs, Path(tmp), batch=16, lr0=phase.lr,
                                   seed=seed, warmup_epochs=phase.warmup_epochs)
        seconds = time.perf_counter() - start
        metrics = yolo.evaluate_yolo(model, data.yaml, data.imgsz, Path(tmp))
    return {"model": name, "kwargs": {}, "input_size": data.imgsz, "recipe": recipe.name, "phase": phase.describe(),
            "metric": "mAP50 (shapes val)", "value": round(metrics["map50"], 3), "map50_95": round(metrics["map50_95"], 3),
            "target": target, "met": metrics["map50"] >= target, "seconds_pretrain": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's pretraining epochs")
    ap.add_argument("--imgsz", type=int, default=None, help="YOLO image size (default: the dataset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", default="auto", help="a recipe name instead of the family's (classification)")
    ap.add_argument("--batch", type=int, default=64, help="training batch size (classification)")
    ap.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON: replaces the family's kwargs")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    for family in args.families:
        print(f"{family}: {FAMILIES[family][0]} with recipe {recipe_for(FAMILIES[family][0]).name}", flush=True)
        rows[family] = (detection(family, args.epochs, args.seed, args.imgsz) if FAMILIES[family][2] is None
                        else classification(family, args.epochs, args.seed, args.model_kwargs, args.batch,
                                                      args.recipe))
        rows[family].update(seed=args.seed, threads=args.threads)
        print(json.dumps(rows[family]), flush=True)
    print("\n| family | model (kwargs) | input | recipe | result | target | pretraining |\n|---|---|---|---|---|---|---|")
    for family, r in rows.items():
        print(f"| {family} | {r['model']} {r['kwargs'] or ''} | {r['input_size']} | {r['recipe']} | {r['value']} "
              f"{r['metric']} | {r['target']} ({'met' if r['met'] else 'missed'}) | {r['seconds_pretrain']:.0f} s |")
    if args.save:
        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        saved.setdefault("families", {}).update(rows)
        saved["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
