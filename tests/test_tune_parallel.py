"""Several `prunebench tune` workers on one study, and runs that end with a true status (issue 10, items 6 and 8).

Real stores throughout: SQLite MLflow stores, Optuna SQLite and journal storages, real processes (a dead one is a
child that has exited; a live one is this test process or a sleeping child).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from helpers import BIN, make_project, runs

from flows.config import load_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"pretrain": {"epochs": 1}, "finetune": {"epochs": 1}, "prune": {"steps": 20, "calibration_batches": 1},
        "evaluate": {"latency_repeats": 3}, "benchmark": {"methods": ["l2"], "speedups": [2]},
        "tune": {"trials": 4, "epochs": 1, "steps": [20], "layer_groups": 3}}


# --------------------------------------------------------------------------- sampling
def _ask_allocations(study, n: int) -> list[dict]:
    from optuna.distributions import FloatDistribution
    found = []
    for _ in range(n):
        trial = study.ask({"ratio.a": FloatDistribution(0.05, 0.9), "ratio.b": FloatDistribution(0.05, 0.9)})
        study.tell(trial, 1.0)
        found.append(trial.params)
    return found


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_workers_and_resumed_runs_sample_different_allocations_reproducibly(tmp_path, sampler):
    from flows.tune.sampler import make_sampler
    p = load_params(tmp_path / "none.yaml", overrides={"tune": {"sampler": sampler, "trials": 20}})
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    optuna.create_study(study_name="s", storage=storage, sampler=make_sampler(p))

    def worker():  # a process of its own: its own sampler object, the study shared through the storage
        return optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(p))
    first, second = worker(), worker()
    drawn = []
    for _ in range(2):  # two workers taking turns
        drawn += _ask_allocations(first, 1) + _ask_allocations(second, 1)
    drawn += _ask_allocations(worker(), 2)  # a resumed run after the four trials
    assert len({tuple(sorted(d.items())) for d in drawn}) == 6, drawn

    # the same inputs give the same study, trial by trial
    again = optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=make_sampler(p))
    assert _ask_allocations(again, 2) == drawn[:2]


# --------------------------------------------------------------------------- the MLflow store
def test_any_number_of_processes_can_open_a_fresh_mlflow_store_at_once(tmp_path):
    # each process imports MLflow, says it is ready, and opens the store when the test says go: all at once
    code = ("import pathlib, sys, time; from flows.tracking import Tracker\n"
            "folder = pathlib.Path(sys.argv[2]); (folder / f'ready-{sys.argv[3]}').touch()\n"
            "while not (folder / 'go').exists(): time.sleep(0.002)\n"
            "Tracker(sys.argv[1]).experiment('e')\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(tmp_path), str(i)], stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": ROOT}) for i in range(2)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(e[-800:] for e in errors)


# --------------------------------------------------------------------------- runs of live and dead processes
@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """One store for these tests (creating a SQLite MLflow store takes seconds); each uses its own keys."""
    from flows.tracking import Tracker
    t = Tracker(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    return t, t.experiment("e")


def _dead_worker() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}"


def _run(t, exp, key: str, worker: str, parent=None) -> str:
    run_id = t.start_child(exp, parent, key, key, {"method": "l2"}, {})
    t.set_tags(run_id, {"worker": worker})  # as if that process had started it
    return run_id


def test_a_retry_kills_and_supersedes_a_dead_process_run_and_never_touches_a_live_one(tracker):
    t, exp = tracker
    killed = _run(t, exp, "k1", _dead_worker())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _run(t, exp, "k2", f"{socket.gethostname()}:{sleeper.pid}")
        mine = _run(t, exp, "k3", f"{socket.gethostname()}:{os.getpid()}")
        for key in ("k1", "k2", "k3"):
            t.discard_unfinished(exp, key)
        assert t.delete_runs(exp, "tags.trial_key = 'k2'") == 0  # not even deleted on request
        retry = t.start_child(exp, None, "k1", "k1", {"method": "l2"}, {})
        t.finish(retry)

        old = t.client.get_run(killed)
        assert old.info.lifecycle_stage == "active"          # kept as history ...
        assert old.info.status == "KILLED" and old.info.end_time  # ... with its true status and end
        assert old.data.tags["superseded_by"] == retry
        assert t.finished_trial(exp, "k1") == retry
        for run_id in (live, mine):  # a live process's run: neither ended, nor deleted, nor superseded
            run = t.client.get_run(run_id)
            assert (run.info.status, run.info.lifecycle_stage) == ("RUNNING", "active")
            assert "superseded_by" not in run.data.tags
        assert t.client.get_run(retry).data.tags["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_cached_trial_is_linked_under_every_parent_that_reuses_it(tracker):
    t, exp = tracker
    study_parent = t.parent_run(exp, "study", "study", {}, {}, kind="study")
    bench_parent = t.parent_run(exp, "sweep", "bench", {}, {})
    run = t.start_child(exp, study_parent, "l2@2x", "key1", {"method": "l2", "speedup_target": 2.0}, {"dataset": "d"})
    t.log_metrics(run, {"acc_finetuned": 90.5, "speedup": 2.1})
    t.finish(run)

    assert t.link_trial(exp, study_parent, run) is None  # already its own parent's child
    link = t.link_trial(exp, bench_parent, run)
    assert t.link_trial(exp, bench_parent, run) == link  # once per parent
    got = t.client.get_run(link)
    assert got.info.status == "FINISHED" and got.data.tags["kind"] == "trial-link"
    assert got.data.tags["mlflow.parentRunId"] == bench_parent and got.data.tags["linked_run_id"] == run
    assert got.data.tags["trial_key"] == "key1" and got.data.tags["dataset"] == "d"
    assert got.data.params == {"method": "l2", "speedup_target": "2.0"}
    assert got.data.metrics == {"acc_finetuned": 90.5, "speedup": 2.1}
    assert not t.client.list_artifacts(link)
    # lookups of results ignore the link
    assert t.finished_trial(exp, "key1") == run
    t.discard_unfinished(exp, "key1")
    assert t.client.get_run(link).info.status == "FINISHED"


# --------------------------------------------------------------------------- end to end
def _tune(proj, env, storage: str, trials: int):
    cmd = [str(BIN / "prunebench"), "tune", "--method", "l2", "--speedup", "2", "--trials", str(trials),
           "--storage", storage]
    return subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite:///optuna.db", "journal:optuna.journal"])
def test_two_workers_started_together_share_one_study(tmp_path, storage):
    # 32x32 digits and 2 epochs: a trial takes long enough that the second worker has started before the first
    # has run them all
    proj, env = make_project(tmp_path, {**TINY, "data": {"input_size": 32}, "tune": {**TINY["tune"], "epochs": 2}})
    workers = [_tune(proj, env, storage, 4) for _ in range(2)]
    errors = [w.communicate(timeout=900)[1] for w in workers]
    for w, err in zip(workers, errors):
        assert w.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "error" not in err.lower(), err[-3000:]

    summary = json.loads(next((proj / "reports/tune").glob("*/summary.json")).read_text())
    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{proj / 'optuna.db'}" if "sqlite" in
                              storage else optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(proj / "optuna.journal"))))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4, states  # --trials counts the study's trials
    assert set(states) <= {"COMPLETE", "PRUNED"}, states
    allocations = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(allocations)) == len(allocations)  # no worker repeated another's draw
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials

    _, all_runs = runs(proj)
    parents = [r for r in all_runs if r.data.tags.get("kind") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_runs = [r for r in all_runs if r.data.tags.get("kind") == "tune-trial"]
    by_trial = sorted(int(r.data.tags["optuna_trial"]) for r in trial_runs)
    assert by_trial == [t.number for t in study.trials]  # one run per trial: none lost, none duplicated
    assert all(r.info.status == "FINISHED" for r in trial_runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parents[0].info.run_id}
    tuned = [r for r in all_runs if r.data.tags.get("tuned") == "true"]  # the final finetune (kind trial too)
    untuned = [r for r in all_runs if r.data.tags.get("kind") == "trial" and r not in tuned]
    assert [r.info.status for r in untuned] == ["FINISHED"] and [r.info.status for r in tuned] == ["FINISHED"]
    assert not [r for r in all_runs if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_a_benchmark_lists_the_trial_a_study_ran_under_its_own_parent(tmp_path):
    proj, env = make_project(tmp_path, TINY)
    tune = _tune(proj, env, "sqlite:///optuna.db", 1)  # its untuned comparison runs l2@2x/protected
    assert tune.wait(timeout=900) == 0, tune.stderr.read()[-3000:]
    bench = subprocess.run([str(BIN / "prunebench"), "benchmark", "--scopes", "protected,local", "--no-leaderboard"],
                           cwd=proj, env=env, capture_output=True, text=True, timeout=900)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert bench.stderr.count("[cached]") == 1  # the study's untuned trial, not trained again

    summary = json.loads((proj / "reports/benchmark.json").read_text())
    _, all_runs = runs(proj)
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    assert sorted(r.data.tags["trial_key"] for r in children) == sorted(t["trial_key"] for t in summary["trials"])
    link = [r for r in children if r.data.tags["kind"] == "trial-link"]
    assert len(link) == 1 and link[0].info.status == "FINISHED"
    cached = next(t for t in summary["trials"] if t["cached"])
    assert link[0].data.tags["linked_run_id"] == cached["run_id"]
    assert link[0].data.metrics["acc_finetuned"] == pytest.approx(cached["acc_finetuned"])
    # the run that computed the trial stays under the study, the one FINISHED result of its key
    computed = [r for r in all_runs if r.data.tags.get("kind") == "trial" and r.data.tags.get("tuned") != "true"]
    assert sorted(r.data.tags["trial_key"] for r in computed) == sorted(t["trial_key"] for t in summary["trials"])
    assert all(r.info.status == "FINISHED" for r in computed)
