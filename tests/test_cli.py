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
