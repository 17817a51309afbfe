"""MLflow history that lasts, and Optuna as its users expect (issue 11, parts 4 and 5), with real tools.

Real `prunebench` processes on a temporary git + DVC project, a SQLite MLflow store and Optuna storage, real
training on tiny settings.
"""
from __future__ import annotations

import subprocess

import pytest
from helpers import BIN, make_project, runs

TINY = {"pretrain": {"epochs": 1}, "finetune": {"epochs": 1}, "prune": {"steps": 20, "calibration_batches": 1},
        "evaluate": {"latency_repeats": 3}, "benchmark": {"methods": ["l2"], "speedups": [2]},
        "tune": {"trials": 4, "epochs": 2, "steps": [20], "layer_groups": 3}}
SOURCE_TAGS = ("mlflow.source.git.commit", "mlflow.source.name", "mlflow.source.type")


def _prunebench(proj, env, *args):
    done = subprocess.run([str(BIN / "prunebench"), *args], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _snapshot(c, run_id: str) -> dict:
    """Everything a later invocation must leave alone on a finished run."""
    run = c.get_run(run_id)
    arts = sorted(a.path for folder in [None] + [a.path for a in c.list_artifacts(run_id) if a.is_dir]
                  for a in c.list_artifacts(run_id, folder))
    history = {k: [(m.step, m.value) for m in c.get_metric_history(run_id, k)] for k in run.data.metrics}
    return {"status": run.info.status, "end": run.info.end_time, "params": run.data.params,
            "tags": run.data.tags, "metrics": history, "artifacts": arts}


@pytest.mark.slow
def test_each_benchmark_invocation_gets_its_own_parent_and_registers_its_best_models(tmp_path):
    proj, env = make_project(tmp_path, TINY)
    _prunebench(proj, env, "benchmark", "--no-leaderboard")
    c, first_runs = runs(proj)
    (first,) = [r for r in first_runs if r.data.tags.get("kind") == "benchmark"]
    (l2_run,) = [r for r in first_runs if r.data.tags.get("kind") == "trial"]
    before = _snapshot(c, first.info.run_id)
    assert before["status"] == "FINISHED" and "leaderboard/leaderboard.md" in before["artifacts"]

    # (a) a second invocation adds a method: a new parent, the cached l2 trial linked, fpgm a child
    second_err = _prunebench(proj, env, "benchmark", "--methods", "l2,fpgm", "--no-leaderboard")
    assert second_err.count("[cached]") == 1
    c, second_runs = runs(proj)
    parents = [r for r in second_runs if r.data.tags.get("kind") == "benchmark"]
    assert len(parents) == 2
    second = next(r for r in parents if r.info.run_id != first.info.run_id)
    assert _snapshot(c, first.info.run_id) == before  # the finished parent was not touched
    children = [r for r in second_runs if r.data.tags.get("mlflow.parentRunId") == second.info.run_id]
    assert sorted((r.data.tags["kind"], r.data.params["method"]) for r in children) == [
        ("trial", "fpgm"), ("trial-link", "l2")]
    link = next(r for r in children if r.data.tags["kind"] == "trial-link")
    assert link.data.tags["linked_run_id"] == l2_run.info.run_id
    assert c.get_run(l2_run.info.run_id).data.tags["mlflow.parentRunId"] == first.info.run_id
    assert c.get_run(second.info.run_id).data.metrics["trials_cached"] == 1

    # (c) the standard tags: the UI's Source and Version columns
    for r in parents + [r for r in second_runs if r.data.tags.get("kind") in ("trial", "trial-link")]:
        missing = [t for t in SOURCE_TAGS if t not in r.data.tags]
        assert not missing, (r.info.run_name, missing)
        assert r.data.tags["mlflow.source.name"] == "prunebench benchmark"
        assert len(r.data.tags["mlflow.source.git.commit"]) == 40  # the project's commit, no "+dirty" suffix

    # (b) an identical rerun trains nothing and logs no run
    second_before = _snapshot(c, second.info.run_id)
    third_err = _prunebench(proj, env, "benchmark", "--methods", "l2,fpgm", "--no-leaderboard")
    assert third_err.count("[cached]") == 2 and "finetune" not in third_err
    assert "nothing to compute" in third_err and second.info.run_id in third_err
    c, third_runs = runs(proj)
    assert len(third_runs) == len(second_runs)
    assert _snapshot(c, second.info.run_id) == second_before

    # (d) the best model of each (method, speedup) is registered, linked to its invocation's parent, and loads
    import json

    import mlflow.pytorch
    import torch

    import pruning
    summary = json.loads((proj / "reports/benchmark.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{proj / 'mlflow.db'}")
    for trial in summary["trials"]:
        name = f"prunebench-digits-resnet20-{trial['method']}-x2"
        (version,) = c.search_model_versions(f"name = '{name}'")
        assert version.tags["trial_key"] == trial["trial_key"]
        owner = first if trial["method"] == "l2" else second  # registered by the invocation that computed it
        assert version.run_id == owner.info.run_id
        info = mlflow.models.get_model_info(f"models:/{name}/{version.version}")
        assert info.signature is not None and tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) \
            == (-1, 3, 8, 8)  # digits at their native size
        logged = mlflow.pytorch.load_model(f"models:/{name}/{version.version}")
        checkpoint, _ = pruning.load_checkpoint(proj / trial["checkpoint"])
        images = torch.randn(4, 3, 8, 8)
        with torch.no_grad():
            assert torch.allclose(logged.eval()(images), checkpoint.eval()(images), atol=1e-5)


@pytest.mark.slow
def test_a_study_names_its_metric_reports_every_epoch_and_logs_its_data(tmp_path):
    import optuna
    proj, env = make_project(tmp_path, TINY)
    _prunebench(proj, env, "tune", "--method", "l2", "--speedup", "2", "--trials", "4", "--no-final")
    study_name = optuna.get_all_study_names(f"sqlite:///{proj / 'optuna.db'}")[0]
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{proj / 'optuna.db'}")
    assert study.metric_names == ["val_acc"]
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"}
    for t in study.trials:  # steps are finetune epochs: never the untrained step 0
        expected = [1, 2] if t.state.name == "COMPLETE" else [1]
        assert sorted(t.intermediate_values) == expected, (t.number, t.state, t.intermediate_values)
        if t.state.name == "COMPLETE":
            assert t.intermediate_values[2] == pytest.approx(t.value)

    c, all_runs = runs(proj)
    (parent,) = [r for r in all_runs if r.data.tags.get("kind") == "study"]
    assert parent.data.tags["mlflow.source.name"] == "prunebench tune"
    trials = [r for r in all_runs if r.data.tags.get("kind") == "tune-trial"]
    assert len(trials) == 4
    digest = parent.data.tags["dataset_version"]
    for r in trials:
        assert [i.dataset.digest for i in r.inputs.dataset_inputs] == [digest]
        assert all(t in r.data.tags for t in SOURCE_TAGS)
        assert "val_acc_pruned" in r.data.metrics
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "val_acc")]
        assert steps and steps[0] == 1

    # the same command again: nothing to do, no run logged
    again = _prunebench(proj, env, "tune", "--method", "l2", "--speedup", "2", "--trials", "4", "--no-final")
    assert "nothing to do" in again and parent.info.run_id in again
    assert len(runs(proj)[1]) == len(all_runs)


@pytest.mark.slow
def test_the_data_has_one_digest_whether_prepared_by_the_cli_or_by_dvc(tmp_path, monkeypatch):
    from flows import keys
    from flows.config import load_params
    proj, env = make_project(tmp_path, TINY)
    monkeypatch.chdir(proj)
    params = load_params(proj / "params.yaml")
    _prunebench(proj, env, "prepare")
    by_cli = keys.data_version(params)
    assert by_cli["dvc_md5"] is None  # no dvc.lock yet

    subprocess.run([str(BIN / "dvc"), "repro", "prepare"], cwd=proj, env=env, check=True, capture_output=True)
    by_dvc = keys.data_version(params)
    assert by_dvc["dvc_md5"]  # dvc.lock lists the folder now ...
    assert by_dvc["digest"] == by_cli["digest"] and by_dvc["content"] == by_cli["content"]  # ... the digest holds
