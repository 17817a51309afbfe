"""Orchestration cost, measured: Prefect + MLflow + file hand-offs against the same stage functions in a bare loop,
and the wall time and peak memory of `make bench` and `dvc repro` on the embedded default.

    .venv/bin/python benchmarks/orchestration_overhead.py overhead   # per-trial overhead and fixed start
    .venv/bin/python benchmarks/orchestration_overhead.py bench      # `make bench`: all methods x 2x, 4x x seeds
    .venv/bin/python benchmarks/orchestration_overhead.py repro      # full `dvc repro` (the same, through DVC)

Each part runs in a fresh temporary copy of the project (tests/helpers.make_project: its own git + DVC repo, Prefect
home and MLflow store).
Overhead: both sides run the quick-profile trials of N1 and N2 criteria (no sparsifier, so trials are alike) in a
fresh process, dense baseline and prepared data shared; per-trial overhead = slope of (flow - bare) over N, fixed
start = the intercept.  Results print as JSON (and go to benchmarks/results/ when --save is given).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `tests` imports as a namespace package
from tests.helpers import BIN, ROOT, make_project  # noqa: E402

BARE = r"""
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from flows import stages
from flows.config import load_params
methods = sys.argv[1].split(",")
params = load_params("params.yaml", "quick")
dense = Path("models/dense.pt")
dense_eval = stages.evaluate_stage(params, dense)
for i, m in enumerate(methods):
    work = Path(f"bare/{m}"); work.mkdir(parents=True, exist_ok=True)
    stages.run_trial(params, m, 2.0, "protected", dense, work / "finetuned.pt", work, dense_metrics=dense_eval)
