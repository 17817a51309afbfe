"""Latency as a target: honest timing (medians, quartiles, pinned threads, interleaved rounds), the per-layer latency
table and its disk cache, importance per unit of latency saved, pruning to a measured latency or params target,
channel rounding, and the bad input of all of them.  Whether targets are met fast and closely enough is measured by
benchmarks/latency_target.py, not here."""
import copy
import json
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

import pruning
from pruning import PruneBenchError, latency
from pruning.steps import check_round_to

pytestmark = pytest.mark.usefixtures("one_thread")


def resnet20():
    torch.manual_seed(0)
    return pruning.create_model("resnet20", 10, 3, 32).eval()


EXAMPLE = torch.randn(1, 3, 32, 32)


def test_measure_reports_median_quartiles_and_pins_threads_then_restores_them():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    before = torch.get_num_threads()
    lat = latency.measure(model, torch.randn(4, 3, 16, 16), repeats=9, threads=2)
    assert lat.threads == 2 and lat.batch == 4 and lat.repeats == 9
    assert 0 < lat.q1 <= lat.median <= lat.q3 and lat.spread >= 0
    assert torch.get_num_threads() == before


def test_compare_interleaves_rounds_and_reports_their_range():
    model = resnet20()
    check = latency.compare(model, copy.deepcopy(model), latency.batch_of(EXAMPLE, 2), rounds=3, repeats=3)
    assert check["rounds"] == 3 and check["batch"] == 2
    assert check["speedup_min"] <= check["speedup"] <= check["speedup_max"]
    assert check["dense"] > 0 and check["pruned"] > 0


