"""Flow-run names that say what a run does: ``benchmark-resnet20-digits-20260101-0200``.

Prefect otherwise names a run after two random words, so a list of nightly runs tells nothing apart.  The names
are computed when the run starts (Prefect's ``flow_run_name`` callables), from the run's own parameters.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from .layout import dataset_slug


def run_name(kind: str, model: str, dataset: str, methods: Iterable[str] = ()) -> str:
    """``<kind>[-<methods>]-<model>-<dataset>-<YYYYmmdd-HHMM>`` (local time); ``/`` of timm names becomes ``_``."""
    parts = [kind, "+".join(methods), model, dataset_slug(dataset), datetime.now().strftime("%Y%m%d-%H%M")]
    return "-".join(p for p in parts if p).replace("/", "_")


def from_params(kind: str):
    """A ``flow_run_name`` for a flow whose ``params`` parameter is the validated params as a dict (and, for a
    tuning flow, whose ``methods`` parameter lists the methods)."""
    def name() -> str:
        from prefect.runtime import flow_run
        args = flow_run.parameters
        params = args["params"]
        return run_name(kind, params["model"]["name"], params["data"]["dataset"], args.get("methods") or ())
    return name
