"""Shared by the end-to-end tests: a copy of the project as its own git + DVC repo, and MLflow lookups."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_project(tmp: Path, quick: dict) -> tuple[Path, dict]:
    """A copy of the project as its own git + DVC repo, params.yaml set to the quick profile (tweaked)."""
    proj = tmp / "proj"
    proj.mkdir()
    for name in ("pruning", "flows"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "quick"
    params["profiles"]["quick"] = quick
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(proj),
           "PREFECT_HOME": str(tmp / "prefect"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    run = lambda *cmd: subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True, text=True)
    run("git", "init", "-q")
    run(str(BIN / "dvc"), "init", "-q")
    run(str(BIN / "dvc"), "config", "core.analytics", "false")
    shutil.copytree(ROOT / ".dvc/plots", proj / ".dvc/plots")  # the plot template dvc.yaml names
    run("git", "add", "-A")
    run("git", "commit", "-qm", "init")
    return proj, env


def client(proj: Path):
    from mlflow import MlflowClient
    return MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")


def runs(proj: Path):
    c = client(proj)
    exp = c.get_experiment_by_name("prunebench/digits/resnet20")
    return c, list(c.search_runs([exp.experiment_id], max_results=1000))
