"""The YOLOv8 leaderboard: every criterion YOLO can prune with, on yolov8n at 2x on the generated ``shapes`` set.

    .venv/bin/python benchmarks/yolo_leaderboard.py [--seeds 0 1 2] [--save]
    .venv/bin/python benchmarks/yolo_leaderboard.py --summary benchmarks/results/yolo_leaderboard.json

Runs ``prunebench benchmark --profile yolo`` in a throwaway copy of the project (the same flow, MLflow runs and
leaderboard as a classifier's): a dense yolov8n trained from scratch with the ``yolo`` recipe (ultralytics'
trainer, 30 epochs at 64 px), then per criterion and seed: prune to 2x MACs (Detect head protected), finetune 10
epochs, validate.  The cells rank by mean mAP50-95 over seeds with its 95% t-interval (mAP is a dataset-level
score: no per-image paired test); mAP50, the MACs and measured latency speedups and the step time sit beside it.
``--save`` writes benchmarks/results/yolo_leaderboard.json (the summary) and .md (the leaderboard).  Run it on an
otherwise idle machine: it trains for real and times latency.
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

RESULTS = ROOT / "benchmarks" / "results" / "yolo_leaderboard"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--summary", type=Path, default=None, help="tabulate a finished run's summary instead of running")
    args = ap.parse_args(argv)
    if args.summary:
        summary = json.loads(args.summary.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="prunebench-yolo-") as tmp:
            summary = benchmark_in_copy(Path(tmp), "yolo",
                                        lambda profile: profile["benchmark"].update(seeds=args.seeds))
    board = leaderboard.markdown(leaderboard.build(summary))
    board += f"\nWall time of the whole benchmark (pretraining included): {summary['seconds_wall'] / 60:.0f} min.\n"
    print(board, flush=True)
    if args.save:
        RESULTS.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
        RESULTS.with_suffix(".md").write_text(board)
    return 0


if __name__ == "__main__":
    sys.exit(main())
