"""The orchestrated workflow end to end: dvc repro -> Prefect flows -> MLflow runs -> leaderboard; resume; bad input.

Real tools throughout: a temporary git + DVC repo, Prefect's temporary server (PREFECT_HOME isolated), a SQLite
MLflow store.  Tiny settings (quick profile, one pretrain epoch) keep it to a few minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from helpers import BIN, make_project, runs

TRIAL_METRICS = ["acc_dense", "acc_pruned", "acc_finetuned", "macs_dense", "macs_pruned", "params_dense",
                 "params_pruned", "speedup", "latency_speedup", "seconds_sparsify", "seconds_prune",
                 "seconds_finetune", "seconds_evaluate", "seconds_total", "finetune_loss", "finetune_acc"]
TRIAL_PARAMS = ["method", "criterion", "sparsifier", "scope", "speedup_target", "protect", "iterative_steps",
                "finetune_epochs", "finetune_lr", "calibration_size", "seed", "dataset", "dataset_digest", "git_rev",
                "prefect_flow_run_id"]


QUICK = {"pretrain": {"epochs": 1}, "sparsify": {"epochs": 1}, "finetune": {"epochs": 1},
         "prune": {"steps": 30, "calibration_batches": 1}, "evaluate": {"latency_repeats": 3},
         "benchmark": {"methods": ["l2", "l2+group_norm"], "speedups": [2]}}


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_chain_into_mlflow_and_reports(tmp_path):
    proj, env = make_project(tmp_path, QUICK)
    done = subprocess.run([str(BIN / "dvc"), "repro"], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png", "rank_consistency.png", "metrics.json",
                 "plots.csv"):
        assert (proj / "reports" / name).is_file(), name
    assert "| 1.0 |" in (proj / "reports/leaderboard.md").read_text()
    assert (proj / "data/digits/meta.json").is_file() and (proj / "models/dense.pt").is_file()
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"params", "prepare", "pretrain", "benchmark", "leaderboard"}
    data_md5 = lock["stages"]["prepare"]["outs"][0]["md5"]
    from flows.keys import dir_digest
    digest = dir_digest(proj / "data/digits")[:32]  # the prepared files' own hash, DVC's md5 beside it

    c, all_runs = runs(proj)
    parents = [r for r in all_runs if r.data.tags.get("kind") == "benchmark"]
    children = [r for r in all_runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        missing = [m for m in TRIAL_METRICS if m not in r.data.metrics]
        assert not missing, (r.info.run_name, missing)
        assert not [p for p in TRIAL_PARAMS if p not in r.data.params]
        assert r.data.params["dataset_digest"] == digest and r.data.tags["dataset_version"] == digest
        assert r.data.tags["dvc_md5"] == data_md5
        assert r.inputs.dataset_inputs and r.inputs.dataset_inputs[0].dataset.digest == digest
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"checkpoint", "channels", "plots"} <= arts
    sparse = [r for r in children if r.data.params["sparsifier"] != "none"]
    assert sparse and "sparsify_loss" in sparse[0].data.metrics
    history = c.get_metric_history(children[0].info.run_id, "finetune_loss")
    assert [m.step for m in history] == [1]
    assert {a.path for a in c.list_artifacts(parents[0].info.run_id, "leaderboard")} >= {
        "leaderboard/leaderboard.md", "leaderboard/leaderboard.csv", "leaderboard/leaderboard.png"}
    # the pruned checkpoint loads without unpickling code, as the pruned model the trial measured and evaluated
    import pruning
    import torch
    first = json.loads((proj / "reports/benchmark.json").read_text())["trials"][0]
    model, meta = pruning.load_checkpoint(proj / first["checkpoint"])
    x = torch.randn(2, meta["in_chans"], meta["input_size"], meta["input_size"])
    assert pruning.count_macs_params(model, x[:1]) == (first["macs_pruned"], first["params_pruned"])
    assert first["macs_dense"] / first["macs_pruned"] == pytest.approx(first["speedup"])
    assert first["speedup"] >= first["speedup_target"]
    with torch.no_grad():
        assert model.eval()(x).shape == (2, meta["num_classes"])
    test = pruning.load_data(str(proj / "data/digits")).loader("test", 256)
    assert pruning.accuracy(model, test) == pytest.approx(first["acc_finetuned"], abs=0.5)  # its trained weights
    # nothing to do on a second repro
    again = subprocess.run([str(BIN / "dvc"), "status"], cwd=proj, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout.lower(), again.stdout + again.stderr
    # a second seed: seed 0's trials are reused as they are, seed 1's computed, the leaderboard has both
    more = subprocess.run([str(BIN / "prunebench"), "benchmark", "--seeds", "0,1"], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=900)
    assert more.returncode == 0, more.stderr[-3000:]
    assert more.stderr.count("[cached]") == 2 and "/s1: acc" in more.stderr, more.stderr[-3000:]
    trials = json.loads((proj / "reports/benchmark.json").read_text())["trials"]
    assert sorted((t["method"], t["seed"], t["cached"]) for t in trials) == [
        ("l2", 0, True), ("l2", 1, False), ("l2+group_norm", 0, True), ("l2+group_norm", 1, False)]
    assert first["trial_key"] in {t["trial_key"] for t in trials}
    assert "mean over 2 seed(s)" in (proj / "reports/leaderboard.md").read_text()


@pytest.mark.slow
def test_a_killed_benchmark_resumes_without_rerunning_or_duplicating(tmp_path):
    quick = {**QUICK, "benchmark": {"methods": ["l2", "fpgm"], "speedups": [2]}}
    proj, env = make_project(tmp_path, quick)
    cmd = [str(BIN / "prunebench"), "benchmark"]
    proc = subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    first = None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        found = list((proj / "models/trials").glob("*/result.json"))
        started = [d for d in (proj / "models/trials").glob("*") if d.is_dir() and len(d.name) == 16]
        if found and len(started) == 2:  # the first trial finished, the second's run is RUNNING: kill mid-sweep
            first = found[0]
            break
        time.sleep(0.2)
    assert first is not None, proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "timeout"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stamp = first.stat().st_mtime_ns
    ckpt = first.parent / "finetuned.pt"
    ckpt_stamp = ckpt.stat().st_mtime_ns

    done = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert first.stat().st_mtime_ns == stamp and ckpt.stat().st_mtime_ns == ckpt_stamp  # not trained again
    results = sorted((proj / "models/trials").glob("*/result.json"))
    assert len(results) == 2
    # the finished trial is reused, the killed one computed: one "[cached]" progress line, naming the first
    trials = {t["trial_key"]: t for t in json.loads((proj / "reports/benchmark.json").read_text())["trials"]}
    assert set(trials) == {r.parent.name for r in results}
    assert {k: t["cached"] for k, t in trials.items()} == {k: k == first.parent.name for k in trials}
    reused = trials[first.parent.name]
    cached = [line for line in done.stderr.splitlines() if "[cached]" in line]
    name = f"{reused['method']}@{reused['speedup_target']:g}x/{reused['scope']}/s{reused['seed']}: "
    assert len(cached) == 1 and name in cached[0], \
        done.stderr[-3000:]

    c, all_runs = runs(proj)
    trial_runs = [r for r in all_runs if r.data.tags.get("kind") == "trial"]
    children = [r for r in trial_runs if r.info.status == "FINISHED"]  # the results
    keys = [r.data.tags["trial_key"] for r in children]
    assert len(keys) == len(set(keys)) == 2, [(r.info.run_name, r.info.status) for r in trial_runs]
    killed = [r for r in trial_runs if r.info.status != "FINISHED"]
    assert len(killed) == 1  # the run the kill interrupted is kept as history, with its true status and end ...
    assert killed[0].info.status == "KILLED" and killed[0].info.end_time
    retry = next(r for r in children if r.data.tags["trial_key"] == killed[0].data.tags["trial_key"])
    assert killed[0].data.tags["superseded_by"] == retry.info.run_id  # ... pointing at the run that replaced it
    parents = sorted((r for r in all_runs if r.data.tags.get("kind") == "benchmark"), key=lambda r: r.info.start_time)
    # the killed invocation's parent ends KILLED; the resumed one has its own, listing the finished trial as a link
    assert [r.info.status for r in parents] == ["KILLED", "FINISHED"] and parents[0].info.end_time
    first_trial = next(r for r in children if r.info.run_id != retry.info.run_id)
    assert first_trial.data.tags["mlflow.parentRunId"] == killed[0].data.tags["mlflow.parentRunId"] \
        == parents[0].info.run_id
    assert retry.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    links = [r for r in all_runs if r.data.tags.get("kind") == "trial-link"]
    assert [(r.data.tags["linked_run_id"], r.data.tags["mlflow.parentRunId"]) for r in links] == [
        (first_trial.info.run_id, parents[1].info.run_id)]

    # a third run trains nothing and creates no run
    again = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert again.stderr.count("[cached]") == 2
    assert len(runs(proj)[1]) == len(all_runs)


def test_invalid_params_exit_2_listing_every_problem_before_any_flow(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({
        "colour": "red",
        "data": {"dataset": "imagefolder:/no/such/folder"},
        "benchmark": {"methods": ["l2", "nosuchmethod"], "speedups": [1, 2]},
        "prune": {"scope": "everywhere"},
    }))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([str(BIN / "prunebench"), "benchmark", "--params", str(bad)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    err = done.stderr
    for needle in ("colour", "unknown key", "/no/such/folder", "nosuchmethod", "speedup", "everywhere"):
        assert needle in err, (needle, err)
    assert "Traceback" not in err
    # no flow ran: nothing tracked, nothing written
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "reports").exists()
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()
