"""Scheduled runs (`prunebench serve`), end to end: a real `prefect server start` on 127.0.0.1 in a temporary
PREFECT_HOME, real training with tiny settings.

The server is SQLite-backed and busy while a run trains on the same cores, so every question to its API is asked
again when it answers an error.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time

import httpx
import pytest
import yaml
from helpers import BIN, make_project

TINY = {"pretrain": {"epochs": 1}, "finetune": {"epochs": 1}, "prune": {"steps": 20, "calibration_batches": 1},
        "evaluate": {"latency_repeats": 3}, "benchmark": {"methods": ["l2"], "speedups": [2]}}
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _ask(method: str, url: str, **kwargs):
    """The API's JSON answer, or None when the busy server answered an error (the caller asks again)."""
    try:
        answer = httpx.request(method, url, timeout=30, **kwargs)
        return answer.json() if answer.status_code < 400 else None
    except (httpx.HTTPError, ValueError):
        return None


def _answer(method: str, url: str, **kwargs):
    """The API's answer, asked again until the busy server gives one."""
    return _wait(lambda: (lambda found: (found,) if found is not None else None)(_ask(method, url, **kwargs)),
                 60, f"an answer from {url}")[0]


def _stop(proc, sig=signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def served_project(tmp_path, schedules: dict):
    """A project with these schedules, a real Prefect server (fast scheduler loop) and `prunebench serve` on it,
    whose output goes to a file.  Yields (project, its environment, API URL, serve process, serve's output file)."""
    proj, env = make_project(tmp_path, TINY)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["schedules"] = schedules
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = {**env, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    port = api.split(":")[2].split("/")[0]
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    output = tmp_path / "serve.log"
    serve = None
    try:
        _wait(lambda: _ask("GET", f"{api}/health"), 180, "prefect server start")
        with open(output, "wb") as out:
            serve = subprocess.Popen([str(BIN / "prunebench"), "serve"], cwd=proj, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        yield proj, env, api, serve, output
    finally:
        for proc in (serve, server):
            if proc is not None:
                _stop(proc)


def _deployments(api: str, count: int) -> dict:
    def registered():
        found = _ask("POST", f"{api}/deployments/filter", json={})
        return found if isinstance(found, list) and len(found) == count else None
    found = _wait(registered, 180, f"{count} deployment(s)")
    return {("benchmark" if "benchmark" in d["tags"] else "tune"): d for d in found}


def _finished(api: str, run_id: str):
    run = _ask("GET", f"{api}/flow_runs/{run_id}")
    return run if run and run.get("state") and run["state"]["type"] in FINAL else None


def _output_when(output, check, what: str) -> str:
    """serve's output, once ``check`` accepts it."""
    return _wait(lambda: (lambda text: text if check(text) else None)(output.read_text(errors="replace")), 180, what)


def _stopped_cleanly(serve, output, sig) -> str:
    code = _stop(serve, sig)
    shown = output.read_text(errors="replace")
    assert code == 0, shown[-3000:]
    assert "Traceback" not in shown, shown[-3000:]
    assert "serve stopped; the schedules stay active" in shown
    return shown


@pytest.mark.slow
def test_a_scheduled_run_fires_completes_logs_and_survives_a_stopped_serve(tmp_path):
    schedules = {"timezone": "UTC", "benchmark": {"cron": "* * * * *"}, "tune": {"cron": "0 3 * * 6",
                                                                                   "enabled": False}}
    with served_project(tmp_path, schedules) as (proj, env, api, serve, output):
        deployment = _deployments(api, 1)["benchmark"]

        def first_scheduled_run():
            """The first run the server's scheduler created (nothing here triggers one) once it has ended."""
            mine = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                  "state": {"type": {"any_": list(FINAL)}}},
                    "sort": "EXPECTED_START_TIME_ASC"}
            found = _ask("POST", f"{api}/flow_runs/filter", json=mine)
            return found[0] if found else None
        run = _wait(first_scheduled_run, 600, "the first scheduled run to end")
        assert run["state"]["type"] == "COMPLETED", output.read_text(errors="replace")[-3000:]
        assert run["auto_scheduled"] and run["name"].startswith("benchmark-resnet20-digits-")
        summary = json.loads((proj / "reports/benchmark.json").read_text())
        assert [(t["method"], t["status"]) for t in summary["trials"]] == [("l2", "ok")]
        assert (proj / "reports/leaderboard.md").is_file()

        def run_logs():
            found = _ask("POST", f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}})
            return found or None
        messages = "\n".join(log["message"] for log in _wait(run_logs, 120, "the scheduled run's logs"))
        assert "benchmark: 1 trial(s)" in messages and "l2" in messages and "epoch 1/1" in messages

        shown = _output_when(output, lambda text: f"{run['name']} COMPLETED" in text, "the finished run's line")
        assert f"scheduled run {run['name']} started" in shown
        assert f"scheduled run {run['name']} COMPLETED in " in shown and str(proj / "reports") in shown

        # the next minute's run (late by now) starts; Ctrl+C to the process group, as a terminal sends it
        _output_when(output, lambda text: text.count(" started (") == 2, "the next scheduled run's start")
        shown = _stopped_cleanly(serve, output, signal.SIGINT)
        assert shown.count("CRASHED: serve stopped while it ran") == 1
        unfinished = {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}}
        assert _answer("POST", f"{api}/flow_runs/filter", json=unfinished) == []
        after = _answer("GET", f"{api}/deployments/{deployment['id']}")
        assert [s["active"] for s in after["schedules"]] == [True]  # a restarted serve picks the schedule up


