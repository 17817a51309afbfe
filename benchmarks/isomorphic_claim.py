"""The Isomorphic Pruning paper's claim on prunebench: isomorphic ranking beats plain global ranking at equal MACs.

    .venv/bin/python benchmarks/isomorphic_claim.py [--models deit convnext] [--seeds 0 1 2] [--save]

For each model, in a fresh copy of the project (tests/helpers.make_project), ``prunebench benchmark`` runs with the
``isomorphic`` profile of params.yaml: the family's recipe from scratch on digits at 32x32 (a DeiT with patch_size
8; ConvNeXt-atto as is, without the profile's head pruning, which it has no heads for), Taylor importance, every
scope (local, global, protected, isomorphic) at 2x and 4x MACs, each seed a trial, finetuned with distillation from
the dense model.  The table: per scope and speedup the mean test accuracy over seeds with its 95% t-interval, the
achieved MACs speedup, and isomorphic minus each other scope with a paired bootstrap interval and permutation
p-value over the same test images and seeds (flows/stats.py).  Writes benchmarks/results/isomorphic_claim.json
(--save merges per model) and prints Markdown.  Run it on an otherwise idle machine: it trains for real.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows import leaderboard  # noqa: E402
from tests.helpers import benchmark_in_copy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "isomorphic_claim.json"
MODELS = {  # model -> what the isomorphic profile's model and prune sections become
    "deit": ({"name": "timm/deit_tiny_patch16_224", "kwargs": {"patch_size": 8}}, {}),
    "convnext": ({"name": "timm/convnext_atto", "kwargs": {}}, {"head_ratio": 0.0}),
}
SCOPES = ("local", "global", "protected", "isomorphic")


def run_benchmark(model: str, seeds: list, tmp: Path) -> dict:
    def edit(profile: dict) -> None:
        profile["model"], prune = MODELS[model]
        profile["prune"] = {**profile["prune"], **prune}
        profile["benchmark"] = {**profile["benchmark"], "seeds": seeds}
    return benchmark_in_copy(tmp, "isomorphic", edit)


def claim_table(summary: dict) -> list[dict]:
    cells = leaderboard.cells_of(summary)
    rows = []
    for (method, scope, speedup), cell in cells.items():
        if cell["status"] != "ok":
            rows.append({"scope": scope, "speedup_target": speedup, "status": "failed", "error": cell["error"]})
            continue
        pruned = [t["acc_pruned"] for t in summary["trials"] if t["method"] == method and t["scope"] == scope
                  and t.get("speedup_target") == speedup and t.get("acc_pruned") is not None]
        row = {"scope": scope, "speedup_target": speedup, "seeds": cell["seeds"], "acc_mean": cell["acc_mean"],
               "acc_pruned_mean": sum(pruned) / len(pruned) if pruned else None,
               "acc_lo": cell["acc_lo"], "acc_hi": cell["acc_hi"], "speedup": cell["speedup"],
               "params_kept": cell["params_kept"]}
        iso = cells.get((method, "isomorphic", speedup))
        if scope != "isomorphic" and iso and iso["status"] == "ok":
            row["isomorphic_minus_this"] = leaderboard.paired(iso, cell)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["speedup_target"], SCOPES.index(r["scope"])))


def markdown(model: str, result: dict) -> str:
    lines = [f"\n{model} (dense {result['acc_dense']:.2f}%, {result['seconds_wall'] / 60:.0f} min)",
             "| speedup | scope | before finetuning | test acc, mean [95% CI] | MACs speedup | params kept | "
             "isomorphic − this [95% CI], p |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("status") == "failed":
            lines.append(f"| {r['speedup_target']:g}x | {r['scope']} | failed: {r['error']} | | | | |")
            continue
        d = r.get("isomorphic_minus_this")
        diff = f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}], p={d['p']:.3f}" if d else "—"
        before = "—" if r["acc_pruned_mean"] is None else f"{r['acc_pruned_mean']:.2f}"
        lines.append(f"| {r['speedup_target']:g}x | {r['scope']} | {before} | {r['acc_mean']:.2f} [{r['acc_lo']:.2f}, "
                     f"{r['acc_hi']:.2f}] ({r['seeds']} seeds) | {r['speedup']:.2f} | {r['params_kept']:.2f} | {diff} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--summary", type=Path, default=None,
                    help="tabulate a finished run's reports/benchmark.json instead of running (one model)")
    args = ap.parse_args(argv)
    results = {}
    for model in args.models:
        if args.summary:
            summary = json.loads(args.summary.read_text())
            summary.setdefault("seconds_wall", 0.0)
        else:
            with tempfile.TemporaryDirectory(prefix="prunebench-isomorphic-") as tmp:
                summary = run_benchmark(model, args.seeds, Path(tmp))
            kept = Path(tempfile.gettempdir()) / f"isomorphic_claim_{model}.json"
            kept.write_text(json.dumps(summary))  # to tabulate again (--summary) without rerunning
        trials = summary["trials"]
        results[model] = {"model": MODELS[model][0], "seeds": args.seeds, "rows": claim_table(summary),
                          "acc_dense": next((t["acc_dense"] for t in trials if t.get("acc_dense") is not None), 0.0),
                          "recipe": next((t.get("recipe") for t in trials if t.get("recipe")), None),
                          "seconds_wall": summary["seconds_wall"]}
        print(markdown(model, results[model]), flush=True)
    if args.save:
        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        saved.update(results)
        RESULTS.write_text(json.dumps(saved, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
