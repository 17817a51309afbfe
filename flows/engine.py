"""Prefect as prunebench uses it: quiet defaults before it is imported, the options every flow and task takes,
and user errors kept to one line.

Every module that declares a flow or a task imports ``flow``, ``task``, ``FLOW`` and ``TASK`` from here, so
Prefect is configured once, before its first import, whichever module is imported first.
"""
from __future__ import annotations

import logging

from . import server as _server  # noqa: F401  (sets Prefect's quiet defaults before it is imported)
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from pruning.errors import PruneBenchError  # noqa: E402

__all__ = ["FLOW", "TASK", "flow", "task", "flow_run_id"]

# Tasks hand each other files, and prunebench keys and caches results itself: Prefect persists nothing.
TASK = dict(cache_policy=NO_CACHE, persist_result=False)
FLOW = dict(persist_result=False, log_prints=False, validate_parameters=False)


class _UserErrorsStayOneLine(logging.Filter):
    """Drop Prefect's ERROR records (with their tracebacks) for a PruneBenchError: bad input raised inside a flow
    reaches the CLI, which prints it as one line; Prefect still records the failed state on the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, PruneBenchError) or "PruneBenchError" in record.getMessage())


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_UserErrorsStayOneLine())

# Prefect's background senders say "Still processing items: N items remaining..." while they drain at exit (a
# command that fails fast on bad input exits with an event or a log line still queued): progress of Prefect's own
# shutdown, not something a user can act on, and it would break the one-line contract for bad input.
for _name in ("EventsWorker", "APILogWorker"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def flow_run_id():
    """The id of the Prefect flow run this code runs in (None outside one)."""
    from prefect.runtime import flow_run
    return flow_run.id
