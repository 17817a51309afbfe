"""Optuna storage: SQLite (default), PostgreSQL or a journal file, opened with one-line errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import optuna

from pruning.errors import PruneBenchError, first_line

from ..tracking import store_lock


def open_storage(url: str):
    """Optuna storage for ``sqlite:///...``, ``postgresql://...`` (any SQLAlchemy URL) or ``journal:<file>``."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend
            path = Path(url.split(":", 1)[1])
            if not path.parent.is_dir():
                raise OSError(f"folder {path.parent} does not exist")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise ValueError("expected sqlite:///<file>, postgresql://user:pass@host/db or journal:<file>")
        with warnings.catch_warnings(), store_lock(url):  # two workers creating one SQLite schema collide
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as e:  # optuna/SQLAlchemy raise many types (ArgumentError, OperationalError, ImportError, ...)
        reason = first_line(e)
        raise PruneBenchError(f"cannot open the Optuna storage {url!r}: {reason}")


def _engine_kwargs(url: str) -> dict:
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}

