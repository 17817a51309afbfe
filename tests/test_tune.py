"""Tuning (Optuna studies over allocations), end to end with real tools; schedules' params checks.

A real SQLite Optuna storage and MLflow store and Prefect's temporary server for `prunebench tune`.  Tiny settings
keep each to a minute or two.  `prunebench serve` on a real Prefect server: tests/test_schedules.py.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from helpers import BIN, make_project, runs

from flows.config import load_params
from pruning.errors import PruneBenchError

TINY = {"pretrain": {"epochs": 1}, "finetune": {"epochs": 1}, "prune": {"steps": 20, "calibration_batches": 1},
        "evaluate": {"latency_repeats": 3}, "benchmark": {"methods": ["l2"], "speedups": [2]},
        "tune": {"trials": 4, "epochs": 1, "steps": [20], "layer_groups": 3}}


@pytest.mark.parametrize("tune, needle", [
    ({"ratio_range": [0.8, 0.2]}, "empty or inverted"),
    ({"ratio_range": [0.5, 0.5]}, "empty or inverted"),
    ({"protect_range": [0.0, 0.2]}, "every group keeps a channel"),
    ({"ratio_range": [0.2]}, "takes [low, high]"),
    ({"trials": 0}, "tune.trials"),
    ({"steps": [0, 10]}, "iterative-steps"),
    ({"speedup": 1.0}, "speedup must be > 1"),
    ({"sampler": "grid"}, "unknown sampler"),
])
def test_bad_search_spaces_are_refused_when_params_load(tmp_path, tune, needle):
    with pytest.raises(PruneBenchError, match="tune") as e:
        load_params(tmp_path / "none.yaml", overrides={"tune": tune})
    assert needle in str(e.value)


def test_bad_schedules_are_refused_when_params_load(tmp_path):
    with pytest.raises(PruneBenchError) as e:
        load_params(tmp_path / "none.yaml", overrides={"schedules": {"timezone": "Mars/Olympus",
                                                                     "benchmark": {"cron": "nightly"}}})
    assert "Mars/Olympus" in str(e.value) and "'nightly' is not a cron expression" in str(e.value)


@pytest.mark.parametrize("url, needle", [
    ("optuna.db", "expected sqlite:///"),
    ("journal:/no/such/folder/study.log", "does not exist"),
    ("sqlite:////no/such/folder/optuna.db", "cannot open"),
])
def test_a_storage_that_cannot_be_opened_is_named(url, needle):
    from flows.tune import open_storage
    with pytest.raises(PruneBenchError, match="cannot open the Optuna storage") as e:
        open_storage(url)
    assert needle in str(e.value)


def test_tuned_trials_join_the_leaderboard_beside_the_untuned_ones_unranked():
    from flows import leaderboard as lb

    def trial(method, scope, acc):
        return {"method": method, "scope": scope, "speedup_target": 4.0, "status": "ok", "speedup": 4.05,
                "acc_dense": 95.0, "acc_pruned": 20.0, "acc_finetuned": acc, "params_dense": 100,
                "params_pruned": 30, "macs_dense": 100, "macs_pruned": 25, "seconds_prune": 1.0,
                "seconds_sparsify": 0.0, "seconds_finetune": 2.0, "seconds_total": 3.0, "latency_speedup": 1.2}
    summary = {"model": "resnet20", "dataset": "digits", "acc_dense": 95.0, "scopes": ["protected"],
               "speedups": [4.0], "trials": [trial("l2", "protected", 80.0), trial("taylor", "protected", 82.0)]}
    tuned = {"a": {**trial("l2", "tuned", 90.0), "model": "resnet20", "dataset": "digits"},
             "b": {**trial("l2", "tuned", 99.0), "model": "vgg19", "dataset": "digits"}}  # another model: left out
    rows = lb.build(lb.with_tuned(summary, tuned)).rows
    assert [(r["method"], r["scope"], r["rank"]) for r in rows] == [
        ("taylor", "protected", "1.0"), ("l2", "protected", "2.0"), ("l2", "tuned", "-")]
    assert rows[2]["by_speedup"][4.0]["acc_mean"] == 90.0


def _study_trials(db):
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select trial_id, number, state, datetime_complete from trials order by number"
                               ).fetchall()
    except sqlite3.OperationalError:  # the file exists before Optuna has created its tables
        return []


@pytest.mark.slow
def test_tune_runs_resumes_after_a_kill_and_tracks_one_parent(tmp_path):
    proj, env = make_project(tmp_path, TINY)
    cmd = [str(BIN / "prunebench"), "tune", "--method", "l2", "--speedup", "2", "--trials", "4"]
    proc = subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    db = proj / "optuna.db"
    deadline, killed = time.time() + 600, False
    while time.time() < deadline and proc.poll() is None:
        rows = _study_trials(db) if db.is_file() else []
        if any(r[2] == "COMPLETE" for r in rows) and rows[-1][2] == "RUNNING":
            time.sleep(0.5)  # inside the running trial
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    assert killed, proc.stderr.read().decode()[-3000:]
    before = {r[1]: r for r in _study_trials(db)}
    interrupted = [n for n, r in before.items() if r[2] == "RUNNING"]
    assert len(interrupted) == 1

    done = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 interrupted trial(s) queued again" in done.stderr
    after = {r[1]: r for r in _study_trials(db)}
    for n, row in before.items():  # finished trials were kept, not rerun
        if row[2] == "COMPLETE":
            assert after[n] == row
    assert after[interrupted[0]][2] == "FAIL"
    finished = [r for r in after.values() if r[2] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4
    import optuna
    summaries = list((proj / "reports/tune").glob("*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{db}")
    killed_trial = study.trials[interrupted[0]]
    requeued = [t for t in study.trials if t.number > interrupted[0] and t.user_attrs.get("requeued")]
    assert requeued and requeued[0].params == killed_trial.params  # the interrupted allocation ran again
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert t.user_attrs["speedup"] >= 2.0  # the target holds for every trial

    tuned = summary["tuned"]
    assert tuned["speedup"] >= 2.0 and 0 <= tuned["acc_finetuned"] <= 100
    assert summary["untuned"]["status"] == "ok" and summary["untuned"]["scope"] == "protected"
    assert set(tuned["allocation"]) == set(summary["groups"]) == {"layers.0", "layers.1", "layers.2"}
    entry = json.loads((proj / "reports/tuned.json").read_text())
    assert [e["study"] for e in entry.values()] == [summary["study"]]

    c, all_runs = runs(proj)
    parents = sorted((r for r in all_runs if r.data.tags.get("kind") == "study"), key=lambda r: r.info.start_time)
    # a parent per invocation: the killed one's ends KILLED, the resumed one's holds the rest and the result
    assert [r.info.status for r in parents] == ["KILLED", "FINISHED"]
    parent = parents[1].info.run_id
    trials = [r for r in all_runs if r.data.tags.get("kind") == "tune-trial"]
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id, parent}
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trials
               if int(r.data.tags["optuna_trial"]) > interrupted[0])
    by_state = sorted(r.info.status for r in trials)
    assert by_state.count("KILLED") == 1 and by_state.count("FINISHED") == 4, by_state
    finished_runs = [r for r in trials if r.info.status == "FINISHED"]
    for r in finished_runs:
        assert {"protect", "iterative_steps", "ratio.layers.0", "ratio.layers.2", "method"} <= set(r.data.params)
        assert {"val_acc", "macs_pruned", "speedup", "kept.layers.1"} <= set(r.data.metrics)
    steps = [m.step for m in c.get_metric_history(finished_runs[0].info.run_id, "val_acc")]
    assert steps == [1]  # per finetune epoch; the accuracy right after pruning is val_acc_pruned
    final = [r for r in all_runs if r.data.tags.get("tuned") == "true"]
    assert len(final) == 1 and final[0].data.tags["mlflow.parentRunId"] == parent
    arts = {a.path for a in c.list_artifacts(parent, "study")}
    assert {"study/history.png", "study/summary.json"} <= arts
    assert "acc_tuned" in parents[1].data.metrics and "acc_untuned" in parents[1].data.metrics

    # rerunning the finished study trains nothing new and creates no run
    again = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stderr and parent in again.stderr
    assert len(runs(proj)[1]) == len(all_runs)


@pytest.mark.slow
def test_tune_refuses_an_unreachable_target_before_any_study(tmp_path):
    proj, env = make_project(tmp_path, TINY)
    done = subprocess.run([str(BIN / "prunebench"), "tune", "--method", "l2", "--speedup", "10000"], cwd=proj,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "unreachable" in done.stderr and "Traceback" not in done.stderr
    assert not (proj / "optuna.db").exists() and not (proj / "mlflow.db").exists()
