"""Shared by the end-to-end tests and the benchmarks: a copy of the project as its own git + DVC repo, and MLflow
lookups."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


ONE_SEED_ONE_PROCESS = {"seeds": [0], "concurrency": 1}


def make_project(tmp: Path, quick: dict | None = None, *, merge: bool = False,
                 profile: str | None = "quick") -> tuple[Path, dict]:
    """A copy of the project as its own git + DVC repo in ``tmp/proj``, and the environment to run commands in it.

    Tests and benchmarks (``benchmarks/*.py`` import it as ``tests.helpers``) build their throwaway projects here.
    ``quick`` replaces params.yaml's ``profiles.quick`` (``merge=True``: only the sections it names; None: kept as
    is); a replacing profile runs one seed in one process unless its benchmark section says otherwise; ``profile`` becomes params.yaml's active profile (None: params.yaml's own, the full default chain).
    The environment: this interpreter's bin first on PATH, the copy on PYTHONPATH, its own PREFECT_HOME, a git
    identity, no analytics, OMP_WAIT_POLICY as prunebench's commands default it, and no outside MLflow store or
    Prefect server.
    """
    proj = tmp / "proj"
    proj.mkdir(parents=True)
    for name in ("pruning", "flows"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "dvc.yaml", ".dvcignore", ".gitignore", "params.yaml"):
        shutil.copy(ROOT / name, proj / name)
    if quick is not None and not merge:  # one seed in one process, unless the caller asks for more
        quick = {**quick, "benchmark": {**ONE_SEED_ONE_PROCESS, **quick.get("benchmark", {})}}
    if quick is not None or profile is not None:
        params = yaml.safe_load((proj / "params.yaml").read_text())
        if quick is not None:
            params["profiles"]["quick"] = {**params["profiles"]["quick"], **quick} if merge else quick
        if profile is not None:
            params["profile"] = profile
        (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(proj),
           "PREFECT_HOME": str(tmp / "prefect"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as flows.env sets it, so a bare loop compares with the commands
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


def benchmark_in_copy(tmp: Path, profile: str, edit=None) -> dict:
    """``prunebench benchmark`` with params.yaml's ``profile`` in a throwaway project copy (``edit(profile_dict)``
    changes the profile first); returns reports/benchmark.json with its wall time as ``seconds_wall``.
    Benchmarks measure through this, so a result is what the command itself gives."""
    import json
    import time
    proj, env = make_project(tmp, profile=profile)
    if edit is not None:
        params = yaml.safe_load((proj / "params.yaml").read_text())
        edit(params["profiles"][profile])
        (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "prunebench"), "benchmark"], cwd=proj, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"prunebench benchmark (profile {profile}) failed: {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((proj / "reports" / "benchmark.json").read_text())
    summary["seconds_wall"] = time.perf_counter() - start
    return summary


def client(proj: Path):
    from mlflow import MlflowClient
    return MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")


def runs(proj: Path):
    c = client(proj)
    exp = c.get_experiment_by_name("prunebench/digits/resnet20")
    return c, list(c.search_runs([exp.experiment_id], max_results=1000))


def randomize_bn(model) -> None:
    """BatchNorm weights and statistics unlike a fresh build's (so code that copies or merges them is tested)."""
    import torch
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
