import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from flows.env import quiet_environment

ROOT = Path(__file__).resolve().parents[1]
quiet_environment()  # the commands' own defaults, for the libraries the tests drive directly too
if "YOLO_CONFIG_DIR" not in os.environ:  # ultralytics' settings and fonts: out of the user's folders, removed after
    os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="prunebench-yolo-cfg-")
    atexit.register(shutil.rmtree, os.environ["YOLO_CONFIG_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def digits():
    import pruning
    return pruning.load_data("digits", input_size=32)  # the size the unit tests' models are built for


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
