"""Reliability, measured: bad inputs, kills at random points, parallel tuning workers.

    .venv/bin/python benchmarks/reliability.py bad-inputs     # >= 60 bad inputs: one line, exit 2, nothing written
    .venv/bin/python benchmarks/reliability.py kills          # kill -9 a benchmark and a study at random points
    .venv/bin/python benchmarks/reliability.py workers        # 2 and 3 `prunebench tune` workers on one study
    .venv/bin/python benchmarks/reliability.py all --save     # all three -> benchmarks/results/reliability.json

Everything runs the real `prunebench` command in a fresh copy of the project (its own git + DVC repo, Prefect home
and MLflow store; see tests/helpers.make_project).  What counts as handled:

* bad input: exit code 2, exactly one non-empty line on stderr starting with ``error:``, no traceback, the project
  folder byte-identical afterwards (an earlier result at an output path intact), and no file from a malicious
  pickle's payload;
* a kill: ``kill -9`` of the command at a random moment (seeded), then the same command again until it finishes;
  afterwards every trial has exactly one FINISHED MLflow run and its result equals an uninterrupted run's (nothing
  lost, nothing duplicated), no run is left RUNNING, and no Prefect server outlives its command;
* workers: N `prunebench tune` processes started together on one study finish with exit 0, the requested number of
  finished trials, distinct allocations and one MLflow run per Optuna trial.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `tests` imports as a namespace package
from tests.helpers import BIN, ROOT, make_project  # noqa: E402

PRUNEBENCH = str(BIN / "prunebench")
MARKER = "payload-ran"


# --------------------------------------------------------------------------- bad inputs
class Payload:
    """What a malicious checkpoint or CIFAR batch holds: unpickling it would create a marker file."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def write_fixtures(proj: Path) -> None:
    """Files the bad inputs point at: broken checkpoints, datasets and summaries, all inside ``bad/``."""
    import numpy as np
    import torch
    from PIL import Image

    import pruning
    from pruning.detection import load_detection_data
    load_detection_data("shapes", proj / "data")  # the embedded detection data exists before the bad inputs
    bad = proj / "bad"
    bad.mkdir()
    (bad / "text.pt").write_text("these are not weights\n")
    (bad / "empty.pt").write_bytes(b"")
    torch.save({"model": Payload()}, bad / "evil.pt")
    torch.save(pruning.create_model("resnet20", 10).state_dict(), bad / "state_dict.pt")
    pruning.save_checkpoint(bad / "resnet56.pt", pruning.create_model("resnet56", 10), model_name="resnet56",
                            num_classes=10, in_chans=3, input_size=32)
    pruning.save_checkpoint(bad / "classes100.pt", pruning.create_model("resnet20", 100), model_name="resnet20",
                            num_classes=100, in_chans=3, input_size=32)
    rng = np.random.default_rng(0)

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)
    for c in ("a", "b"):
        for i in range(12):
            image(bad / "corrupt" / c / f"{i}.png")
        for i in range(2):
            image(bad / "two_per_class" / c / f"{i}.png")
    (bad / "corrupt" / "a" / "5.png").write_bytes(b"\x89PNG broken")
    for i in range(12):
        image(bad / "one_class" / "only" / f"{i}.png")
    half = bad / "cifar_half" / "cifar-10-batches-py"
    half.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2"):
        with open(half / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}, f)
    evil = bad / "cifar_evil" / "cifar-10-batches-py"
    evil.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(evil / name, "wb") as f:
            pickle.dump({b"data": Payload(), b"labels": [0]}, f)
    (bad / "broken.yaml").write_text("path: [unclosed\n")
    (bad / "no_images.yaml").write_text("path: nowhere\ntrain: images/train\nval: images/val\nnames: {0: a}\n")
    (bad / "open.json").write_text("{")
    (bad / "empty.json").write_text("{}")
    (bad / "list.json").write_text("[1, 2]")
    (bad / "trials.json").write_text(json.dumps({"model": "m", "dataset": "d", "acc_dense": 1,
                                                 "trials": [{"method": "l2"}]}))
    params = {
        "profile_int.yaml": "profiles: {quick: 3}\n",
        "profiles_list.yaml": "profiles: [quick]\n",
        "latin1.yaml": b"seed: 0\nmodel: {name: \xe9}\n",
        "syntax.yaml": "seed: [0\nmodel: x\n",
        "top_list.yaml": "- a\n- b\n",
        "unknown_top.yaml": "colour: red\n",
        "unknown_nested.yaml": "prune: {colour: red}\n",
        "protect.yaml": "prune: {protect: 1.5}\n",
        "batch0.yaml": "data: {batch_size: 0}\n",
        "no_methods.yaml": "benchmark: {methods: []}\n",
        "speedup1.yaml": "benchmark: {speedups: [1]}\n",
        "epochs.yaml": "pretrain: {epochs: -1}\n",
        "ratio.yaml": "tune: {ratio_range: [0.8, 0.2]}\n",
        "timezone.yaml": "schedules: {timezone: Mars/Olympus}\n",
        "cron.yaml": "schedules: {benchmark: {cron: every day}}\n",
        "ckpt_missing.yaml": "model: {checkpoint: bad/missing.pt}\n",
        "ckpt_text.yaml": "model: {checkpoint: bad/text.pt}\n",
        "ckpt_evil.yaml": "model: {checkpoint: bad/evil.pt}\n",
        "yolo_evil.yaml": "model: {name: yolov8n, checkpoint: bad/evil.pt}\ndata: {dataset: shapes}\n",
        "cifar_missing.yaml": "data: {dataset: cifar10, root: bad/nowhere}\n",
        "cifar_half.yaml": "data: {dataset: cifar10, root: bad/cifar_half}\n",
        "cifar_evil.yaml": "data: {dataset: cifar10, root: bad/cifar_evil}\n",
        "seed_text.yaml": "seed: abc\n",
        "scope.yaml": "benchmark: {scopes: [galaxy]}\n",
    }
    for name, text in params.items():
        (bad / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    (bad / "folder").mkdir()


PRUNE = ["prune", "--method", "l2", "--speedup", "2"]
BAD_INPUTS: list[tuple[str, list[str]]] = [
    # prune: names and numbers
    ("unknown method", ["prune", "--method", "nope", "--speedup", "2"]),
    ("unknown sparsifier", ["prune", "--method", "l2+nope", "--speedup", "2"]),
    ("speedup 1", ["prune", "--method", "l2", "--speedup", "1"]),
    ("negative speedup", ["prune", "--method", "l2", "--speedup", "-2"]),
    ("speedup not a number", ["prune", "--method", "l2", "--speedup", "abc"]),
    ("missing --method", ["prune", "--speedup", "2"]),
    ("negative finetune epochs", PRUNE + ["--finetune-epochs", "-1"]),
    ("unknown scope", PRUNE + ["--scope", "galaxy"]),
    ("unknown model", PRUNE + ["--model", "resnet99"]),
    ("unknown timm model", PRUNE + ["--model", "timm/not_a_model"]),
    ("unknown dataset", PRUNE + ["--dataset", "mnist"]),
    ("missing imagefolder", PRUNE + ["--dataset", "imagefolder:bad/nowhere"]),
    ("unknown command", ["no-such-command"]),
    ("unknown option", PRUNE + ["--colour", "red"]),
    # prune: files
    ("missing checkpoint", PRUNE + ["--checkpoint", "bad/missing.pt"]),
    ("text file as checkpoint", PRUNE + ["--checkpoint", "bad/text.pt"]),
    ("empty checkpoint", PRUNE + ["--checkpoint", "bad/empty.pt"]),
    ("malicious checkpoint", PRUNE + ["--checkpoint", "bad/evil.pt"]),
    ("plain state dict as checkpoint", PRUNE + ["--checkpoint", "bad/state_dict.pt"]),
    ("checkpoint of another model", PRUNE + ["--checkpoint", "bad/resnet56.pt"]),
    ("checkpoint with other classes", PRUNE + ["--checkpoint", "bad/classes100.pt"]),
    ("folder as checkpoint", PRUNE + ["--checkpoint", "bad/folder"]),
    ("imagefolder with a corrupt image", PRUNE + ["--dataset", "imagefolder:bad/corrupt"]),
    ("imagefolder with 2 images per class", PRUNE + ["--dataset", "imagefolder:bad/two_per_class"]),
    ("imagefolder with one class", PRUNE + ["--dataset", "imagefolder:bad/one_class"]),
    ("detection model on digits", PRUNE + ["--model", "yolov8n", "--dataset", "digits"]),
    ("classifier on shapes", PRUNE + ["--model", "resnet20", "--dataset", "shapes"]),
    ("malicious YOLO checkpoint", PRUNE + ["--model", "yolov8n", "--dataset", "shapes", "--checkpoint",
                                           "bad/evil.pt"]),
    ("text file as YOLO checkpoint", PRUNE + ["--model", "yolov8n", "--dataset", "shapes", "--checkpoint",
                                              "bad/text.pt"]),
    ("YOLO with a sparsifier", ["prune", "--method", "l2+group_norm", "--speedup", "2", "--model", "yolov8n",
                                "--dataset", "shapes"]),
    ("missing detection yaml", PRUNE + ["--model", "yolov8n", "--dataset", "bad/missing.yaml"]),
    ("broken detection yaml", PRUNE + ["--model", "yolov8n", "--dataset", "bad/broken.yaml"]),
    ("detection yaml without images", PRUNE + ["--model", "yolov8n", "--dataset", "bad/no_images.yaml"]),
    # params files
    ("--params missing", PRUNE + ["--params", "bad/missing.yaml"]),
    ("--params a folder", PRUNE + ["--params", "bad/folder"]),
    ("unknown profile", PRUNE + ["--profile", "nope"]),
    ("profile that is a number", PRUNE + ["--params", "bad/profile_int.yaml", "--profile", "quick"]),
    ("profiles that are a list", PRUNE + ["--params", "bad/profiles_list.yaml", "--profile", "quick"]),
    ("params not UTF-8", PRUNE + ["--params", "bad/latin1.yaml"]),
    ("params YAML syntax error", PRUNE + ["--params", "bad/syntax.yaml"]),
    ("params a list", PRUNE + ["--params", "bad/top_list.yaml"]),
    ("params unknown section", PRUNE + ["--params", "bad/unknown_top.yaml"]),
    ("params unknown key", PRUNE + ["--params", "bad/unknown_nested.yaml"]),
    ("protect above 1", PRUNE + ["--params", "bad/protect.yaml"]),
    ("batch size 0", PRUNE + ["--params", "bad/batch0.yaml"]),
    ("seed not an integer", PRUNE + ["--params", "bad/seed_text.yaml"]),
    ("negative pretrain epochs", ["pretrain", "--params", "bad/epochs.yaml"]),
    ("model.checkpoint missing", ["pretrain", "--params", "bad/ckpt_missing.yaml"]),
    ("model.checkpoint a text file (inside a flow)", ["pretrain", "--params", "bad/ckpt_text.yaml"]),
    ("model.checkpoint malicious (inside a flow)", ["pretrain", "--params", "bad/ckpt_evil.yaml"]),
    ("YOLO model.checkpoint malicious", PRUNE + ["--params", "bad/yolo_evil.yaml"]),
    ("cifar10 missing (inside a flow)", ["prepare", "--params", "bad/cifar_missing.yaml"]),
    ("cifar10 half present (inside a flow)", ["prepare", "--params", "bad/cifar_half.yaml"]),
    ("cifar10 malicious batch (inside a flow)", ["prepare", "--params", "bad/cifar_evil.yaml"]),
    # benchmark
    ("benchmark: no methods", ["benchmark", "--params", "bad/no_methods.yaml"]),
    ("benchmark: speedup 1", ["benchmark", "--params", "bad/speedup1.yaml"]),
    ("benchmark: unknown scope", ["benchmark", "--params", "bad/scope.yaml"]),
    ("benchmark: unknown method", ["benchmark", "--methods", "nope"]),
    ("benchmark: speedups not numbers", ["benchmark", "--speedups", "2,x"]),
    ("benchmark: concurrency 0", ["benchmark", "--concurrency", "0"]),
    # tune
    ("tune: zero trials", ["tune", "--method", "l2", "--trials", "0"]),
    ("tune: unreachable speedup", ["tune", "--method", "l2", "--speedup", "500"]),
    ("tune: inverted ratio range", ["tune", "--method", "l2", "--params", "bad/ratio.yaml"]),
    ("tune: storage not a URL", ["tune", "--method", "l2", "--storage", "bogus"]),
    ("tune: journal in a missing folder", ["tune", "--method", "l2", "--storage", "journal:bad/no/dir.log"]),
    ("tune: YOLO", ["tune", "--method", "l2", "--model", "yolov8n", "--dataset", "shapes"]),
    ("tune: --study-name with two methods", ["tune", "--methods", "l2,taylor", "--study-name", "x"]),
    # leaderboard
    ("leaderboard: missing results", ["leaderboard", "--results", "bad/missing.json"]),
    ("leaderboard: results '{'", ["leaderboard", "--results", "bad/open.json"]),
    ("leaderboard: results '{}'", ["leaderboard", "--results", "bad/empty.json"]),
    ("leaderboard: results a list", ["leaderboard", "--results", "bad/list.json"]),
    ("leaderboard: trials without fields", ["leaderboard", "--results", "bad/trials.json"]),
    # serve
    ("serve: --params missing", ["serve", "--dry-run", "--params", "bad/missing.yaml"]),
    ("serve: --params a folder", ["serve", "--dry-run", "--params", "bad/folder"]),
    ("serve: bad timezone", ["serve", "--dry-run", "--params", "bad/timezone.yaml"]),
    ("serve: bad cron", ["serve", "--dry-run", "--params", "bad/cron.yaml"]),
]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def judge(name: str, proc: subprocess.CompletedProcess, before: dict, after: dict, proj: Path) -> dict:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit code {proc.returncode}")
    if "Traceback" in proc.stderr:
        problems.append("traceback")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"{len(lines)} stderr lines")
    if after != before:
        changed = sorted(set(after) ^ set(before) | {k for k in before if k in after and before[k] != after[k]})
        problems.append(f"files changed: {changed[:5]}")
    if (proj / MARKER).exists():
        problems.append("MALICIOUS PAYLOAD RAN")
        (proj / MARKER).unlink()  # so the next cases are judged on their own
    return {"input": name, "ok": not problems, "problems": problems, "stderr": lines[:3]}


