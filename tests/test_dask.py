"""Trials on a Dask cluster (prefect-dask): a real 2-worker LocalCluster on this CPU, against the serial run.

A trial's result depends on its key alone, so the same keys computed on Dask workers must give the serial run's
results, every trial must finish, and MLflow must hold one finished run per trial.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers import BIN, make_project, runs

TINY = {"pretrain": {"epochs": 1}, "sparsify": {"epochs": 1}, "finetune": {"epochs": 1},
        "prune": {"steps": 30, "calibration_batches": 1}, "evaluate": {"latency_repeats": 3},
        "benchmark": {"methods": ["taylor", "l2+group_norm"], "speedups": [2], "seeds": [0, 1],
                      "concurrency": 2}}
SAME = ("acc_pruned", "acc_finetuned", "macs_pruned", "params_pruned", "speedup", "test_correct")


def benchmark(proj, env, *args) -> dict:
    done = subprocess.run([str(BIN / "prunebench"), "benchmark", "--no-leaderboard", *args], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return {t["trial_key"]: t for t in json.loads((proj / "reports/benchmark.json").read_text())["trials"]}


@pytest.mark.slow
def test_trials_on_a_two_worker_dask_cluster_equal_the_serial_run(tmp_path):
    proj, env = make_project(tmp_path, TINY)
    serial = benchmark(proj, env, "--concurrency", "1")
    # the same project (dense baseline, data) without its finished trials and runs: Dask computes every trial anew
    shutil.move(proj / "models/trials", tmp_path / "serial-trials")
    (proj / "mlflow.db").rename(tmp_path / "serial-mlflow.db")
    on_dask = benchmark(proj, env, "--dask", "local")

    assert len(serial) == 4 and set(on_dask) == set(serial)
    assert all(t["status"] == "ok" and not t["cached"] for t in on_dask.values())
    for key, trial in on_dask.items():
        assert {k: trial[k] for k in SAME} == {k: serial[key][k] for k in SAME}, trial["method"]
    _, all_runs = runs(proj)
    trial_runs = [r for r in all_runs if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["trial_key"] for r in trial_runs) == sorted(on_dask)  # one run per trial, no twins
    assert all(r.info.status == "FINISHED" for r in trial_runs)


def test_a_local_gpu_cluster_pins_one_worker_to_each_gpu():
    """The spec a GPU machine's ``--dask local`` starts (started here for real: the pinning is the environment
    each worker process gets, which needs no GPU to check)."""
    from distributed import Client, SpecCluster

    from flows.cluster import gpu_cluster
    with SpecCluster(**gpu_cluster(2), asynchronous=False) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        seen = client.run(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"])
    assert sorted(seen.values()) == ["0", "1"]


@pytest.mark.parametrize("address, message", [("tcp://127.0.0.1:9", "is unreachable"),
                                              ("scheduler:8786", "neither 'local' nor a scheduler address")])
def test_a_bad_scheduler_address_is_one_line_and_exit_2_before_any_work(tmp_path, address, message):
    import os
    done = subprocess.run([str(BIN / "prunebench"), "benchmark", "--dask", address], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")})
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / name).exists() for name in ("models", "data", "reports", "mlflow.db"))
