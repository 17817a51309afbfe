"""The command line: bad input is one clear line and exit code 2; the JSON report has every promised key."""
import json

import pytest

import pruning

JSON_KEYS = {"method", "scope", "speedup_target", "speedup", "macs_dense", "macs_pruned", "params_dense",
             "params_pruned", "acc_dense", "acc_pruned", "latency_speedup", "seconds_prune"}


def one_clear_line(err):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    return "Traceback" not in err and lines and lines[0].startswith("error:")


@pytest.mark.parametrize("args, expected", [
    (["--method", "nope", "--speedup", "2"], "unknown method 'nope'; choose one of: bnscale"),
    (["--method", "l2", "--speedup", "2", "--model", "resnet99"], "unknown model 'resnet99'"),
    (["--method", "l2", "--speedup", "2", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--method", "l2", "--speedup", "2", "--scope", "galaxy"], "unknown scope 'galaxy'"),
    (["--method", "l2", "--speedup", "1"], "speedup must be > 1"),
    (["--method", "l2", "--speedup", "2", "--checkpoint", "nowhere.pt"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, args, expected):
    code, out, err = cli("prune", *args)
    assert code == 2, err
    assert one_clear_line(err) and expected in err


def test_corrupt_checkpoint_is_refused_and_nothing_is_written(cli, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    code, _, err = cli("prune", "--method", "l2", "--speedup", "2", "--checkpoint", "bad.pt", "--out", "out.pt")
    assert code == 2 and one_clear_line(err) and "corrupt" in err
    assert not (tmp_path / "out.pt").exists()


def test_invalid_params_file_lists_every_problem(cli, tmp_path):
    (tmp_path / "params.yaml").write_text("prune:\n  scope: x\n  colour: red\nbenchmark:\n  speedups: [0.5]\n")
    code, _, err = cli("prune", "--method", "l2", "--speedup", "2")
    assert code == 2 and "Traceback" not in err
    assert "prune.scope" in err and "prune.colour: unknown key" in err and "benchmark.speedups" in err


def test_methods_json_lists_stage_and_data_needs(cli):
    code, out, _ = cli("methods", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["taylor"]["needs_data"] and not rows["l2"]["needs_data"]
    assert rows["group_norm"]["stage"] == "sparsifier" and rows["lamp"]["stage"] == "criterion"


def test_prune_json_report(cli, tmp_path):
    dense = pruning.create_model("resnet20", 10)
    pruning.save_checkpoint(tmp_path / "dense.pt", dense, model_name="resnet20", num_classes=10, in_chans=3,
                            input_size=32)
    code, out, err = cli("prune", "--model", "resnet20", "--dataset", "digits", "--method", "lamp", "--speedup", "2",
                         "--checkpoint", "dense.pt", "--finetune-epochs", "1", "--out", "pruned.pt", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert JSON_KEYS <= report.keys()
    assert report["speedup"] >= 2 and report["macs_pruned"] < report["macs_dense"]
    assert 0 <= report["acc_pruned"] <= 100 and report["acc_finetuned"] is not None
    loaded, _ = pruning.load_checkpoint(tmp_path / "pruned.pt")
    assert pruning.count_macs_params(loaded, pruning.load_data("digits").spec.example_inputs())[0] == report["macs_pruned"]


def test_version_names_prunebench_and_its_main_libraries(cli):
    from importlib.metadata import version
    code, out, _ = cli("--version")
    assert code == 0
    assert out.startswith(f"prunebench {version('prunebench')} (torch {version('torch')}")


def test_flags_show_the_default_params_yaml_gives_them(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    (tmp_path / "params.yaml").write_text("benchmark:\n  speedups: [3, 5]\ntune:\n  trials: 7\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    helps = {cmd: subprocess.run([sys.executable, "-m", "flows.cli", cmd, "-h"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True).stdout for cmd in ("benchmark", "tune")}
    assert "params.yaml benchmark.speedups: 3,5" in helps["benchmark"]
    assert "params.yaml tune.trials: 7" in helps["tune"]
    assert "params.yaml tune.speedup)" in helps["tune"]  # not in this params.yaml: its key is named


def test_the_closing_lines_say_where_results_are_and_that_quick_is_a_smoke_test(capsys):
    from flows.cli import where_to_look
    from flows.config import Params
    where_to_look(Params(profile="quick"), "reports/benchmark.json")
    err = capsys.readouterr().err
    assert "results: reports/benchmark.json" in err and "`prunebench ui`" in err
    assert "experiment prunebench/digits/resnet20" in err and "smoke test" in err
    where_to_look(Params(), "reports/benchmark.json")
    assert "smoke test" not in capsys.readouterr().err