def bad_inputs(parallel: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="pb-bad-") as tmp:
        proj, env = make_project(Path(tmp), profile=None)
        write_fixtures(proj)

        def run(case):
            name, args = case
            # each case in its own copy of the folder state: the snapshot compares exactly what that command did
            before = snapshot(proj)
            proc = subprocess.run([PRUNEBENCH, *args], cwd=proj, env=env, capture_output=True, text=True,
                                  timeout=600, stdin=subprocess.DEVNULL)
            return name, proc, before
        results = []
        start = time.perf_counter()
        # the folder must not change, so commands can share it; a change shows in the next snapshot too
        with ThreadPoolExecutor(parallel) as pool:
            for name, proc, before in pool.map(run, BAD_INPUTS):
                results.append(judge(name, proc, before, snapshot(proj), proj))
        ok = sum(r["ok"] for r in results)
        return {"tried": len(results), "handled": ok, "seconds": round(time.perf_counter() - start, 1),
                "failures": [r for r in results if not r["ok"]], "cases": results}


# --------------------------------------------------------------------------- kills
def prefect_servers(prefect_home: str) -> set:
    """PIDs of the Prefect servers of one project (its own ``PREFECT_HOME``): other users' servers are not ours."""
    import psutil
    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "prefect.server" not in cmd:
            continue
        try:
            if p.environ().get("PREFECT_HOME") == prefect_home:
                pids.add(p.info["pid"])
        except psutil.Error:
            pass
    return pids


