"""Does finetuning converge under the embedded default's protocol?  Validation accuracy per epoch, dense and pruned.

    .venv/bin/python benchmarks/learning_curves.py [--methods l2 taylor ...] [--seed 0] [--longer 2] [--save]

With params.yaml's recipe (resnet20 on digits at 8x8, ``pretrain``, ``sparsify``, ``prune`` and ``finetune``
sections), in a scratch folder: pretrain the dense model (its validation curve), then for every method and both
benchmark speedups sparsify (when paired), prune, and finetune twice from the same pruned checkpoint: for
``finetune.epochs`` (the protocol; its validation curve) and for ``--longer`` times as many epochs (same schedule,
stretched).  A method has converged under the protocol when the longer budget gains nothing beyond noise: the
table gives both final validation accuracies and their difference (one validation image is 0.37 points).
Writes benchmarks/results/learning_curves.png and (--save) learning_curves.json; prints a Markdown table.
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

from flows import stages  # noqa: E402
from flows.config import load_params  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def curve(history: list) -> list:
    return [round(h["val_acc"], 2) for h in history]


def run_method(params, method: str, speedup: float, dense: Path, work: Path, longer: int) -> dict:
    stages.sparsify_stage(params, method, dense, work / "sparse.pt")
    pruned = stages.prune_stage(params, method, speedup, params.prune.scope, work / "sparse.pt",
                                work / "pruned.pt", eval_split="val")
    epochs = params.finetune.epochs
    protocol = stages.finetune_stage(params, work / "pruned.pt", work / "ft.pt", epochs)
    extended = stages.finetune_stage(params, work / "pruned.pt", work / "ft_long.pt", epochs * longer)
    short, long = curve(protocol["finetune_history"]), curve(extended["finetune_history"])
    return {"method": method, "speedup_target": speedup, "speedup": pruned["speedup"],
            "acc_pruned_val": pruned["acc_pruned"], "curve": short, "curve_longer": long,
            "final": short[-1], "final_longer": long[-1], "gain_longer": round(long[-1] - short[-1], 2)}


def plot(dense_curve: list, rows: list, speedups: list, epochs: int, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 1 + len(speedups), figsize=(5 * (1 + len(speedups)), 4.2))
    axes[0].plot(range(1, len(dense_curve) + 1), dense_curve, "k.-")
    axes[0].set(title="dense pretraining", xlabel="epoch", ylabel="validation accuracy (%)")
    for ax, speedup in zip(axes[1:], speedups):
        for r in (r for r in rows if r["speedup_target"] == speedup):
            line, = ax.plot(range(1, len(r["curve"]) + 1), r["curve"], ".-", lw=1, label=r["method"])
            ax.plot([len(r["curve_longer"])], [r["final_longer"]], "x", color=line.get_color())
        ax.axvline(epochs, color="grey", ls=":")
        ax.set(title=f"finetuning at {speedup:g}x (x: after the longer budget)", xlabel="epoch",
               ylim=(max(0, min(min(r["curve"][-1] for r in rows) - 15, 80)), 100.5))
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def table(rows: list) -> str:
    lines = ["| method | speedup | val acc after pruning | protocol final | longer final | gain |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['speedup_target']:g}x | {r['acc_pruned_val']:.2f} | {r['final']:.2f} | "
                     f"{r['final_longer']:.2f} | {r['gain_longer']:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", help="default: params.yaml's benchmark.methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--longer", type=int, default=2, help="the longer budget, as a multiple of finetune.epochs")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/learning_curves.json")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml", overrides={"seed": args.seed})
    methods = args.methods or params.benchmark.methods
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        params = params.model_copy(update={"data": params.data.model_copy(update={"prepared_dir": tmp})})
        stages.prepare(params)
        dense = Path(tmp) / "dense.pt"
        dense_curve = curve(stages.pretrain(params, dense)["history"])
        for method in methods:
            for speedup in params.benchmark.speedups:
                work = Path(tmp) / f"{method}-{speedup:g}"
                work.mkdir()
                rows.append(run_method(params, method, float(speedup), dense, work, args.longer))
                print(f"{method} @ {speedup:g}x: {rows[-1]['curve']} -> longer {rows[-1]['final_longer']}",
                      flush=True)
    seconds = time.perf_counter() - start
    png = plot(dense_curve, rows, [float(s) for s in params.benchmark.speedups], params.finetune.epochs,
               RESULTS / "learning_curves.png")
    print(table(rows))
    gains = [r["gain_longer"] for r in rows]
    print(f"\nlonger budget gain: mean {sum(gains) / len(gains):+.2f}, max {max(gains):+.2f} points; "
          f"{seconds:.0f} s; plot {png.relative_to(ROOT)}")
    if args.save:
        out = RESULTS / "learning_curves.json"
        out.write_text(json.dumps({"machine": platform.platform(), "seed": args.seed, "longer": args.longer,
                                   "finetune_epochs": params.finetune.epochs, "dense_curve": dense_curve,
                                   "seconds": round(seconds, 1), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
