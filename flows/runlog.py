"""Progress as the Prefect run's logs: what a flow-run page in the Prefect UI shows.

prunebench's progress lines (trials, epochs, messages) go to the logger ``prunebench``, at INFO, with Prefect's API
handler and no console output of its own (the commands print their own progress).  Prefect's loggers stay at
``PREFECT_LOGGING_LEVEL`` (WARNING), which keeps the commands' consoles quiet.
"""
from __future__ import annotations

import logging
from typing import Optional

RUN_LOG = "prunebench"


class _FiledUnder(logging.Filter):
    """Files a record under one flow run when given one (a scheduled run's page then shows the lines of its subflows
    and tasks too); otherwise under the run the line comes from, and a line from outside any run stays off the
    server (a command's messages before its flow starts)."""

    def __init__(self, flow_run_id=None):
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if self.flow_run_id is not None:
            record.flow_run_id = self.flow_run_id
            return True
        from prefect.context import get_run_context
        from prefect.exceptions import MissingContextError
        try:
            get_run_context()
        except MissingContextError:
            return False
        return True


def send_to_server(flow_run_id=None, warnings: bool = False) -> logging.Logger:
    """The ``prunebench`` logger, its records sent to the Prefect server as run logs (under ``flow_run_id`` when
    given); ``warnings``: Python warnings (pruning's, e.g. a scope that cannot reach its target) are sent too.

    Called again in one process (a second run), it replaces the earlier handler instead of adding one.
    """
    from prefect.logging.handlers import APILogHandler
    handler = APILogHandler()
    handler.addFilter(_FiledUnder(flow_run_id))
    logger = logging.getLogger(RUN_LOG)
    _replace_handler(logger, handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if warnings:
        logging.captureWarnings(True)
        _replace_handler(logging.getLogger("py.warnings"), handler)
    return logger


def _replace_handler(logger: logging.Logger, handler: Optional[logging.Handler]) -> None:
    from prefect.logging.handlers import APILogHandler
    for old in [h for h in logger.handlers if isinstance(h, APILogHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
