"""Does sparse training change what gets pruned?  Each sparsifier pairing against its criterion alone.

On the embedded default protocol (resnet20 on digits at the native 8x8, batch 64, 20 dense epochs, protected scope,
protect 0.1, 100 steps, 2x and 4x MACs): train the dense model (cached in the temp folder), prune copies of it with
each criterion alone, then for each pairing sparse-train a copy (``pruning.sparsify``) and prune it with the same
criterion to the same targets.  Per pairing and speedup it prints how many layers keep a different width than the
criterion alone, the sparsity shares of the penalised channels before and after sparse training (below 1% and 10%
of their group's largest norm, :mod:`pruning.sparsity`), and the val accuracy after sparse training.

    .venv/bin/python benchmarks/sparsify_defaults.py [--seeds 0 1] [--epochs 5] [--lr 0.01]
        [--reg group_norm=0.05 ...] [--delta-reg 0.02] [--save]

``--reg`` and ``--delta-reg`` override a sparsifier's own default (its registry default when not given).
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

import pruning
from pruning import fileio
from pruning.sparsity import group_norms, sparsity_summary
from pruning.train import Recipe

PAIRINGS = ["bnscale+bnscale_reg", "bnscale+group_lasso", "l2+group_norm", "l2+growing_reg", "l2+group_lasso"]
RESULTS = Path(__file__).resolve().parent / "results" / "sparsify_defaults.json"
CACHE = Path(tempfile.gettempdir()) / "prunebench-sparsify-defaults"


def dense_model(bundle, seed: int, epochs: int) -> torch.nn.Module:
    """The dense baseline of the protocol (SGD lr 0.1, momentum 0.9, wd 5e-4, multistep), cached by seed."""
    spec = bundle.spec
    pruning.seed_everything(seed)
    model = pruning.create_model("resnet20", spec.num_classes, spec.in_chans, spec.input_size)
    path = CACHE / f"resnet20-digits{spec.input_size}-e{epochs}-seed{seed}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    pruning.train(model, bundle.loader("train", 64, shuffle=True, seed=seed), Recipe(epochs=epochs, lr=0.1))
    with fileio.atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model


def prune_widths(model, bundle, method: str, speedup: float, seed: int) -> dict:
    """Per prunable layer: the width it keeps when ``model`` (a copy is pruned) goes to ``speedup``."""
    pruned, report = pruning.prune(copy.deepcopy(model), bundle.spec.example_inputs(), method, speedup, "protected",
                                   data=bundle.loader("train", 64, shuffle=True, seed=seed), steps=100,
                                   calibration_batches=4, seed=seed)
    return {row["layer"]: row["channels"] for row in report.channels}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--speedups", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--pairings", nargs="+", default=PAIRINGS)
    ap.add_argument("--pretrain-epochs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5, help="sparse-training epochs")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--reg", action="append", default=[], metavar="SPARSIFIER=VALUE",
                    help="override a sparsifier's default strength (repeatable)")
    ap.add_argument("--delta-reg", type=float, default=None, help="growing_reg's increment per epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", action="store_true", help=f"write {RESULTS.relative_to(RESULTS.parents[2])}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    regs = {k: float(v) for k, v in (item.split("=", 1) for item in args.reg)}
    epochs = args.epochs
    bundle = pruning.load_data("digits", input_size=8)
    x = bundle.spec.example_inputs()
    val = bundle.loader("val", 256)
    rows = []
    for seed in args.seeds:
        dense = dense_model(bundle, seed, args.pretrain_epochs)
        acc_dense = pruning.accuracy(dense, val)
        criteria = sorted({p.split("+")[0] for p in args.pairings})
        alone = {(c, s): prune_widths(dense, bundle, c, s, seed) for c in criteria for s in args.speedups}
        # the control: the same training (epochs, lr, no weight decay, data order) without any penalty
        control_model = copy.deepcopy(dense)
        pruning.seed_everything(seed)
        pruning.sparsify(control_model, x, "bnscale_reg", bundle.loader("train", 64, shuffle=True, seed=seed),
                         Recipe(epochs=epochs, lr=args.lr), criterion="l2", reg=0.0)
        control = {(c, s): prune_widths(control_model, bundle, c, s, seed) for c in criteria for s in args.speedups}
        for (c, s), widths in control.items():
            moved = sum(alone[(c, s)].get(k) != w for k, w in widths.items())
            print(f"seed {seed}: {c}@{s:g}x after the no-penalty control training: {moved} layers differ from "
                  f"{c} alone", flush=True)
        for method in args.pairings:
            criterion, sparsifier = method.split("+")
            spec = pruning.get_method(sparsifier).build()
            model = copy.deepcopy(dense)
            before = group_norms(model, x, spec.penalises)
            pruning.seed_everything(seed)
            start = time.perf_counter()
            pruning.sparsify(model, x, sparsifier, bundle.loader("train", 64, shuffle=True, seed=seed),
                             Recipe(epochs=epochs, lr=args.lr), criterion=criterion, reg=regs.get(sparsifier),
                             delta_reg=args.delta_reg)
            seconds = time.perf_counter() - start
            summary = sparsity_summary(before, group_norms(model, x, spec.penalises))
            acc = pruning.accuracy(model, val)
            for s in args.speedups:
                widths, base = prune_widths(model, bundle, criterion, s, seed), alone[(criterion, s)]
                differ = {k: (base[k], w) for k, w in widths.items() if base.get(k) != w}
                ctrl = control[(criterion, s)]
                row = {"seed": seed, "method": method, "speedup": s, "epochs": epochs, "lr": args.lr,
                       "reg": regs.get(sparsifier, pruning.get_method(sparsifier).defaults().get("reg")),
                       "layers_differ": len(differ), "channels_moved": sum(abs(a - b) for a, b in differ.values()),
                       "layers_differ_control": sum(ctrl.get(k) != w for k, w in widths.items()),
                       **{k: round(v, 4) for k, v in summary.items()},
                       "val_acc_dense": round(acc_dense, 2), "val_acc_sparse": round(acc, 2),
                       "seconds_sparsify": round(seconds, 1), "differ": differ}
                if sparsifier == "growing_reg":
                    row["delta_reg"] = (args.delta_reg if args.delta_reg is not None
                                        else pruning.get_method(sparsifier).defaults().get("delta_reg"))
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "differ"}), flush=True)
    print("\n| seed | pairing | speedup | reg | layers differing (vs criterion alone) | vs no-penalty control | "
          "channels moved | sparsity <1% before/after | <10% before/after | p10 of norm/group max before/after | "
          "median norm after/before | val acc dense / sparse-trained |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['method']} | {r['speedup']:g}x | {r['reg']:g} | {r['layers_differ']} | "
              f"{r['layers_differ_control']} | {r['channels_moved']} | "
              f"{r['sparsity_before']:.3f} / {r['sparsity_after']:.3f} | "
              f"{r['sparsity_before_10pct']:.3f} / {r['sparsity_after_10pct']:.3f} | "
              f"{r['rel_norm_p10_before']:.3f} / {r['rel_norm_p10_after']:.3f} | {r['norm_ratio_median']:.3f} | "
              f"{r['val_acc_dense']} / {r['val_acc_sparse']} |")
    unchanged = [f"{r['method']}@{r['speedup']:g}x seed {r['seed']}" for r in rows if not r["layers_differ"]]
    print("\nevery pairing changes the allocation" if not unchanged else f"\nunchanged: {', '.join(unchanged)}")
    if args.save:
        fileio.write_json(RESULTS, {"protocol": {"model": "resnet20", "dataset": "digits", "input_size": 8,
                                                 "batch_size": 64, "pretrain_epochs": args.pretrain_epochs,
                                                 "scope": "protected", "protect": 0.1, "steps": 100,
                                                 "threads": args.threads},
                                    "rows": rows})


if __name__ == "__main__":
    main()
