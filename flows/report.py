"""The leaderboard flow: the benchmark's results (and tuned rows) into reports/ and Prefect artifacts."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pruning import fileio

from . import leaderboard
from .engine import FLOW, flow
from .layout import REPORTS_DIR, RESULTS_PATH, TUNED_PATH


@flow(name="leaderboard", **FLOW)
def leaderboard_flow(results_path: str = str(RESULTS_PATH), out_dir: str = str(REPORTS_DIR),
                     seeds: Optional[list] = None) -> leaderboard.Board:
    """Aggregate the benchmark (and tuned rows) into reports/ (CSV, Markdown, PNGs, metrics, plot data) and
    Prefect artifacts.  MLflow is not touched: each benchmark parent logged its own leaderboard when it ran, and a
    finished run is never edited."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    summary = leaderboard.load_summary(Path(results_path))
    if seeds is not None:
        summary = leaderboard.seed_subset(summary, seeds, Path(results_path))
    if TUNED_PATH.is_file():
        summary = leaderboard.with_tuned(summary, fileio.read_json(TUNED_PATH))
    board = leaderboard.build(summary)
    files = leaderboard.write_reports(summary, Path(out_dir), board)
    create_table_artifact(key="prunebench-leaderboard", table=leaderboard.table_rows(board),
                          description=f"prunebench leaderboard: {summary['model']} on {summary['dataset']}")
    create_markdown_artifact(key="prunebench-leaderboard-md", markdown=Path(files["md"]).read_text())
    return board
