"""Where stages run: device resolution, mixed precision, channels-last, the paper's protocol as a profile.

This machine has no GPU, so the GPU paths themselves are exercised where a device is lent (benchmarks/gpu_bench.py);
here: a device or precision the machine lacks is one line and exit 2 before any work, results carry the device,
keys depend on it, and the CPU paths the GPU options add (autocast, channels-last, pinned batches) train and prune.
"""
from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
import yaml
from helpers import BIN, ROOT

import pruning
from pruning import device as dev
from pruning.errors import PruneBenchError


# --------------------------------------------------------------------------- resolving a device
def test_auto_is_the_cpu_on_a_machine_without_a_gpu():
    assert not torch.cuda.is_available()  # what this test file is about; a GPU machine skips nothing else
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.device_name("cpu").startswith("cpu (")


@pytest.mark.parametrize("spec, message", [("cuda", "this machine has no CUDA GPU"),
                                           ("cuda:7", "this machine has no CUDA GPU"),
                                           ("mps", "MPS backend is not available"),
                                           ("tpu", "unknown device 'tpu'")])
def test_a_device_this_machine_lacks_is_refused(spec, message):
    with pytest.raises(PruneBenchError, match=message):
        dev.resolve_device(spec)


def test_a_gpu_index_beyond_the_machines_gpus_names_the_ones_there(monkeypatch):
    # a unit test of the index check alone: this machine has no GPU to count
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(PruneBenchError, match=r"has 1 CUDA GPU\(s\): cuda:0..cuda:0"):
        dev.resolve_device("cuda:7")


def test_mixed_precision_only_where_the_device_computes_in_it(monkeypatch):
    cpu = torch.device("cpu")
    dev.check_precision("fp32", cpu)
    with pytest.raises(PruneBenchError, match="fp16 needs a GPU"):
        dev.check_precision("fp16", cpu)
    with pytest.raises(PruneBenchError, match="unknown precision"):
        dev.check_precision("fp8", cpu)
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: False)
    with pytest.raises(PruneBenchError, match="bf16 on this CPU would be emulated"):
        dev.check_precision("bf16", cpu)
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: True)
    dev.check_precision("bf16", cpu)


# --------------------------------------------------------------------------- the commands
def _prunebench(tmp_path, *args, params: dict | None = None):
    cmd = [str(BIN / "prunebench"), *args]
    if params is not None:
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
        cmd += ["--params", str(tmp_path / "p.yaml")]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")})


@pytest.mark.parametrize("args", [("prune", "--method", "l2", "--speedup", "2", "--device", "cuda"),
                                  ("prune", "--method", "l2", "--speedup", "2", "--device", "cuda:7"),
                                  ("pretrain", "--device", "cuda"),
                                  ("benchmark", "--device", "cuda:1")])
def test_a_missing_gpu_is_one_line_and_exit_2_before_any_work(tmp_path, args):
    done = _prunebench(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "compute.device" in lines[0] and "no CUDA GPU" in lines[0], done.stderr
    assert not any((tmp_path / name).exists() for name in ("models", "data", "reports", "mlflow.db"))


def test_fp16_on_the_cpu_is_one_line_and_exit_2(tmp_path):
    done = _prunebench(tmp_path, "prune", "--method", "l2", "--speedup", "2", "--device", "cpu",
                       params={"compute": {"precision": "fp16"}})
    assert done.returncode == 2 and "fp16 needs a GPU" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "models").exists()


# --------------------------------------------------------------------------- results and keys carry the device
def test_keys_depend_on_the_compute_settings(monkeypatch):
    from flows.config import Params
    from flows.keys import baseline_key, compute_key
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: True)
    plain, bf16 = Params(), Params(compute={"precision": "bf16"})
    assert compute_key(plain) == {"device": "cpu", "precision": "fp32", "deterministic": True,
                                  "channels_last": False}
    assert baseline_key(plain) != baseline_key(bf16)
    # the device's index is not part of what a result depends on, its kind is
    assert compute_key(Params(compute={"device": "auto"})) == compute_key(Params(compute={"device": "cpu"}))


def test_the_recipe_card_and_evaluation_name_the_device(digits):
    from flows import stages
    from flows.config import Params
    card = stages.recipe_card(Params())
    assert card["device"].startswith("cpu (") and card["precision"] == "fp32"
    model = pruning.create_model("resnet20", 10, 3, 8)
    result = pruning.evaluate(model, digits.loader("test", 256), digits.spec.example_inputs(), latency_batch=2,
                              repeats=1)
    assert result["device"] == dev.device_name("cpu")


def test_evaluation_times_every_batch_of_the_sweep_and_the_record_keeps_their_speedups(digits):
    from flows.record import TrialRecord
    model = pruning.create_model("resnet20", 10, 3, 8)
    example = digits.spec.example_inputs()
    final = pruning.evaluate(model, None, example, latency_batch=2, repeats=1, sweep=[4, 2])
    assert all(final[f"latency_b{b}"] > 0 for b in (1, 2, 4)) and "latency_b8" not in final
    dense = {**final, **{f"latency_b{b}": 3 * final[f"latency_b{b}"] for b in (1, 2, 4)}}
    record = TrialRecord.from_steps("l2", "protected", 2.0, {"seconds_prune": 1.0, "acc_pruned": 50.0},
                                    {**final, "seconds_evaluate": 1.0}, dense, latency_batch=2)
    assert record.latency_device == dev.device_name("cpu")
    assert record.latency_sweep == pytest.approx({"b1": 3.0, "b2": 3.0, "b4": 3.0})
    assert record.metrics()["latency_speedup_b4"] == pytest.approx(3.0)
    assert TrialRecord.from_dict(record.to_dict()).latency_sweep == record.latency_sweep