print(json.dumps({"wall": time.perf_counter() - t0}))
"""


def timed(cmd, cwd, env) -> tuple[float, float, str]:
    """Wall seconds, peak memory (GB) of the whole process tree, and stdout; the peak's summed RSS is kept in
    :data:`LAST_PEAK_RSS`.  Memory is summed PSS (proportional set size): summed RSS counts the pages of shared
    libraries (torch's, about 0.3 GB) once per process, so with worker processes it overstates what the run
    takes by almost 1 GB."""
    import psutil
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample():
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            pss = rss = 0
            for c in [p] + p.children(recursive=True):
                try:
                    m = c.memory_full_info()
                    pss, rss = pss + m.pss, rss + m.rss
                except psutil.Error:  # a process that ended between listing and reading
                    pass
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(0.5)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{err[-3000:]}")
    LAST_PEAK_RSS[0] = peak[1] / 1e9
    return wall, peak[0] / 1e9, out


LAST_PEAK_RSS = [0.0]


def overhead(n_small: int, n_large: int) -> dict:
    methods = ["l1", "l2", "fpgm", "random", "lamp", "bnscale"]
    assert n_large <= len(methods)
    with tempfile.TemporaryDirectory(prefix="pb-overhead-") as tmp:
        proj, env = make_project(Path(tmp), profile=None)
        py = str(BIN / "python")
        # shared inputs: prepared data and the dense baseline (quick profile)
        subprocess.run([str(BIN / "prunebench"), "prepare", "--profile", "quick"], cwd=proj, env=env, check=True,
                       capture_output=True)
        subprocess.run([str(BIN / "prunebench"), "pretrain", "--profile", "quick"], cwd=proj, env=env, check=True,
                       capture_output=True)
        rows = {}
        for n in (n_small, n_large):
            chosen = ",".join(methods[:n])
            bare, _, out = timed([py, "-c", BARE, chosen], proj, env)
            shutil.rmtree(proj / "models/trials", ignore_errors=True)
            flow, mem, _ = timed([str(BIN / "prunebench"), "benchmark", "--profile", "quick", "--methods", chosen,
                                  "--speedups", "2", "--no-leaderboard"], proj, env)
            summary = json.loads((proj / "reports/benchmark.json").read_text())
            trial_wall = sum(t.get("seconds_wall", 0) for t in summary["trials"])
            rows[n] = {"bare_s": round(bare, 2), "flow_s": round(flow, 2), "flow_trials_s": round(trial_wall, 2),
                       "peak_gb": round(mem, 2)}
        a, b = rows[n_small], rows[n_large]
        per_trial_bare = (b["bare_s"] - a["bare_s"]) / (n_large - n_small)
        per_trial_over = ((b["flow_s"] - b["bare_s"]) - (a["flow_s"] - a["bare_s"])) / (n_large - n_small)
        fixed = (a["flow_s"] - a["bare_s"]) - n_small * per_trial_over
        return {"runs": rows, "per_trial_bare_s": round(per_trial_bare, 2),
                "per_trial_overhead_s": round(per_trial_over, 2),
                "per_trial_overhead_pct": round(100 * per_trial_over / per_trial_bare, 1),
                "fixed_start_s": round(fixed, 2), "load_avg": os.getloadavg()}


def repro() -> dict:
    with tempfile.TemporaryDirectory(prefix="pb-repro-") as tmp:
        proj, env = make_project(Path(tmp), profile=None)
        wall, mem, _ = timed([str(BIN / "dvc"), "repro"], proj, env)
        metrics = json.loads((proj / "reports/metrics.json").read_text())
        return {"wall_s": round(wall, 1), "peak_pss_gb": round(mem, 2), "trials": metrics["trials"],
                "trials_failed": metrics["trials_failed"], "acc_dense": metrics["acc_dense"],
                "kendall_tau_mean": metrics.get("kendall_tau_mean"), "load_avg": os.getloadavg(),
                "leaderboard": (proj / "reports/leaderboard.md").read_text()}


def bench() -> dict:
    """What `make bench` runs (`prunebench benchmark` on params.yaml's defaults) in a fresh copy of the project:
    wall time, peak memory, and the evidence the issue asks of the run itself."""
    with tempfile.TemporaryDirectory(prefix="pb-bench-") as tmp:
        proj, env = make_project(Path(tmp), profile=None)
        wall, mem, _ = timed([str(BIN / "prunebench"), "benchmark"], proj, env)
        metrics = json.loads((proj / "reports/metrics.json").read_text())
        summary = json.loads((proj / "reports/benchmark.json").read_text())
        return {"wall_s": round(wall, 1), "peak_pss_gb": round(mem, 2), "peak_rss_sum_gb": round(LAST_PEAK_RSS[0], 2),
                "trials": metrics["trials"], "trials_failed": metrics["trials_failed"], "acc_dense": metrics["acc_dense"],
                "kendall": {k: v for k, v in metrics.items() if k.startswith("kendall")},
                "friedman": {k: v for k, v in metrics.items() if k.startswith(("friedman", "nemenyi"))},
                "pairings_vs_criteria": allocations_differ(proj, summary), "load_avg": os.getloadavg(),
                "leaderboard": (proj / "reports/leaderboard.md").read_text()}


def allocations_differ(proj: Path, summary: dict) -> dict:
    """Per pairing (criterion+sparsifier), speedup and seed: how many layers keep another width than under the
    criterion alone (0 would mean sparse training changed nothing that was pruned)."""
    def widths(t):
        rows = json.loads((proj / "models/trials" / t["trial_key"] / "channels.json").read_text())
        return [r["channels"] for r in rows]
    ok = {(t["method"], t["speedup_target"], t["seed"]): t for t in summary["trials"] if t["status"] == "ok"}
    out = {}
    for (method, speedup, seed), t in sorted(ok.items(), key=str):
        alone = ok.get((method.split("+")[0], speedup, seed))
        if "+" in method and alone:
            differ = sum(a != b for a, b in zip(widths(t), widths(alone)))
            out.setdefault(f"{method}@{speedup:g}x", []).append(differ)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["overhead", "repro", "bench", "all"])
    ap.add_argument("--small", type=int, default=2)
    ap.add_argument("--large", type=int, default=5)
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/orchestration_<what>.json")
    args = ap.parse_args()
    out = {}
    if args.what in ("overhead", "all"):
        out["overhead"] = overhead(args.small, args.large)
        print(json.dumps(out["overhead"], indent=1), flush=True)
    if args.what in ("repro", "all"):
        out["repro"] = repro()
        print(json.dumps({k: v for k, v in out["repro"].items() if k != "leaderboard"}, indent=1))
        print(out["repro"]["leaderboard"])
    if args.what == "bench":
        out["bench"] = bench()
        print(json.dumps({k: v for k, v in out["bench"].items() if k != "leaderboard"}, indent=1))
        print(out["bench"]["leaderboard"])
    if args.save:
        path = ROOT / "benchmarks/results" / f"orchestration_{args.what}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
