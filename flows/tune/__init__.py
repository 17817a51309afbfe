"""Optuna tuning of the pruning-ratio allocation, one study per method (``prunebench tune``).

A trial samples a ratio per layer group (see :mod:`pruning.allocation`), the protection floor and the number of
iterative steps, prunes the method's (sparse-trained) dense checkpoint with that allocation and finetunes briefly.
Single-objective mode scales the sampled allocation until the MACs speedup target is met, so every trial is
compared at the same cost, and maximises validation accuracy (the study's metric name: ``val_acc``); it is
reported to the pruner after every finetune epoch (steps 1..``tune.epochs``), so the pruner (MedianPruner by
default) stops poor trials early, judged against what earlier trials reached at the same epoch.  The accuracy right
after pruning (before any finetune: close to chance at high targets) is logged as ``val_acc_pruned``, not reported.
Multi-objective mode takes the ratios as absolute, sets no target and maximises accuracy while minimising MACs: the
result is a Pareto front.

The best allocation then gets the full finetune (``tune.final_epochs``, default ``finetune.epochs``) and is
evaluated on the test split beside the untuned trial at the same speedup (the benchmark's own trial, shared with
its cache); ``reports/tuned.json`` carries it into the leaderboard.

Studies live in Optuna storage (``sqlite:///optuna.db`` by default; ``journal:<file>`` or a PostgreSQL URL for
several workers on one study) under a name derived from everything the results depend on, so rerunning the same
command resumes the study: finished trials are kept, a trial interrupted by a kill is marked failed and its
allocation queued again, and the study is topped up to ``tune.trials`` finished trials.  MLflow holds a parent run
per invocation that does work (workers started together share it: see :meth:`Tracker.join_parent`) and a child run
per trial it ran (sampled ratios as params, per-epoch accuracy as step metrics), with the study's plots as
artifacts.  An invocation with nothing left to do logs no run and names the parent that holds the results.

Parallel workers: several ``prunebench tune`` processes on one study (a shared storage) split its work.

* ``tune.trials`` counts the study's finished (complete or pruned) trials, whatever the number of workers.  A
  worker starts a trial only while the finished trials plus those other live workers are running stay below it;
  that count and the new trial's creation happen under a file lock in the study's work folder, so workers on one
  machine stop at exactly ``tune.trials``.  (Optuna's ``MaxTrialsCallback`` could only stop a worker *after* its
  trial, letting each other worker overshoot by one.)  Workers on other machines (PostgreSQL) do not share that
  lock: two of them may start the last trial together, so the total can exceed ``tune.trials`` by at most the
  number of workers minus one.  A trial that fails frees its slot (its worker then runs another); one left
  RUNNING by a worker killed on another machine holds its slot until a ``tune`` there recovers it.  The locks
  are files under ``models/tune/``: they coordinate the workers that share one project folder.
* Sampling: every trial gets a fresh sampler seeded from ``params.seed`` and its trial number.  Trial numbers are
  unique in a study, so workers and resumed runs never repeat each other's draws, and a study stays reproducible
  from its inputs: with the random sampler trial *n* draws the same allocation whichever worker runs it; TPE and
  NSGA-II also depend on the trials finished before it, which with several workers depends on timing.
* The end of a study (the untuned trial, the best allocation's full finetune, plots, summary) runs one worker at a
  time under a second lock, after waiting for the trials this machine's other workers are running: every worker
  sees the same best trial, the first does the work and the others reuse its finished results.
* A trial RUNNING in Optuna (or MLflow) counts as interrupted only when its process (``host:pid``) is gone from
  this machine; a live worker's trial and run are never touched.
"""
from __future__ import annotations

from .flow import tune_flow
from .storage import open_storage
from .study import check

__all__ = ["check", "open_storage", "tune_flow"]