def test_the_sweep_adds_batch_256_on_a_gpu_only_and_refuses_batch_0():
    from flows.config import EvaluateParams, Params
    assert EvaluateParams().sweep_on(torch.device("cuda")) == [256]
    assert EvaluateParams().sweep_on(torch.device("cpu")) == []
    assert EvaluateParams(latency_sweep=[64]).sweep_on(torch.device("cuda")) == [64]
    with pytest.raises(ValueError, match="latency_sweep"):
        Params(evaluate={"latency_sweep": [0]})


def test_compiled_latency_is_timed_on_the_compiled_model():
    """torch.compile (TorchInductor, on this CPU through its C++ compiler): same outputs, its own latencies."""
    from pruning.latency import compiled
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(compiled(model)(x), model(x), atol=1e-5)
    result = pruning.evaluate(model, None, x[:1], latency_batch=2, repeats=2, compile=True)
    assert result["compiled_latency_b1"] > 0 and result["compiled_latency_b2"] > 0


def test_a_model_torch_compile_cannot_compile_is_one_line(monkeypatch):
    from pruning.latency import compiled, measure

    def refuse(*_, **__):  # isolates the report: what a backend without a C++ compiler raises on the first call
        def run(*_):
            raise RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error\n  many lines")
        return run
    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.raises(PruneBenchError) as error:
        measure(compiled(torch.nn.Linear(3, 3)), torch.randn(1, 3), repeats=1)
    assert "\n" not in str(error.value) and "torch.compile could not compile" in str(error.value)


# --------------------------------------------------------------------------- the CPU paths of the GPU options
def test_mixed_precision_training_runs_and_learns(digits):
    """bf16 autocast (the CPU's; a GPU's is the same code path) trains: the loss falls, the weights stay fp32."""
    torch.manual_seed(0)
    model = pruning.create_model("resnet20", 10, 3, 8)
    loader = digits.loader("train", 64, shuffle=True)
    history = pruning.train(model, loader, pruning.Recipe(epochs=3, lr=0.05), precision="bf16")
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_channels_last_model_prunes_and_trains_like_a_contiguous_one(digits):
    torch.manual_seed(0)
    plain = pruning.create_model("resnet20", 10, 3, 8)
    nhwc = dev.place(pruning.create_model("resnet20", 10, 3, 8), torch.device("cpu"), channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.parameters())
    widths = []
    for model in (plain, nhwc):
        model, report = pruning.prune(model, digits.spec.example_inputs(), "l2", 2.0, steps=20)
        widths.append([c["channels"] for c in report.channels])
        pruning.train(model, digits.loader("train", 64), pruning.Recipe(epochs=1, lr=0.01))
    assert widths[0] == widths[1]


def test_batches_follow_the_model_and_loaders_pin_only_for_a_gpu(digits):
    model = pruning.create_model("resnet20", 10, 3, 8)
    x, y = next(dev.batches_on(model, digits.loader("test", 16)))
    assert x.device == y.device == dev.device_of(model)
    assert digits.loader("test", 16).pin_memory == torch.cuda.is_available()


# --------------------------------------------------------------------------- the paper's protocol
def write_cifar100(root, train: int = 1000, test: int = 100):
    """A tiny folder in the layout of torchvision's cifar-100-python (pickled dicts with bytes keys): 10 training
    images a class, so that the stratified 10% validation split has one of each."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", train), ("test", test)):
        labels = [i % 100 for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels],
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, f, protocol=2)
    return folder


def test_the_paper_profile_is_pruningbench_cifar100_setting():
    from flows.config import load_params
    from pruning.train import lr_factor
    p = load_params(ROOT / "params.yaml", "paper")
    ft = p.finetune
    assert (p.model.name, p.data.batch_size) == ("resnet18", 128)
    assert (ft.epochs, ft.lr, ft.optimizer, ft.momentum, ft.weight_decay, ft.schedule, ft.milestones) == \
        (100, 0.01, "sgd", 0.9, 5e-4, "multistep", [0.6, 0.8])
    recipe = ft.recipe()
    assert {m for m in range(1, recipe.epochs) if lr_factor(recipe, m, 1) != lr_factor(recipe, m - 1, 1)} == \
        {60, 80}  # the lr drops after epochs 60 and 80, as the paper's
    assert (p.sparsify.epochs, p.sparsify.reg) == (100, 5e-4)
    assert (p.prune.scope, p.prune.protect, p.benchmark.speedups) == ("protected", 0.1, [2, 4, 8])


def test_a_paper_profile_trial_starts_on_cifar100_at_tiny_scale(tmp_path):
    from flows import stages
    from flows.config import load_params
    write_cifar100(tmp_path / "raw")
    tiny = {"data": {"dataset": "cifar100", "root": str(tmp_path / "raw"), "prepared_dir": str(tmp_path / "data"),
                     "batch_size": 32},
            "pretrain": {"epochs": 1}, "sparsify": {"epochs": 1}, "finetune": {"epochs": 1},
            "prune": {"steps": 5, "calibration_batches": 1}, "evaluate": {"latency_repeats": 1, "latency_batch": 2}}
    params = load_params(ROOT / "params.yaml", "paper", tiny)
    stages.prepare(params)
    dense = stages.dense_baseline(params, cache_dir=tmp_path / "cache")
    record = stages.run_trial(params, "l2+growing_reg", 2.0, "protected", dense, tmp_path / "out.pt",
                              tmp_path / "work")
    assert record.acc_dense is not None and record.speedup >= 2.0
    assert record.recipe["dataset"] == "cifar100" and record.recipe["device"].startswith("cpu")
    assert len(record.sparsify_history) == 1 and len(record.finetune_history) == 1