FAULTS_PER_FORWARD = """
import resource, sys, torch
from torch import nn
from pruning import latency
layer = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
x = torch.randn(32, 16, 32, 32)  # 2 MiB activations: above glibc's initial mmap threshold
print(latency.measure(layer, x, repeats=3).repeats and latency.steady_allocator())
with torch.no_grad():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        layer(x)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_timed_forward_passes_reuse_their_memory_instead_of_faulting_pages_in():
    # without fixed thresholds each such pass faulted 1000-2000 fresh pages in on this machine (2-4x its time);
    # with them, 0-0.05 a pass, and once 26 (a busy machine reclaiming pages)
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_FORWARD], capture_output=True, text=True, check=True)
    allocator, faults = out.stdout.split()
    assert allocator == "glibc-fixed"
    assert float(faults) < 200


def test_table_is_measured_once_then_read_from_its_cache(tmp_path):
    sig = latency.signature(nn.Conv2d(16, 32, 3, padding=1), (16, 8, 8))
    table = latency.LatencyTable(batch=2, threads=1, path=tmp_path)
    widths, seconds = table.curve(sig, "out")
    assert widths == latency.grid(32) == [4, 8, 12, 16, 20, 24, 28, 32]
    assert table.measured == len(widths) and all(s > 0 for s in seconds)
    again = latency.LatencyTable(batch=2, threads=1, path=tmp_path)
    assert again.curve(sig, "out") == (widths, seconds) and again.measured == 0  # from disk: nothing timed
    other = latency.LatencyTable(batch=8, threads=1, path=tmp_path)  # another batch is another table
    assert other.path != table.path and not other.entries
    assert table.seconds(sig, "out", 10) == pytest.approx((seconds[1] + seconds[2]) / 2)  # interpolated
    assert table.slope(sig, "out", 32) >= 0


def test_a_channels_cost_is_the_curves_robust_slope_not_a_neighbours_step():
    """CPU latency steps with SIMD alignment and noise: a flat or doubled last eighth must not make a layer's
    channels look free or twice as costly (the old neighbour difference read 0 here)."""
    sig = latency.signature(nn.Conv2d(16, 32, 3, padding=1), (16, 8, 8))
    table = latency.LatencyTable(batch=1, threads=1)
    widths = latency.grid(32)
    seconds = [1e-6 * w for w in widths]
    seconds[-1] = seconds[-2]  # a flat step at the top
    seconds[3] *= 3            # and one noisy point
    table.entries[json.dumps([sig, "out"])] = {"widths": widths, "seconds": seconds}
    assert table.slope(sig, "out", 32) == pytest.approx(1e-6, rel=0.2)
    assert table.slope(sig, "out", 12) == pytest.approx(1e-6, rel=0.01)  # the lowest three points: exact
    table.entries[json.dumps([sig, "in"])] = {"widths": widths, "seconds": [2e-6 - 1e-8 * w for w in widths]}
    assert table.slope(sig, "in", 32) == 0.0  # a falling curve is noise: never a negative cost


def test_damaged_cache_is_measured_again(tmp_path):
    table = latency.LatencyTable(batch=1, threads=1, path=tmp_path)
    table.path.write_text("{not json")
    sig = latency.signature(nn.Linear(8, 8), (4, 8))
    assert latency.LatencyTable(batch=1, threads=1, path=tmp_path).curve(sig, "in")[0] == latency.grid(8)


class SteepTable(latency.LatencyTable):
    """A table whose seconds are known: every channel of the layers in ``expensive`` costs 3x the others."""

    def __init__(self, expensive=()):
        super().__init__()
        self.expensive = expensive

    def slope(self, sig, side, width):
        return 3.0 if sig in self.expensive else 1.0


def _pruned_widths(model, table, ratio=0.3):
    pruner_model = copy.deepcopy(model)
    imp = pruning.get_method("l2").build(num_classes=10)
    import torch_pruning as tp
    pruner = tp.pruner.BasePruner(pruner_model, EXAMPLE, importance=imp, pruning_ratio=ratio, global_pruning=True,
                                  max_pruning_ratio=0.5, ignored_layers=[pruner_model.fc])
    if table is not None:
        pruner.estimate_importance = latency.LatencyWeighted(pruner.estimate_importance, table, pruner_model,
                                                             EXAMPLE)
    pruner.step()
    return {name: m.out_channels for name, m in pruner_model.named_modules() if isinstance(m, nn.Conv2d)}


def test_importance_per_latency_prunes_the_expensive_layers_first():
    model = resnet20()
    shapes = latency.layer_inputs(model, EXAMPLE)
    expensive_layer = dict(model.named_modules())["layers.2.0.conv1"]
    table = SteepTable({latency.signature(expensive_layer, shapes[expensive_layer])})
    # a tenth of the channels: fewer than the expensive group holds (Torch-Pruning skips a group wholly below the
    # global threshold rather than empty it)
    plain, weighted = _pruned_widths(model, None, 0.1), _pruned_widths(model, table, 0.1)
    assert weighted["layers.2.0.conv1"] < plain["layers.2.0.conv1"]
    assert sum(weighted.values()) > sum(plain.values()) - 5  # about the same channel count, spent elsewhere


def test_where_every_layers_channel_costs_the_same_the_criterions_own_ranking_stands():
    """The criterion averages a group's scores over its layers, so the cost it is divided by is the group's seconds
    per channel averaged over its layers too: a residual channel reaching nine convolutions must not read as nine
    times as costly as an inner one while its importance counts each layer once (it was then stripped first)."""
    model = resnet20()
    assert _pruned_widths(model, SteepTable()) == _pruned_widths(model, None)


def test_prune_to_a_latency_target_reports_its_confirming_timing(tmp_path):
    model = resnet20()
    _, report = pruning.prune(model, EXAMPLE, "l2", 1.3, "protected", steps=40, target="latency",
                              latency_batch=2, latency_cache=tmp_path)
    check = report.latency
    assert report.target == "latency" and report.achieved == check["speedup"] and check["batch"] == 2
    assert check["rounds"] == 5 and check["speedup_min"] <= check["speedup"] <= check["speedup_max"]
    assert report.target_reached == (report.achieved >= 1.3)
    assert report.speedup > 1 and report.macs_pruned < report.macs_dense  # MACs are still reported
    assert list(tmp_path.glob("latency-*.json"))  # the layer table, cached for the next prune
    with torch.no_grad():
        assert model(EXAMPLE).shape == (1, 10)


def test_a_latency_targeted_step_removes_only_its_latency_budget(tmp_path):
    """A step's channel share can cost far more latency than the tolerance: the cap keeps the least important
    channels (importance per second) whose predicted seconds fit half the remaining gap."""
    import torch_pruning as tp

    from pruning.steps import LatencyCap
    model = resnet20()
    pruner = tp.pruner.BasePruner(model, EXAMPLE, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, iterative_steps=1,
                                  ignored_layers=[model.fc])
    weighted = latency.LatencyWeighted(pruner.estimate_importance, latency.LatencyTable(1, 1, tmp_path), model,
                                       EXAMPLE)
    pruner.estimate_importance = weighted
    groups = list(pruner.step(interactive=True))
    seconds = lambda gs: sum(weighted.cost(g) * len(g[0].idxs) for g in gs)
    cap = LatencyCap(weighted, round_to=None)
    cap.update(relative=0.5, goal=2.0, dense_seconds=1.0)
    assert cap.seconds == pytest.approx(0.005)  # at the target: the smallest step
    dense = seconds(groups) * 4
    cap.update(relative=0.55, goal=2.0, dense_seconds=dense)
    assert cap.seconds == pytest.approx(0.5 * (0.55 - 0.5) * dense)  # half the remaining gap
    kept = [pruner.DG.get_pruning_group(*spec) for spec in cap.trim(pruner, groups)]
    assert 0 < seconds(kept) <= cap.seconds < seconds(groups)
    chosen = {(id(g[0].dep.target.module), int(i)) for g in kept for i in g[0].idxs}
    scores = {(id(g[0].dep.target.module), int(i)): float(s) for g in groups
              for i, s in zip(g[0].idxs, weighted(tp_full(pruner, g))[g[0].idxs])}
    assert max(scores[c] for c in chosen) <= min(v for c, v in scores.items() if c not in chosen)


def tp_full(pruner, g):
    """The group over every channel of its root layer."""
    dep = g[0].dep
    return pruner.DG.get_pruning_group(dep.target.module, dep.handler, list(range(dep.target.module.out_channels)))


def test_an_untimed_channels_cost_is_fixed_once_and_skips_grouped_layers(tmp_path):
    """A group whose timing shows no fall costs the least a tabulated output channel costs: one value whatever
    was scored before, measured without building grouped convolutions at widths their groups do not divide."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)).eval()
    example = torch.randn(1, 3, 8, 8)
    weighted = latency.LatencyWeighted(lambda g: None, latency.LatencyTable(1, 1, tmp_path), model, example)
    floor = weighted.floor()
    assert 0 < floor == weighted.floor()
    timed = [json.loads(k) for k in weighted.table.entries]
    assert {side for _, side in timed} == {"out"} and {sig[7] for sig, _ in timed} == {1}