@pytest.mark.slow
def test_serve_registers_scheduled_deployments_and_runs_a_triggered_one(tmp_path):
    schedules = {"timezone": "Europe/Berlin", "benchmark": {"cron": "15 1 * * *"},
                 "tune": {"cron": "30 4 * * 0", "profile": "quick"}}
    with served_project(tmp_path, schedules) as (proj, env, api, serve, output):
        by_tag = _deployments(api, 2)
        for kind, cron in (("benchmark", "15 1 * * *"), ("tune", "30 4 * * 0")):
            sched = by_tag[kind]["schedules"]
            assert len(sched) == 1 and sched[0]["active"]
            assert sched[0]["schedule"]["cron"] == cron and sched[0]["schedule"]["timezone"] == "Europe/Berlin"
        assert by_tag["tune"]["parameters"]["profile"] == "quick"
        assert by_tag["benchmark"]["parameters"]["project_dir"] == str(proj.resolve())

        def triggered():
            """The triggered run (found by its tag), created once."""
            mine = {"flow_runs": {"tags": {"all_": ["triggered-by-test"]}}}
            found = _ask("POST", f"{api}/flow_runs/filter", json=mine)
            if found:
                return found[0]
            if found is not None:
                _ask("POST", f"{api}/deployments/{by_tag['benchmark']['id']}/create_flow_run",
                     json={"parameters": {"overrides": {"benchmark": {"methods": ["l1"]}}},
                           "tags": ["triggered-by-test"]})
            return None
        run = _wait(triggered, 180, "the triggered run to be created")
        state = _wait(lambda: _finished(api, run["id"]), 420, "the triggered benchmark run")["state"]["type"]
        assert state == "COMPLETED"
        assert (proj / "reports/leaderboard.md").is_file()
        summary = json.loads((proj / "reports/benchmark.json").read_text())
        assert [t["method"] for t in summary["trials"]] == ["l1"] and summary["trials"][0]["status"] == "ok"

        # a command's flow run (not a deployment's) logs its progress to the configured server too
        done = subprocess.run([str(BIN / "prunebench"), "prepare"], cwd=proj, env=env, capture_output=True, text=True)
        assert done.returncode == 0 and "prepared digits in data/digits" in done.stderr, done.stderr[-2000:]
        prepare = _answer("POST", f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"like_": "prepare-"}}})
        assert len(prepare) == 1 and prepare[0]["name"].startswith("prepare-resnet20-digits-")
        logs = _wait(lambda: _ask("POST", f"{api}/logs/filter",
                                  json={"logs": {"flow_run_id": {"any_": [prepare[0]["id"]]}}}), 60, "its logs")
        assert "prepared digits in data/digits" in [log["message"] for log in logs]

        shown = _stopped_cleanly(serve, output, signal.SIGTERM)
        assert "prunebench-benchmark/scheduled" in shown and "15 1 * * *" in shown


def test_run_names_say_what_runs():
    import re

    from flows.naming import run_name
    assert re.fullmatch(r"benchmark-resnet20-digits-\d{8}-\d{4}", run_name("benchmark", "resnet20", "digits"))
    name = run_name("tune", "timm/deit_tiny", "imagefolder:/data/pets", ["l2", "taylor"])
    assert re.fullmatch(r"tune-l2\+taylor-timm_deit_tiny-imagefolder-pets-\d{8}-\d{4}", name)