def servers_left(prefect_home: str, patience: float = 30.0) -> set:
    """The project's servers still alive after ``patience`` seconds (a graceful shutdown may take a few)."""
    deadline = time.time() + patience
    while (left := prefect_servers(prefect_home)) and time.time() < deadline:
        time.sleep(1)
    return left


def run_killed(cmd: list, proj: Path, env: dict, kills: int, window: tuple, rng: random.Random) -> dict:
    """``kill -9`` the command ``kills`` times at random moments in ``window`` seconds, then let it finish."""
    moments, orphans = [], 0
    for _ in range(kills):
        moment = rng.uniform(*window)
        proc = subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=moment)
            moments.append({"at_s": round(moment, 1), "killed": False})  # finished before the kill
            continue
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        left = servers_left(env["PREFECT_HOME"])
        orphans += len(left)
        for pid in left:  # clean up so the next round starts equal
            os.kill(pid, 9)
        moments.append({"at_s": round(moment, 1), "killed": True, "orphaned_servers": len(left)})
    final = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return {"moments": moments, "kills": sum(m["killed"] for m in moments), "orphaned_servers": orphans,
            "final_exit": final.returncode, "final_stderr_tail": final.stderr[-1500:] if final.returncode else ""}


def by_name(proj: Path) -> dict:
    """The benchmark's trials by ``method@speedup/scope`` (what an uninterrupted run is compared on)."""
    trials = json.loads((proj / "reports/benchmark.json").read_text())["trials"]
    return {f"{t['method']}@{t['speedup_target']:g}x/{t['scope']}": t for t in trials}