def test_prune_to_a_params_target():
    _, report = pruning.prune(resnet20(), EXAMPLE, "l2", 2.0, "protected", target="params")
    assert report.target == "params" and report.params_dense / report.params_pruned == pytest.approx(report.achieved)
    assert report.achieved >= 2.0 and report.target_reached


def test_round_to_keeps_every_pruned_width_a_multiple():
    model = resnet20()
    _, report = pruning.prune(model, EXAMPLE, "l2", 2.0, "protected", round_to=8)
    widths = [m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name != "conv1"]
    assert report.round_to == 8 and report.speedup >= 2
    assert all(w % 8 == 0 for w in widths), widths


def test_round_to_wider_than_a_layer_and_unknown_target_are_refused():
    model = resnet20()
    with pytest.raises(PruneBenchError, match=r"round_to 32 is larger than layer .*'s 16 channels"):
        pruning.prune(model, EXAMPLE, "l2", 2.0, round_to=32)
    with pytest.raises(PruneBenchError, match="unknown target 'wall'"):
        pruning.prune(model, EXAMPLE, "l2", 2.0, target="wall")
    import torch_pruning as tp
    pruner = tp.pruner.BasePruner(model, EXAMPLE, importance=tp.importance.GroupMagnitudeImportance(),
                                  pruning_ratio=0.1)
    with pytest.raises(PruneBenchError, match="positive channel multiple"):
        check_round_to(pruner, 0)


def test_unreachable_latency_target_and_bad_round_to_exit_2_before_any_work(cli, tmp_path):
    code, _, err = cli("prune", "--model", "resnet20", "--dataset", "digits", "--method", "l2", "--speedup", "500",
                       "--target", "latency")
    assert code == 2 and "latency speedup 500x is unreachable for resnet20" in err and "Traceback" not in err
    code, _, err = cli("prune", "--model", "resnet20", "--dataset", "digits", "--method", "l2", "--speedup", "2",
                       "--round-to", "64")
    assert code == 2 and "round_to 64 is larger than layer" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("prune", "--model", "resnet20", "--dataset", "digits", "--method", "l2", "--speedup", "2",
                       "--target", "wall")
    assert code == 2 and "unknown target 'wall'" in err
    assert not (tmp_path / "models").exists()  # the command runs in tmp_path: nothing was trained or written


