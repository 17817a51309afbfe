"""Where prunebench keeps things on disk: every path a command reads or writes, relative to the project folder.

``dvc.yaml`` declares the same paths as its stages' outputs (``tests/test_dvc.py`` checks the two agree).  Files
are written through :mod:`pruning.fileio` (atomic: a kill never leaves half a file).

::

    data/<dataset>/            prepared data                       (prepare)
    models/dense.pt            the dense baseline                  (pretrain)
    models/cache/              dense baselines per params, for commands run outside DVC
    models/trials/<key>/       one benchmark trial: checkpoints, step results, result.json   (benchmark)
    models/trials/sparse/<key>/  a method's sparse-trained checkpoint, shared by its speedups
    models/tune/<key>/         one tuning study's work folder and locks                      (tune)
    params/<stage>.json        each DVC stage's effective params                             (params)
    reports/benchmark.json     the benchmark's results                                       (benchmark)
    reports/tuned.json         tuned trials, carried into the leaderboard                    (tune)
    reports/tune/<study>/      a study's summary and plots                                   (tune)
    reports/leaderboard.*, metrics.json, plots.csv                                          (leaderboard)
"""
from __future__ import annotations

from pathlib import Path

DENSE_PATH = Path("models/dense.pt")
CACHE_DIR = Path("models/cache")
TRIALS_DIR = Path("models/trials")
TUNE_DIR = Path("models/tune")
PARAMS_DIR = Path("params")
REPORTS_DIR = Path("reports")
RESULTS_PATH = REPORTS_DIR / "benchmark.json"
TUNED_PATH = REPORTS_DIR / "tuned.json"
STUDY_DIR = REPORTS_DIR / "tune"


def dataset_slug(name: str) -> str:
    """A dataset's folder name: its name, or ``imagefolder-<folder>`` for ``imagefolder:<path>``."""
    if name.startswith("imagefolder:"):
        return "imagefolder-" + Path(name.split(":", 1)[1]).resolve().name
    return name


def prepared_dir(prepared_root: str | Path, dataset: str) -> Path:
    """Where ``prepare`` materialises ``dataset`` (``data/<dataset>/`` by default)."""
    return Path(prepared_root) / dataset_slug(dataset)


def trial_dir(trials_dir: str | Path, key: str) -> Path:
    return Path(trials_dir) / key


def sparse_dir(trials_dir: str | Path, key: str) -> Path:
    return Path(trials_dir) / "sparse" / key


def dense_eval_path(trials_dir: str | Path, key: str) -> Path:
    return Path(trials_dir) / f"dense-{key}.json"


def study_work_dir(key: str) -> Path:
    return TUNE_DIR / key


def study_report_dir(name: str) -> Path:
    return STUDY_DIR / name