def mlflow_runs(proj: Path) -> list:
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("prunebench/digits/resnet20")
    return list(client.search_runs([exp.experiment_id], max_results=5000)) if exp else []


def kill_benchmark(tmp: Path, kills: int, rng: random.Random) -> dict:
    # enough work (12 trials) that every kill lands mid-sweep, also after earlier kills left trials finished
    quick = {"benchmark": {"methods": ["l2", "taylor", "l2+group_norm", "random", "fpgm", "lamp"],
                           "speedups": [2, 4]}}
    cmd = [PRUNEBENCH, "benchmark", "--no-leaderboard"]
    reference_proj, env = make_project(tmp / "reference", quick, merge=True)
    done = subprocess.run(cmd, cwd=reference_proj, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = by_name(reference_proj)
    proj, env = make_project(tmp / "killed", quick, merge=True)
    outcome = run_killed(cmd, proj, env, kills, (8, 40), rng)
    trials = by_name(proj)
    runs = [r for r in mlflow_runs(proj) if r.data.tags.get("kind") == "trial"]
    finished = {}
    for r in runs:
        if r.info.status == "FINISHED":
            finished.setdefault(r.data.tags["trial_key"], []).append(r.info.run_id)
    lost = sorted(set(reference) - set(trials))
    differ = sorted(k for k in reference if k in trials and
                    trials[k].get("acc_finetuned") != reference[k].get("acc_finetuned"))
    same_keys = sorted(k for k in reference if k in trials and trials[k]["trial_key"] == reference[k]["trial_key"])
    duplicated = sorted(k for k, ids in finished.items() if len(ids) > 1)
    unlogged = sorted(k for k, t in trials.items() if t["trial_key"] not in finished)
    running = sum(r.info.status == "RUNNING" for r in runs)
    ok = outcome["final_exit"] == 0 and not (lost or differ or duplicated or unlogged or running
                                             or outcome["orphaned_servers"])
    return {**outcome, "trials": len(reference), "same_trial_keys": len(same_keys), "lost": lost,
            "results_differ": differ, "duplicated": duplicated,
            "not_in_mlflow": unlogged, "runs_left_running": running, "ok": ok}


def kill_study(tmp: Path, kills: int, rng: random.Random, trials: int = 10) -> dict:
    import optuna
    from optuna.trial import TrialState
    proj, env = make_project(tmp / "study")
    cmd = [PRUNEBENCH, "tune", "--method", "l2", "--speedup", "2", "--trials", str(trials), "--storage",
           "sqlite:///optuna.db"]
    outcome = run_killed(cmd, proj, env, kills, (10, 40), rng)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    summaries = optuna.get_all_study_summaries(f"sqlite:///{proj / 'optuna.db'}")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=f"sqlite:///{proj / 'optuna.db'}")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    runs = [r for r in mlflow_runs(proj) if r.data.tags.get("kind") == "tune-trial"]
    by_trial = {}
    for r in runs:
        by_trial.setdefault(r.data.tags.get("optuna_trial_id"), []).append(r.info.status)
    missing = [t.number for t in done if by_trial.get(str(t._trial_id), []).count("FINISHED") != 1]
    running = sum(r.info.status == "RUNNING" for r in runs)
    left_running = sum(s == TrialState.RUNNING for s in states)
    ok = (outcome["final_exit"] == 0 and len(done) == trials and not missing and not running and not left_running
          and not outcome["orphaned_servers"])
    return {**outcome, "finished_trials": len(done), "requested": trials,
            "failed_trials": sum(s == TrialState.FAIL for s in states),
            "trials_without_one_finished_run": missing, "runs_left_running": running,
            "optuna_trials_left_running": left_running, "ok": ok}


