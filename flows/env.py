"""Quiet, offline defaults for every tool prunebench drives: no telemetry, nothing reaches the network.

The one set: the CLI, Prefect's server subprocess and the tests all apply it (before Prefect and torch load)."""
import os

QUIET = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "YOLO_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # Prefect's temporary server (flows/server.py): quiet, patient on a busy machine, nothing persisted
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    # torch's OpenMP threads spin-wait by default; on a busy 2-core machine that makes epochs ~15x slower
    "OMP_WAIT_POLICY": "PASSIVE",
}


def quiet_environment() -> None:
    """Set the no-telemetry variables unless the user set them already."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
