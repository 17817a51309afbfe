"""Tuned vs untuned allocation at the same MACs target (issue: tuning), on the embedded default.

    .venv/bin/python benchmarks/tune_vs_untuned.py [--methods l2 taylor ...] [--speedup 4] [--trials 10]

For each method it runs ``prunebench tune --method <m> --speedup 4 --trials N`` (a fresh study, in a scratch copy
of params.yaml's defaults: resnet20 on digits) and reads the study summary: the untuned trial (params.yaml's scope,
``protected``) and the best tuned allocation after the same full finetune, both on the test split, with their MACs,
plus the trials the study used and the seconds it took.  Writes benchmarks/results/tune_vs_untuned.json and prints a
Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["random", "l1", "l2", "fpgm", "lamp", "bnscale", "taylor", "hessian", "obdc", "hrank", "thinet", "cp",
           "bnscale+bnscale_reg", "bnscale+group_lasso", "l2+group_norm", "l2+growing_reg", "l2+group_lasso"]


def run_method(work: Path, method: str, speedup: float, trials: int) -> dict:
    cmd = [str(Path(sys.executable).parent / "prunebench"), "tune", "--method", method, "--speedup", str(speedup),
           "--trials", str(trials)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"method": method, "status": "failed", "error": done.stderr.strip().splitlines()[-1:]}
    summaries = sorted((work / "reports/tune").glob(f"*-{method}-{speedup:g}x-*/summary.json"),
                       key=lambda p: p.stat().st_mtime)
    s = json.loads(summaries[-1].read_text())
    tuned, untuned = s["tuned"], s["untuned"]
    return {"method": method, "status": "ok", "study": s["study"], "trials": s["trials"],
            "acc_untuned": untuned.get("acc_finetuned"), "acc_tuned": tuned["acc_finetuned"],
            "macs_untuned": untuned.get("macs_pruned"), "macs_tuned": tuned["macs_pruned"],
            "speedup_untuned": untuned.get("speedup"), "speedup_tuned": tuned["speedup"],
            "best_val_acc": s["best"]["val_acc"], "kept": tuned["kept"], "protect": tuned["protect"],
            "steps": tuned["steps"], "seconds_study": s["seconds_this_run"], "seconds_command": seconds}


def table(rows: list) -> str:
    lines = ["| method | untuned acc | tuned acc | Δ | MACs untuned / tuned (M) | trials (complete/pruned/failed) "
             "| study s | command s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | |")
            continue
        t = r["trials"]
        delta = r["acc_tuned"] - r["acc_untuned"] if r["acc_untuned"] is not None else float("nan")
        lines.append(f"| {r['method']} | {r['acc_untuned']:.2f} | {r['acc_tuned']:.2f} | {delta:+.2f} | "
                     f"{r['macs_untuned'] / 1e6:.2f} / {r['macs_tuned'] / 1e6:.2f} | "
                     f"{t['complete']}/{t['pruned']}/{t['fail']} | {r['seconds_study']:.0f} | "
                     f"{r['seconds_command']:.0f} |")
    ok = [r for r in rows if r["status"] == "ok" and r["acc_untuned"] is not None]
    better = sum(r["acc_tuned"] >= r["acc_untuned"] for r in ok)
    lines.append(f"\ntuned >= untuned for {better} of {len(ok)} methods")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--speedup", type=float, default=4.0)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--work", type=Path, default=ROOT / ".prunebench" / "tune-bench",
                        help="scratch project folder (its baseline cache is reused between runs)")
    parser.add_argument("--fresh", action="store_true", help="drop earlier studies in --work first")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for name in ("optuna.db", "mlflow.db", "reports", "models/tune", "models/trials"):
            path = args.work / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    shutil.copy(ROOT / "params.yaml", args.work / "params.yaml")
    rows = []
    for method in args.methods:
        rows.append(run_method(args.work, method, args.speedup, args.trials))
        print(json.dumps(rows[-1], default=str), flush=True)
    out = {"machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
                      f"{platform.system()}".strip(),
           "speedup": args.speedup, "trials": args.trials, "rows": rows}
    target = ROOT / "benchmarks/results/tune_vs_untuned.json"
    target.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