def kills(benchmark_kills: int, study_kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="pb-kills-") as tmp:
        start = time.perf_counter()
        bench = kill_benchmark(Path(tmp), benchmark_kills, rng)
        study = kill_study(Path(tmp), study_kills, rng)
        return {"seed": seed, "benchmark": bench, "study": study,
                "kills": bench["kills"] + study["kills"], "resumed_clean": bench["ok"] + study["ok"],
                "seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------- parallel workers
def workers(configs: list) -> dict:
    import optuna
    from optuna.trial import TrialState
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pb-workers-") as tmp:
        for n, storage, trials in configs:
            proj, env = make_project(Path(tmp) / f"{n}-{storage.split(':')[0]}")
            cmd = [PRUNEBENCH, "tune", "--method", "l2", "--speedup", "2", "--trials", str(trials), "--storage",
                   storage]
            start = time.perf_counter()
            procs = [subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, stdin=subprocess.DEVNULL) for _ in range(n)]
            errors = [p.communicate()[1] for p in procs]
            codes = [p.returncode for p in procs]
            url = storage if storage.startswith("sqlite") else None
            store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                str(proj / storage.split(":", 1)[1]))) if url is None else f"sqlite:///{proj / 'optuna.db'}"
            name = optuna.get_all_study_summaries(store)[0].study_name
            all_trials = optuna.load_study(study_name=name, storage=store).get_trials(deepcopy=False)
            done = [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            allocations = [tuple(sorted(t.params.items())) for t in done]
            runs = [r for r in mlflow_runs(proj) if r.data.tags.get("kind") == "tune-trial"]
            per_trial = {}
            for r in runs:
                per_trial.setdefault(r.data.tags.get("optuna_trial_id"), []).append(r.info.status)
            rows.append({
                "workers": n, "storage": storage.split(":")[0], "requested": trials, "finished": len(done),
                "all_trials": len(all_trials), "exit_codes": codes,
                "distinct_allocations": len(set(allocations)) == len(allocations),
                "one_run_per_trial": all(per_trial.get(str(t._trial_id), []).count("FINISHED") == 1 for t in done),
                "errors": [e[-800:] for e, c in zip(errors, codes) if c != 0],
                "seconds": round(time.perf_counter() - start, 1)})
            rows[-1]["ok"] = (all(c == 0 for c in codes) and rows[-1]["finished"] == trials
                              and rows[-1]["distinct_allocations"] and rows[-1]["one_run_per_trial"])
    return {"rows": rows, "runs_ok": sum(r["ok"] for r in rows), "runs": len(rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["bad-inputs", "kills", "workers", "all"])
    ap.add_argument("--parallel", type=int, default=2, help="bad inputs tried side by side")
    ap.add_argument("--benchmark-kills", type=int, default=5)
    ap.add_argument("--study-kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/reliability.json")
    args = ap.parse_args()
    out = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"}
    if args.what in ("bad-inputs", "all"):
        out["bad_inputs"] = bad_inputs(args.parallel)
        print(json.dumps({k: v for k, v in out["bad_inputs"].items() if k != "cases"}, indent=1), flush=True)
    if args.what in ("kills", "all"):
        out["kills"] = kills(args.benchmark_kills, args.study_kills, args.seed)
        print(json.dumps(out["kills"], indent=1), flush=True)
    if args.what in ("workers", "all"):
        out["workers"] = workers([(2, "journal:optuna.journal", 6), (2, "sqlite:///optuna.db", 6),
                                  (3, "journal:optuna.journal", 6)])
        print(json.dumps(out["workers"], indent=1), flush=True)
    if args.save:
        path = ROOT / "benchmarks/results/reliability.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**previous, **out}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
