"""A leaderboard of one params.yaml profile, through the product's own benchmark flow.

    .venv/bin/python benchmarks/profile_leaderboard.py --profile yolo [--seeds 0 1 2] [--save]
    .venv/bin/python benchmarks/profile_leaderboard.py --profile latency [--seeds 0 1 2] [--save]
    .venv/bin/python benchmarks/profile_leaderboard.py --profile yolo --summary benchmarks/results/yolo_leaderboard.json

Runs ``prunebench benchmark --profile <profile>`` in a throwaway copy of the project (the same flow, MLflow runs and
leaderboard as any user's) and prints the leaderboard as the product writes it.  ``--save`` writes
benchmarks/results/<profile>_leaderboard.json (the summary) and .md (the leaderboard).  Run it on an otherwise idle
machine: it trains for real and times latency.

``yolo``: every criterion YOLO can prune with, on yolov8n at 2x MACs on the generated ``shapes`` set: a dense
yolov8n trained from scratch with the ``yolo`` recipe (ultralytics' trainer, 30 epochs at 64 px), then per criterion
and seed: prune to 2x MACs (Detect head protected), finetune 10 epochs, validate.  The cells rank by mean mAP50-95
over seeds with its 95% t-interval (mAP is a dataset-level score: no per-image paired test).

``latency``: the latency-calibrated leaderboard: resnet20 on digits at 32x32, every method pruned to the same
*measured* latency speedup at batch 32 (``prune.target: latency``), finetuned with the cifar_sgd recipe; cells rank
by paired tests over the same test images and seeds, with the MACs speedup each method needed beside the latency it
reached.
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

RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", required=True, help="a profile under params.yaml's profiles (yolo, latency, ...)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--summary", type=Path, default=None, help="tabulate a finished run's summary instead of running")
    args = ap.parse_args(argv)
    if args.summary:
        summary = json.loads(args.summary.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix=f"prunebench-{args.profile}-") as tmp:
            summary = benchmark_in_copy(Path(tmp), args.profile,
                                        lambda profile: profile.setdefault("benchmark", {}).update(seeds=args.seeds))
    board = leaderboard.markdown(leaderboard.build(summary))
    board += f"\nWall time of the whole benchmark (pretraining included): {summary['seconds_wall'] / 60:.0f} min.\n"
    print(board, flush=True)
    if args.save:
        out = RESULTS / f"{args.profile}_leaderboard"
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
        out.with_suffix(".md").write_text(board)
    return 0


if __name__ == "__main__":
    sys.exit(main())
