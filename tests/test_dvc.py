"""DVC experiments that compare, and stages keyed by the params they read.

A real git + DVC repo (a copy of the project, tiny settings): one `dvc repro`, committed as the README says, then
an edit to a profile that is not active (nothing retrains), two `dvc exp run -S ...` read back through `dvc exp
show --json`, `dvc metrics diff` and `dvc plots diff`, and a `-S` value that a profile would override (refused).
"""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from helpers import BIN, ROOT, make_project

from flows.config import load_params, stage_params
from pruning.errors import PruneBenchError

# the quick profile leaves benchmark.speedups alone: the experiments below vary it in params.yaml itself
TINY = {"pretrain": {"epochs": 1}, "sparsify": {"epochs": 1}, "finetune": {"epochs": 1},
        "prune": {"steps": 20, "calibration_batches": 1}, "evaluate": {"latency_repeats": 3},
        "benchmark": {"methods": ["l2", "random"]}}


def _run(proj, env, *cmd, check=True, timeout=900):
    done = subprocess.run([str(BIN / cmd[0]) if cmd[0] in ("dvc", "prunebench") else cmd[0], *cmd[1:]], cwd=proj,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, (cmd, done.stdout[-3000:], done.stderr[-3000:])
    return done


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The project after `dvc repro`, with dvc.lock and the tracked outputs committed (the README's workflow)."""
    proj, env = make_project(tmp_path_factory.mktemp("dvc"), TINY)
    _run(proj, env, "dvc", "repro")
    _run(proj, env, "git", "add", "dvc.lock", "params", "reports")
    _run(proj, env, "git", "commit", "-qm", "benchmark")
    return proj, env


@pytest.mark.slow
def test_editing_an_inactive_profile_or_the_mlflow_store_retrains_nothing(repo):
    proj, env = repo
    dense = proj / "models/dense.pt"
    before = dense.stat().st_mtime_ns, dense.read_bytes()
    resolved = {p.name: p.read_bytes() for p in (proj / "params").glob("*.json")}
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["profiles"]["other"] = {"pretrain": {"epochs": 9}, "benchmark": {"speedups": [8]}}
    params["tracking"] = {"mlflow_uri": "sqlite:///elsewhere.db"}  # where results go is no input of them
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    done = _run(proj, env, "dvc", "repro")
    for stage in ("prepare", "pretrain", "benchmark", "leaderboard"):
        assert f"Stage '{stage}' didn't change, skipping" in done.stdout, (stage, done.stdout[-3000:])
    assert "Running stage 'params'" in done.stdout  # only the cheap resolution ran, and wrote the same files
    assert {p.name: p.read_bytes() for p in (proj / "params").glob("*.json")} == resolved
    assert (dense.stat().st_mtime_ns, dense.read_bytes()) == before
    _run(proj, env, "git", "checkout", "--", "params.yaml", "dvc.lock")


@pytest.mark.slow
def test_checkpoints_hold_no_timings(repo):
    import pruning
    proj, _ = repo
    finetuned = sorted((proj / "models/trials").glob("*/finetuned.pt"))
    assert finetuned
    for path in finetuned:
        report = pruning.read_checkpoint(path)["extra"]["report"]
        assert "macs_pruned" in report and not [k for k in report if k.startswith("seconds_")], path


def _experiments(shown: list) -> dict:
    """`dvc exp show --json`: experiment name -> its metrics file's data (or its error)."""
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                metrics = (data.get("metrics") or {}).get("reports/metrics.json") or {}
                found[rev.get("name")] = metrics.get("data", metrics.get("error"))
    return found


@pytest.mark.slow
def test_experiments_compare_in_exp_show_metrics_diff_and_plots_diff(repo):
    proj, env = repo
    for name, speedups in (("at-2x", "[2]"), ("at-3x", "[3]")):
        done = _run(proj, env, "dvc", "exp", "run", "-n", name, "-S", f"benchmark.speedups={speedups}")
        assert "No file hash info" not in done.stdout + done.stderr

    shown = json.loads(_run(proj, env, "dvc", "exp", "show", "--json").stdout)
    metrics = _experiments(shown)
    two, three = metrics["at-2x"], metrics["at-3x"]
    for m, x in ((two, "x2"), (three, "x3")):
        for method in ("l2", "random"):
            acc = m[method][x]["acc_mean"]
            assert isinstance(acc, (int, float)) and 0 <= acc <= 100, (method, x, m)
            assert m[method][x]["failed"] == 0 and m[method][x]["speedup"] > 1.5
        assert isinstance(m["acc_dense"], (int, float)) and m["trials"] == 2 and m["trials_failed"] == 0
    assert "x3" not in two["l2"] and "x2" not in three["l2"]

    diff = _run(proj, env, "dvc", "metrics", "diff", "at-2x", "at-3x", "--json")
    assert "reports/metrics.json" in json.loads(diff.stdout)
    plots = json.loads(_run(proj, env, "dvc", "plots", "diff", "at-2x", "at-3x", "--json").stdout)
    assert not plots.get("errors"), plots.get("errors")
    vega = {title: p[0]["content"] for title, p in plots["data"].items() if p[0]["type"] == "vega"}
    titles = list(vega)
    assert len(titles) == len(set(titles)) >= 2
    chart = vega["accuracy after finetuning vs MACs speedup target, per method"]
    assert chart["encoding"]["color"]["field"] == "method"  # one chart, every method, coloured by method
    values = chart["data"]["values"]
    assert {v["method"] for v in values} == {"l2", "random"} and {v["rev"] for v in values} == {"at-2x", "at-3x"}
    for image in ("reports/leaderboard.png", "reports/rank_consistency.png"):  # from DVC's cache, per experiment
        assert {r for p in plots["data"][image] for r in p["revisions"]} == {"at-2x", "at-3x"}


@pytest.mark.slow
def test_a_set_value_a_profile_would_override_is_refused_in_one_line(repo):
    proj, env = repo
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["benchmark"]["methods"] = ["fpgm"]  # profiles.quick sets benchmark.methods: [l2, random]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = _run(proj, env, "prunebench", "params", check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "benchmark.methods" in lines[0] and "fpgm" in lines[0] and "random" in lines[0], lines
    assert "Traceback" not in done.stderr
    _run(proj, env, "git", "checkout", "--", "params.yaml")


def _params(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_profile_conflict_names_the_key_both_values_and_the_way_out(tmp_path):
    path = _params(tmp_path, "profile: quick\nbenchmark: {speedups: [2, 3]}\n"
                             "profiles: {quick: {benchmark: {speedups: [2]}, pretrain: {epochs: 2}}}\n")
    with pytest.raises(PruneBenchError) as err:
        load_params(path)
    message = str(err.value)
    assert "\n" not in message
    assert "benchmark.speedups: [2, 3]" in message and "'quick' sets benchmark.speedups: [2]" in message
    assert "profiles.quick" in message and "without the profile" in message


@pytest.mark.parametrize("top", [
    "benchmark: {speedups: [2, 4]}",          # the built-in default: the profile may replace it
    "benchmark: {speedups: [2]}",             # the same value as the profile's
    "benchmark: {methods: [l2]}",             # a key the profile does not set
    "pretrain: {epochs: 20}",                 # the default again
])
def test_values_a_profile_may_replace_without_a_word(tmp_path, top):
    path = _params(tmp_path, f"profile: quick\n{top}\nprofiles: {{quick: {{benchmark: {{speedups: [2]}}, "
                             f"pretrain: {{epochs: 2}}}}}}\n")
    params = load_params(path)
    assert params.benchmark.speedups == [2.0] and params.pretrain.epochs == 2


def test_the_cli_flag_profile_meets_the_same_check(tmp_path, cli):
    _params(tmp_path, "pretrain: {epochs: 5}\nprofiles: {quick: {pretrain: {epochs: 2}}}\n")
    code, _, err = cli("params", "--profile", "quick")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pretrain.epochs: 5" in err
    assert not (tmp_path / "params").exists()


def test_each_stage_file_holds_only_what_the_stage_reads(tmp_path):
    params = load_params(_params(tmp_path, "profile: quick\nprofiles: {quick: {pretrain: {epochs: 2}}}\n"))
    prepare, pretrain, bench = (stage_params(params, s) for s in ("prepare", "pretrain", "benchmark"))
    assert set(prepare) == {"data"} and "batch_size" not in prepare["data"]
    assert set(pretrain) == {"seed", "compute", "data", "model", "pretrain"} and pretrain["pretrain"]["epochs"] == 2
    assert not {"profiles", "tune", "schedules", "tracking"} & set(bench)
    # a stage file is a params file of its own: it loads to the same effective values, with no profile to apply
    again = load_params(_write(tmp_path / "bench.json", bench), required=True)
    assert stage_params(again, "benchmark") == bench


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_the_shipped_params_yaml_holds_the_built_in_defaults():
    """A profile's override is judged against the built-in defaults: they must be what params.yaml ships."""
    from helpers import ROOT

    from flows.config import Params
    shipped = load_params(ROOT / "params.yaml", required=True).model_dump(exclude={"profiles"})
    assert shipped == Params().model_dump(exclude={"profiles"})


def test_dvc_yaml_declares_the_paths_the_commands_write():
    """flows/layout.py is where every path lives; dvc.yaml must declare the same ones as outputs."""
    from flows import layout
    from flows.config import STAGE_PARAMS
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for s in stages.values() for o in s.get("outs", [])}
    outs |= {next(iter(m)) for s in stages.values() for m in s.get("metrics", [])}
    expected = {layout.DENSE_PATH, layout.TRIALS_DIR, layout.RESULTS_PATH, layout.REPORTS_DIR / "metrics.json",
                layout.REPORTS_DIR / "plots.csv", layout.REPORTS_DIR / "leaderboard.md"}
    expected |= {layout.PARAMS_DIR / f"{stage}.json" for stage in STAGE_PARAMS}
    assert {p.as_posix() for p in expected} <= outs, sorted({p.as_posix() for p in expected} - outs)
