import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for key, value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                   "DVC_NO_ANALYTICS": "1", "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                   "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def digits():
    import pruning
    return pruning.load_data("digits")


@pytest.fixture()
def cli(tmp_path):
    """Run ``prunebench`` in a subprocess from ``tmp_path``; returns (exit code, stdout, stderr)."""
    import subprocess

    def run(*args, timeout=600):
        proc = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        return proc.returncode, proc.stdout, proc.stderr
    return run


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny tensors only pay synchronisation cost for more (large on a shared CPU)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
