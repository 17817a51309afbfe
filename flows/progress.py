"""Progress reporting: what a running command, flow or scheduled run says while it works.

The flows call the *current* reporter (:func:`current`); the CLI installs a visible one for the duration of a
command (:func:`reporting`): rich bars with an ETA on a terminal, plain lines on stderr otherwise (logs, DVC, CI),
so stdout stays clean for ``--json``.  A scheduled run installs one that writes to its Prefect run log.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Optional


class Reporter:
    """Progress hooks; the default is silent."""

    def sweep_start(self, total: int, label: str = "benchmark") -> None: ...
    def trial_start(self, name: str) -> None: ...
    def trial_end(self, name: str, result: dict) -> None: ...
    def epoch(self, label: str, total: int, row: dict) -> None: ...
    def message(self, text: str) -> None: ...

    def on_epoch(self, label: str, total: int) -> Callable[[dict], None]:
        """An ``on_epoch`` hook for the training loops that reports to this reporter."""
        return lambda row: self.epoch(label, total, row)


_CURRENT: Reporter = Reporter()
IN_WORKER = False  # a trial worker process (benchmark.concurrency > 1): its own lines, counted per task


def current() -> Reporter:
    return _CURRENT


def set_reporter(reporter: Reporter) -> None:
    global _CURRENT
    _CURRENT = reporter


def on_epoch(label: str, total: int) -> Callable[[dict], None]:
    """An epoch hook reporting to whichever reporter is current when the epoch ends."""
    return lambda row: _CURRENT.epoch(label, total, row)


def describe(result: dict) -> str:
    """One trial's outcome in a progress line."""
    if "line" in result:  # tuning trials describe themselves
        return result["line"]
    if result.get("status") != "ok":
        return f"FAILED: {result.get('error')}"
    score = "mAP50-95" if result.get("task") == "detect" else "acc"  # acc_* hold mAP50-95 (%) for detection
    return (f"{score} {result['acc_finetuned']:.2f} (dense {result['acc_dense']:.2f}), speedup {result['speedup']:.2f}x"
            + (" [cached]" if result.get("cached") else ""))


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Lines(Reporter):
    """Plain progress lines (what DVC and CI logs show), on stderr or given to ``write``."""

    def __init__(self, write: Callable[[str], None] = _stderr):
        self.total, self.done, self.write = 0, 0, write

    def sweep_start(self, total, label="benchmark"):
        self.total, self.done = total, 0
        self.write(f"{label}: {total} trial(s)")

    def trial_start(self, name):
        self.write(f"[{self.done + 1}/{self.total}] {name} ...")

    def trial_end(self, name, result):
        self.done += 1
        self.write(f"[{self.done}/{self.total}] {name}: {describe(result)}")

    def epoch(self, label, total, row):
        acc = f" val_acc {row['val_acc']:.2f}" if row.get("val_acc") is not None else ""
        self.write(f"  {label} epoch {row['epoch']}/{total}: loss {row['loss']:.4f}{acc}")

    def message(self, text):
        self.write(text)


class Bars(Lines):
    """Rich progress bars on a terminal: the sweep and the current run's epochs."""

    def __init__(self, progress):
        super().__init__()
        self.progress = progress
        self.sweep = None
        self.epochs = {}

    def sweep_start(self, total, label="benchmark"):
        self.total, self.done = total, 0
        self.sweep = self.progress.add_task(label, total=total)

    def trial_start(self, name):
        if self.sweep is not None:
            self.progress.update(self.sweep, description=f"sweep: {name}")

    def trial_end(self, name, result):
        self.done += 1
        if self.sweep is not None:
            self.progress.advance(self.sweep)
        self.progress.console.print(f"{name}: {describe(result)}", markup=False)

    def epoch(self, label, total, row):
        task_id = self.epochs.get(label)
        if task_id is None:
            task_id = self.epochs[label] = self.progress.add_task(label, total=total)
        self.progress.update(task_id, completed=row["epoch"], description=f"{label} loss {row['loss']:.3f}")
        if row["epoch"] >= total:
            self.progress.remove_task(task_id)
            del self.epochs[label]

    def message(self, text):
        self.progress.console.print(text)


class Both(Reporter):
    """Every progress event to two reporters (the console's and the Prefect run log's)."""

    def __init__(self, first: Reporter, second: Reporter):
        self.first, self.second = first, second

    def sweep_start(self, total, label="benchmark"):
        self.second.sweep_start(total, label)
        self.first.sweep_start(total, label)

    def trial_start(self, name):
        self.second.trial_start(name)
        self.first.trial_start(name)

    def trial_end(self, name, result):
        self.second.trial_end(name, result)
        self.first.trial_end(name, result)

    def epoch(self, label, total, row):
        self.second.epoch(label, total, row)
        self.first.epoch(label, total, row)

    def message(self, text):
        self.second.message(text)
        self.first.message(text)


def console_reporter(write: Optional[Callable[[str], None]] = None):
    """``(reporter, rich Progress or None)``: bars on a terminal, else plain lines on stderr, or plain lines
    given to ``write`` (a scheduled run's log, for instance)."""
    if write is not None:
        return Lines(write), None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        return Bars(progress), progress
    return Lines(), None


@contextlib.contextmanager
def reporting(to_prefect_runs: bool = False):
    """Progress on stderr while the block runs; ``to_prefect_runs``: the same lines also become the logs of the
    Prefect flow or task run they come from (its page in the Prefect UI)."""
    reporter, progress = console_reporter()
    if to_prefect_runs:
        from .runlog import send_to_server
        reporter = Both(reporter, Lines(send_to_server().info))
    set_reporter(reporter)
    with progress or contextlib.nullcontext():
        yield reporter
