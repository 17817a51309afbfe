"""Scheduled runs: Prefect deployments of the benchmark and the tuning study, on params.yaml's crons.

``prunebench serve`` registers the deployments with a running Prefect server (``prefect server start``; the
temporary server other commands start runs no scheduler) and serves them: the server creates a flow run at each
cron time and this process executes it in the project folder, reading params.yaml *at run time*, so an edited
params.yaml is picked up by the next scheduled run without restarting ``serve``.

A scheduled run is named after what it runs (``benchmark-resnet20-digits-20260101-0200``), sends its progress
(trial lines, epochs, warnings) to the server as the run's logs, and prints a line to ``serve``'s output when it
starts and when it ends.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from pruning.errors import PruneBenchError

from .config import Params, load_params
from .engine import FLOW, flow
from .naming import run_name

DEPLOYMENT = "scheduled"


def _scheduled_name(kind: str):
    """The ``flow_run_name`` of a scheduled flow: what params.yaml (read now, as the run will) makes it run."""
    def name() -> str:
        from prefect.runtime import flow_run
        args = flow_run.parameters
        try:
            p = load_params(Path(args["project_dir"]) / args.get("params_file", "params.yaml"), args.get("profile"),
                            args.get("overrides"))
        except PruneBenchError:  # the run itself fails with the reason; its name need not
            return f"{kind}-{datetime.now():%Y%m%d-%H%M}"
        return run_name(kind, p.model.name, p.data.dataset, p.tune.methods if kind == "tune" else ())
    return name


# --------------------------------------------------------------------------- what serve's output shows
_STARTED: dict = {}


def _say(text: str) -> None:
    """A line on serve's output (a scheduled run's process shares it)."""
    print(f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}", flush=True)


def _on_start(flow, flow_run, state) -> None:
    _STARTED[flow_run.id] = time.monotonic()
    _say(f"scheduled run {flow_run.name} started ({flow.name}/{DEPLOYMENT})")


def _on_end(flow, flow_run, state) -> None:
    started = _STARTED.pop(flow_run.id, None)
    took = f" in {time.monotonic() - started:.0f} s" if started is not None else ""
    where = Path(flow_run.parameters.get("project_dir", ".")) / "reports"
    _say(f"scheduled run {flow_run.name} {state.type.value}{took}; results in {where}, logs in the Prefect UI")


HOOKS = dict(on_running=[_on_start], on_completion=[_on_end], on_failure=[_on_end], on_crashed=[_on_end])


def _log_to_run() -> None:
    """Progress lines and warnings of this process become the current (scheduled) flow run's logs on the server,
    filed under that run (not its subflows and tasks, whose pages a user would have to look for); serve's output
    shows only its own start and end lines."""
    from prefect.context import FlowRunContext

    from . import progress, runlog
    logger = runlog.send_to_server(FlowRunContext.get().flow_run.id, warnings=True)
    progress.set_reporter(progress.Lines(logger.info))


@flow(name="prunebench-benchmark", flow_run_name=_scheduled_name("benchmark"), **HOOKS, **FLOW)
def scheduled_benchmark(project_dir: str, params_file: str = "params.yaml", profile: Optional[str] = None,
                        overrides: Optional[dict] = None) -> dict:
    """params.yaml's benchmark, then the leaderboard, in ``project_dir`` (what `prunebench benchmark` runs)."""
    from .benchmark import run_benchmark
    from .report import leaderboard_flow
    params = _load(project_dir, params_file, profile, overrides)
    summary = run_benchmark(params)
    leaderboard_flow()
    failed = sum(t.get("status") != "ok" for t in summary["trials"])
    return {"trials": len(summary["trials"]), "failed": failed, "parent_run_id": summary["parent_run_id"]}


@flow(name="prunebench-tune", flow_run_name=_scheduled_name("tune"), **HOOKS, **FLOW)
def scheduled_tune(project_dir: str, params_file: str = "params.yaml", profile: Optional[str] = None,
                   overrides: Optional[dict] = None) -> list:
    """A study per ``tune.methods`` (resumed and topped up to ``tune.trials``), then the leaderboard."""
    from .layout import RESULTS_PATH
    from .report import leaderboard_flow
    from .tune import tune_flow
    params = _load(project_dir, params_file, profile, overrides)
    target = None if params.tune.multi_objective else params.tune.speedup
    summaries = tune_flow(params.model_dump(), params.tune.methods, target, params.tune.trials)
    if not params.tune.multi_objective and RESULTS_PATH.is_file():
        leaderboard_flow()
    return [{k: s.get(k) for k in ("study", "method", "trials", "acc_tuned", "acc_untuned")} for s in summaries]


def _load(project_dir: str, params_file: str, profile: Optional[str], overrides: Optional[dict]) -> Params:
    os.chdir(project_dir)  # each scheduled run is its own process: relative paths resolve in the project
    _log_to_run()
    return load_params(params_file, profile, overrides)