# --------------------------------------------------------------------------- where the model will run: ONNX
def test_pruned_model_exports_to_onnx_and_runs_the_same_in_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    model = resnet20()
    dense_path = pruning.save_checkpoint(tmp_path / "dense.pt", model, model_name="resnet20", num_classes=10,
                                         in_chans=3, input_size=32)
    pruning.prune(model, EXAMPLE, "l2", 2.0, round_to=8)
    pruned_path = pruning.save_checkpoint(tmp_path / "pruned.pt", model, model_name="resnet20", num_classes=10,
                                          in_chans=3, input_size=32)
    onnx_dense = pruning.export_weights(dense_path, tmp_path / "dense.onnx")
    onnx_pruned = pruning.export_weights(pruned_path, tmp_path / "pruned.onnx")
    images = torch.randn(3, 3, 32, 32)  # another batch size than the export's: the batch axis is dynamic
    session = latency.onnx_session(onnx_pruned, threads=1)
    out = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(images).numpy(), atol=1e-4)
    check = latency.compare(onnx_dense, onnx_pruned, images, rounds=2, repeats=3, threads=1)
    assert check["speedup_min"] <= check["speedup"] <= check["speedup_max"] and check["threads"] == 1


def test_export_command_times_the_onnx_file_beside_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from flows.cli import app
    path = pruning.save_checkpoint(tmp_path / "m.pt", resnet20(), model_name="resnet20", num_classes=10, in_chans=3,
                                   input_size=32)
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "PyTorch" in result.output and "ONNX Runtime" in result.output and (tmp_path / "m.onnx").is_file()
    again = CliRunner().invoke(app, ["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx2")])
    assert again.exit_code == 2 and "or .onnx" in again.output


# --------------------------------------------------------------------------- through the commands
LATENCY_PROFILE = {"data": {"input_size": 32}, "pretrain": {"epochs": 1}, "finetune": {"epochs": 1},
                   "prune": {"steps": 25, "calibration_batches": 1, "target": "latency", "latency_batch": 4},
                   "evaluate": {"latency_repeats": 3},
                   "benchmark": {"methods": ["l2", "random"], "speedups": [1.3]}}


def test_latency_target_through_prune_and_benchmark(tmp_path):
    """The issue's check: ``prunebench prune --target latency --json`` reports a measured latency speedup that an
    independent timing of the saved checkpoint confirms; a latency-targeted benchmark ranks its methods at equal
    measured latency and says so.  The tolerance is wide: how closely targets land is benchmarks' business."""
    import subprocess

    from helpers import BIN, make_project
    proj, env = make_project(tmp_path, LATENCY_PROFILE)
    run = lambda *args: subprocess.run([str(BIN / "prunebench"), *args], cwd=proj, env=env, capture_output=True,
                                       text=True)
    bench = run("benchmark")
    assert bench.returncode == 0, bench.stderr[-2000:]
    summary = json.loads((proj / "reports" / "benchmark.json").read_text())
    assert summary["target"] == "latency" and summary["latency_batch"] == 4
    for t in summary["trials"]:
        assert t["status"] == "ok" and t["target"] == "latency" and t["latency_check"]["batch"] == 4
        assert t["achieved"] == t["latency_check"]["speedup"]
        assert t["achieved"] >= 1.3 or any("not reachable" in w for w in t["warnings"])
    board = (proj / "reports" / "leaderboard.md").read_text()
    assert "pruned to the same measured latency (batch 4) speedup" in board

    proc = run("prune", "--method", "l2", "--speedup", "1.3", "--json", "--out", "pruned.pt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    assert record["target"] == "latency" and record["achieved"] >= 1.3 and record["target_reached"]
    pruned, _ = pruning.load_checkpoint(proj / "pruned.pt")
    dense, _ = pruning.load_checkpoint(next((proj / "models" / "cache").glob("dense-resnet20-*.pt")))
    inputs = latency.batch_of(torch.randn(1, 3, 32, 32), 4)
    check = latency.compare(dense, pruned, inputs, rounds=5, repeats=10, threads=record["latency_check"]["threads"])
    assert check["speedup"] > 1.1, (check, record["latency_check"])
