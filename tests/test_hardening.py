"""Bad input and hostile file systems: one line on stderr, exit code 2, and earlier results left intact."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import pruning
from pruning import fileio

TRACEBACK = "Traceback (most recent call last)"


def one_error_line(code: int, err: str) -> str:
    """The CLI's contract for bad input: exit 2 and exactly one ``error: ...`` line, no traceback."""
    assert code == 2, err
    assert TRACEBACK not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def files_under(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- params.yaml
@pytest.mark.parametrize("content, expected", [
    (b"profiles: {quick: 3}\n", "profiles.quick must be a mapping"),
    (b"profiles: [quick]\n", "profiles must be a mapping"),
    (b"seed: 0\nmodel: {name: \xff}\n", "is not UTF-8 text (byte 0xff"),
    (b"seed: [0\nmodel: x\n", "is not valid YAML: line 2, column 6"),
    (b"- a\n- b\n", "must hold a mapping of stage sections, not a list"),
    (b"data: {dataset: foo}\nprune: {scope: x}\n", "2 problems: data.dataset: unknown dataset 'foo'"),
])
def test_bad_params_file_is_one_line(tmp_path, monkeypatch, content, expected):
    from typer.testing import CliRunner

    from flows.cli import app
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_bytes(content)
    before = files_under(tmp_path)
    profile = ["--profile", "quick"] if b"profiles" in content else []
    result = CliRunner().invoke(app, ["prune", "--method", "l2", "--speedup", "2", *profile])
    assert expected in one_error_line(result.exit_code, result.stderr)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("args, expected", [
    (["prune", "--method", "l2", "--speedup", "abc"], "Invalid value for '--speedup'"),
    (["prune", "--speedup", "2"], "Missing option '--method'"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_one_line(cli, args, expected):
    code, _, err = cli(*args, timeout=120)
    assert expected in one_error_line(code, err)


@pytest.mark.parametrize("name", ["nope.yaml", "folder"])
def test_serve_refuses_a_params_file_that_is_not_there(cli, tmp_path, name):
    (tmp_path / "folder").mkdir()
    code, out, err = cli("serve", "--dry-run", "--params", name, timeout=120)
    assert "params file" in one_error_line(code, err)
    assert out == ""  # no deployments listed from built-in defaults


@pytest.mark.parametrize("content, expected", [
    ("{", "is not readable JSON"),
    ("{}", "is not a prunebench benchmark summary"),
    ("[1, 2]", "is not a prunebench benchmark summary"),
    ('{"model": "m", "dataset": "d", "acc_dense": 1, "trials": [{"method": "l2"}]}', "lack method, scope"),
])
def test_leaderboard_refuses_a_malformed_summary(cli, tmp_path, content, expected):
    (tmp_path / "bad.json").write_text(content)
    code, _, err = cli("leaderboard", "--results", "bad.json", "--out", "reports", timeout=180)
    assert expected in one_error_line(code, err)
    assert not (tmp_path / "reports").exists()


def test_bad_input_inside_a_flow_prints_no_prefect_traceback(cli, tmp_path):
    """A PruneBenchError raised inside a Prefect task reaches the user as one line, not Prefect's error log."""
    (tmp_path / "weights.pt").write_text("not weights\n")
    (tmp_path / "params.yaml").write_text("model: {checkpoint: weights.pt}\n")
    code, _, err = cli("pretrain", timeout=300)
    assert "weights.pt" in one_error_line(code, err)
    assert not (tmp_path / "models" / "dense.pt").exists()


# --------------------------------------------------------------------------- output locations
@pytest.fixture()
def small_fs(tmp_path):
    """A real 1 MiB tmpfs (a disk that fills up, or is remounted read-only); needs root, as in CI."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Fill a file system to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory, digits):
    """An untrained resnet20 for digits: pruning and its output paths need no training."""
    path = tmp_path_factory.mktemp("dense") / "dense.pt"
    torch.manual_seed(0)
    model = pruning.create_model("resnet20", 10)
    return pruning.save_checkpoint(path, model, model_name="resnet20", num_classes=10, in_chans=3, input_size=32)


PRUNE = ("prune", "--method", "l2", "--speedup", "2", "--finetune-epochs", "0")


def test_prune_out_on_a_full_disk_keeps_the_earlier_checkpoint(cli, small_fs, dense_checkpoint):
    earlier = small_fs / "pruned.pt"
    earlier.write_bytes(b"the earlier result" * 10_000)
    fill(small_fs)
    code, _, err = cli(*PRUNE, "--checkpoint", dense_checkpoint, "--out", earlier, timeout=300)
    assert "No space left on device" in one_error_line(code, err)
    assert earlier.read_bytes() == b"the earlier result" * 10_000
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler", "pruned.pt"]  # no temporary file left


def test_prune_out_on_a_read_only_disk(cli, small_fs, dense_checkpoint):
    read_only(small_fs)
    code, _, err = cli(*PRUNE, "--checkpoint", dense_checkpoint, "--out", small_fs / "sub" / "pruned.pt",
                       timeout=300)
    assert "Read-only file system" in one_error_line(code, err)


def test_pretrain_out_on_a_full_disk(cli, tmp_path, small_fs):
    torch.save(pruning.create_model("resnet20", 10).state_dict(), tmp_path / "weights.pt")
    (tmp_path / "params.yaml").write_text("model: {checkpoint: weights.pt}\n")
    fill(small_fs)
    code, _, err = cli("pretrain", "--out", small_fs / "dense.pt", timeout=300)
    assert "No space left on device" in one_error_line(code, err)
    assert not (small_fs / "dense.pt").exists()


def test_leaderboard_out_on_a_read_only_disk_keeps_earlier_reports(cli, tmp_path, small_fs):
    summary = {"model": "resnet20", "dataset": "digits", "acc_dense": 90.0, "speedups": [2.0],
               "scopes": ["protected"], "methods": ["l2"], "trials": [
                   {"status": "ok", "method": "l2", "scope": "protected", "speedup_target": 2.0, "speedup": 2.01,
                    "acc_dense": 90.0, "acc_pruned": 50.0, "acc_finetuned": 85.0, "macs_dense": 4e7,
                    "macs_pruned": 2e7, "params_dense": 2.7e5, "params_pruned": 1.3e5, "latency_speedup": 1.2,
                    "seconds_prune": 1.0, "seconds_sparsify": 0.0, "seconds_finetune": 3.0, "seconds_total": 4.0}]}
    (tmp_path / "benchmark.json").write_text(json.dumps(summary))
    code, _, err = cli("leaderboard", "--results", "benchmark.json", "--out", small_fs, timeout=300)
    assert code == 0, err
    before = files_under(small_fs)
    assert "leaderboard.md" in before
    read_only(small_fs)
    code, _, err = cli("leaderboard", "--results", "benchmark.json", "--out", small_fs, timeout=300)
    assert "Read-only file system" in one_error_line(code, err)
    assert files_under(small_fs) == before


# --------------------------------------------------------------------------- the atomic writer itself
def test_atomic_writer_never_publishes_a_partial_file(tmp_path):
    target = fileio.write_text(tmp_path / "result.json", "old")

    def crash_midway(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # a kill between writing and publishing

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(target, crash_midway)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_one_line_never_fails_on_an_empty_message():
    from pruning.errors import one_line
    assert one_line(ValueError("")) == "ValueError"
    assert one_line("first\n\n  second  \n") == "first; second"