FLOWS = {"benchmark": scheduled_benchmark, "tune": scheduled_tune}


def deployments(params: Params, params_file: Path) -> list:
    """The enabled schedules of params.yaml as Prefect ``RunnerDeployment`` objects (not yet registered)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron
    project = str(Path(params_file).resolve().parent)
    out = []
    for name, fn in FLOWS.items():
        sched = getattr(params.schedules, name)
        if sched is None or not sched.enabled:
            continue
        if sched.profile and sched.profile not in (params.profiles or {}):
            raise PruneBenchError(f"schedules.{name}.profile {sched.profile!r} is not a profile in {params_file}")
        out.append(fn.to_deployment(
            DEPLOYMENT, schedules=[Cron(sched.cron, timezone=params.schedules.timezone)],
            parameters={"project_dir": project, "params_file": Path(params_file).name, "profile": sched.profile},
            tags=["prunebench", name], description=fn.__doc__.strip().splitlines()[0],
            entrypoint_type=EntrypointType.MODULE_PATH))
    if not out:
        raise PruneBenchError(f"no schedule enabled in {params_file} (schedules.benchmark / schedules.tune)")
    return out


def next_runs(cron: str, tz: str, n: int = 2) -> list[str]:
    from zoneinfo import ZoneInfo

    from cronsim import CronSim
    it = CronSim(cron, datetime.now(timezone.utc).astimezone(ZoneInfo(tz)))
    return [next(it).strftime("%Y-%m-%d %H:%M %Z") for _ in range(n)]


def show(deps: list, params: Params) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table("deployment", "cron", "timezone", "next runs", "params", title="prunebench scheduled deployments")
    for d in deps:
        kind = "benchmark" if d.flow_name == scheduled_benchmark.name else "tune"
        sched = getattr(params.schedules, kind)
        table.add_row(f"{d.flow_name}/{d.name}", sched.cron, params.schedules.timezone,
                      "\n".join(next_runs(sched.cron, params.schedules.timezone)),
                      f"{d.parameters['params_file']}" + (f" --profile {sched.profile}" if sched.profile else ""))
    Console(stderr=True, width=None if sys.stderr.isatty() else 160).print(table)


def check_server() -> str:
    """The configured Prefect server's URL, after checking it answers; a clear error otherwise."""
    import httpx
    from prefect.settings import PREFECT_API_URL
    url = PREFECT_API_URL.value()
    if not url:
        raise PruneBenchError("no Prefect server to register the schedules with: start one with "
                              "`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api` "
                              "(the temporary server other commands start runs no scheduler)")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as e:
        raise PruneBenchError(f"the Prefect server at {url} does not answer ({e}); is `prefect server start` "
                              f"running?")
    return url


def serve(deps: list) -> None:
    """Register the deployments and execute their scheduled runs until stopped (Ctrl+C or SIGTERM: exit 0).

    Runs go one at a time: they share the project folder and its stores.  The schedules stay active when serve
    stops (Prefect pauses them by default): the server keeps creating runs, and the next ``serve`` executes them.
    """
    import asyncio

    import httpx
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.runner import Runner
    from prefect.settings import PREFECT_UI_URL

    class StopsLikeCtrlC(Runner):
        def handle_sigterm(self, *_):
            # Prefect's own handler exits from inside its event loop (asyncio tracebacks, a never-awaited stop);
            # Ctrl+C's path (asyncio.run cancels the runner, which stops its runs) shuts down cleanly.
            signal.raise_signal(signal.SIGINT)

    runner = StopsLikeCtrlC(pause_on_shutdown=False, limit=1)
    ids = [runner.add_deployment(d) for d in deps]
    _say(f"serving {', '.join(f'{d.flow_name}/{d.name}' for d in deps)}: runs and their logs at "
         f"{PREFECT_UI_URL.value() or 'the Prefect UI'}/runs (Ctrl+C stops)")
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass
    try:
        _crash_unfinished(ids)
    except (httpx.HTTPError, PrefectHTTPStatusError) as e:
        _say(f"could not mark the runs serve stopped as CRASHED: the Prefect server did not answer ({e})")
    _say("serve stopped; the schedules stay active (runs due meanwhile wait for the next `prunebench serve`)")


def _crash_unfinished(deployment_ids: list) -> None:
    """Mark CRASHED the runs that serve's shutdown stopped (Prefect leaves them RUNNING forever), subflows too."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId,
                                                FlowRunFilterParentFlowRunId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed
    unfinished = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=deployment_ids), state=unfinished))
        if runs:
            runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[r.id for r in runs]), state=unfinished))
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(message="prunebench serve stopped while it ran"), force=True)
            if run.deployment_id:
                _say(f"scheduled run {run.name} CRASHED: serve stopped while it ran")
