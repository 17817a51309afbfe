"""Trials on a Dask cluster (prefect-dask): one trial per worker, one worker per GPU.

``benchmark.dask_address: local`` starts a cluster on this machine: on a GPU machine (``compute.device`` resolving
to CUDA) one worker process per GPU, each seeing only its own (``CUDA_VISIBLE_DEVICES``), so ``cuda`` in a worker is
its GPU; elsewhere ``benchmark.concurrency`` single-threaded workers.  ``tcp://host:8786`` uses a running
scheduler (``dask scheduler`` on one machine, ``CUDA_VISIBLE_DEVICES=<i> dask worker tcp://host:8786 --nthreads 1
--nworkers 1`` per GPU on every machine; README "Scale out"), checked to answer before any work starts.
"""
from __future__ import annotations

import socket
from urllib.parse import urlparse

from pruning.errors import PruneBenchError

from .config import Params

CONNECT_TIMEOUT = 5.0  # seconds a scheduler has to accept a connection before the address is refused


def check_scheduler(address: str) -> None:
    """``local``, or a ``tcp://host:port`` scheduler that accepts a connection now (one line otherwise)."""
    if address == "local":
        return
    url = urlparse(address)
    if url.scheme not in ("tcp", "tls") or not url.hostname or not url.port:
        raise PruneBenchError(f"benchmark.dask_address {address!r} is neither 'local' nor a scheduler address "
                              f"like tcp://host:8786")
    try:
        socket.create_connection((url.hostname, url.port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise PruneBenchError(f"Dask scheduler {address} is unreachable ({e.strerror or e}): start one with "
                              f"`dask scheduler` and its workers with `dask worker {address}`, or use --dask "
                              f"local") from None


def gpu_cluster(gpus: int) -> dict:
    """``distributed.SpecCluster`` arguments: a scheduler here and one single-threaded worker process per GPU,
    pinned to it through its environment (what dask-cuda's LocalCUDACluster does, without its extra dependency)."""
    from distributed import Nanny, Scheduler
    return {"scheduler": {"cls": Scheduler, "options": {"dashboard_address": ":0"}},
            "workers": {f"gpu{i}": {"cls": Nanny, "options": {"nthreads": 1,
                                                                "env": {"CUDA_VISIBLE_DEVICES": str(i)}}}
                        for i in range(gpus)}}


def task_runner(params: Params):
    """prefect-dask's task runner for ``benchmark.dask_address``."""
    from prefect_dask import DaskTaskRunner
    address = params.benchmark.dask_address
    if address != "local":
        return DaskTaskRunner(address=address)
    import torch
    if params.compute.torch_device().type == "cuda":
        return DaskTaskRunner(cluster_class="distributed.SpecCluster",
                              cluster_kwargs=gpu_cluster(torch.cuda.device_count()))
    return DaskTaskRunner(cluster_kwargs={"n_workers": params.benchmark.concurrency, "threads_per_worker": 1})
