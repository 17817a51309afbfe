"""YOLOv8 through ultralytics: C2f rewrite, pruning to a MACs target with the Detect head protected, checkpoint
reload, finetuning of the pruned object by ultralytics' trainer, validation mAP, the shapes data set, bad input,
and the offline/quiet setup."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import pruning
from pruning import PruneBenchError, detection
from pruning.detection import yolo
from helpers import randomize_bn

IMGSZ = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return detection.load_detection_data("shapes", tmp_path_factory.mktemp("data"), imgsz=IMGSZ)





def _head_widths(model):
    head = yolo.detect_head(model)
    return [m.out_channels for m in head.modules() if isinstance(m, torch.nn.Conv2d)]


def test_c2f_rewrite_gives_identical_outputs():
    yolo.ultralytics_setup()
    from ultralytics.nn.modules import C2f
    from ultralytics.nn.tasks import DetectionModel
    torch.manual_seed(0)
    ref = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    randomize_bn(ref)
    split = copy.deepcopy(ref)
    assert yolo.replace_c2f(split) == 8
    assert not any(type(m) is C2f for m in split.modules())
    x = torch.randn(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        a, b = ref(x), split(x)
    assert torch.equal(a[0], b[0])


def test_prune_yolov8n_to_2x_head_protected_and_reload(tmp_path):
    torch.manual_seed(0)
    model = pruning.create_model("yolov8n", 3, 3, IMGSZ)
    head = _head_widths(model)
    model, report = yolo.prune_yolo(model, IMGSZ, "l2", 2.0, steps=30)
    assert report.target_reached and report.speedup >= 2.0
    x = torch.randn(1, 3, IMGSZ, IMGSZ)
    macs, _ = pruning.count_macs_params(model, x)
    assert report.macs_dense / macs >= 2.0
    assert _head_widths(model) == head  # Detect outputs untouched
    with torch.no_grad():
        out = model(x)[0]
    path = yolo.save_yolo(tmp_path / "y.pt", model, "yolov8n", 3, IMGSZ)
    loaded, _ = yolo.load_yolo(path, expect_model="yolov8n", expect_classes=3)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], out)


def test_taylor_calibrates_on_detection_loss_then_finetune_and_val(shapes, tmp_path):
    torch.manual_seed(0)
    model = pruning.create_model("yolov8n", shapes.num_classes, 3, IMGSZ)
    model, report = yolo.prune_yolo(model, IMGSZ, "taylor", 2.0, data_yaml=shapes.yaml, steps=20,
                                    calibration_batches=1, batch=8)
    assert report.calibration_samples == 8 and report.speedup >= 2.0
    pruned_macs = report.macs_pruned
    tuned = yolo.finetune_yolo(model, shapes.yaml, IMGSZ, 1, tmp_path, batch=16)
    x = torch.randn(1, 3, IMGSZ, IMGSZ)
    assert pruning.count_macs_params(tuned, x)[0] == pruned_macs  # the pruned object was trained, not a rebuild
    # ultralytics' EMA copy comes back frozen; it must stay prunable (DepGraph traces through autograd)
    assert all(p.requires_grad for n, p in tuned.named_parameters() if ".dfl" not in n)
    again, rep = yolo.prune_yolo(copy.deepcopy(tuned), IMGSZ, "l2", 1.2, steps=20)
    assert rep.speedup >= 1.2
    metrics = yolo.evaluate_yolo(tuned, shapes.yaml, IMGSZ, tmp_path, repeats=2)
    assert 0.0 <= metrics["map50_95"] <= metrics["map50"] <= 1.0
    assert metrics["macs"] == pruned_macs


@pytest.mark.parametrize("name", ["yolov8s", "yolov8m"])
def test_larger_yolos_prune_finetune_and_validate(name, shapes, tmp_path):
    """yolov8s and yolov8m go through the same three steps (at 32 pixels: the smallest size their stride takes)."""
    torch.manual_seed(0)
    model = pruning.create_model(name, shapes.num_classes, 3, 32)
    head = _head_widths(model)
    model, report = yolo.prune_yolo(model, 32, "l2", 2.0, steps=20)
    assert report.target_reached and _head_widths(model) == head
    tuned = yolo.finetune_yolo(model, shapes.yaml, 32, 1, tmp_path, batch=16)
    metrics = yolo.evaluate_yolo(tuned, shapes.yaml, 32, tmp_path, repeats=2)
    assert metrics["macs"] == report.macs_pruned and 0.0 <= metrics["map50"] <= 1.0


def test_shapes_dataset_is_deterministic(tmp_path, shapes):
    again = detection.make_shapes(tmp_path / "again")
    first = shapes.yaml.parent
    for split, count in (("train", 240), ("val", 60)):
        labels = sorted((first / "labels" / split).glob("*.txt"))
        assert len(labels) == count
        assert all(f.read_text() == (again / "labels" / split / f.name).read_text() for f in labels[:20])
    spec = yaml.safe_load(shapes.yaml.read_text())
    assert spec["names"] == {0: "square", 1: "circle", 2: "triangle"}


def test_dataset_yaml_with_missing_paths(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    path = tmp_path / "coco.yaml"
    path.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/train", "val": "images/val2017",
                                    "names": {0: "person"}, "download": "https://example.com/coco.zip"}))
    with pytest.raises(PruneBenchError, match="missing on disk: val .*images/val2017"):
        detection.load_detection_data(str(path), tmp_path / "cache")
    with pytest.raises(PruneBenchError, match="does not exist"):
        detection.load_detection_data(str(tmp_path / "nope.yaml"))


def test_local_dataset_yaml_is_normalised(tmp_path, shapes):
    folder = shapes.yaml.parent
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"path": str(folder), "train": "images/train", "val": "images/val",
                                    "names": ["a", "b", "c"], "download": "https://example.com/x.zip"}))
    data = detection.load_detection_data(str(path), tmp_path / "cache", imgsz=IMGSZ)
    spec = yaml.safe_load(data.yaml.read_text())
    assert "download" not in spec and spec["val"] == str(folder / "images" / "val") and data.num_classes == 3


def test_bad_image_size_and_bad_model():
    model = pruning.create_model("yolov8n", 3, 3, IMGSZ)
    with pytest.raises(PruneBenchError, match="multiple of the stride"):
        yolo.prune_yolo(model, 50, "l2", 2.0)
    with pytest.raises(PruneBenchError, match="unknown YOLO model"):
        yolo.build_yolo("yolov9x", 3)


def test_setup_makes_ultralytics_offline_without_any_environment_of_ours(tmp_path):
    """conftest sets YOLO_OFFLINE itself, so the setup's own effect is checked in a process without it, on a
    machine that looks connected (every DNS lookup answers): ultralytics must still consider itself offline."""
    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), YOLO_CONFIG_DIR=str(tmp_path))
    code = ("import socket; socket.getaddrinfo = lambda *a, **k: [('looks', 'connected')]; "
            "from pruning.models.yolo import ultralytics_setup; ultralytics_setup(); "
            "from ultralytics import utils; print(utils.ONLINE, utils.is_online())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]  # no connectivity check, no download attempt


def test_offline_and_quiet_setup():
    yolo.ultralytics_setup()
    from ultralytics import utils
    assert all(utils.SETTINGS.get(k) is False for k in ("mlflow", "dvc", "wandb", "comet", "clearml", "sync"))
    assert (utils.USER_CONFIG_DIR / "Arial.ttf").is_file()  # the font check finds it locally: no download

    class Holder:  # a trainer-like object with an MLflow callback added by ultralytics
        callbacks = {"on_train_start": []}
    from ultralytics.utils.callbacks import base
    holder = Holder()
    holder.callbacks = base.get_default_callbacks()
    fake = lambda trainer: None
    fake.__module__ = "ultralytics.utils.callbacks.mlflow"
    holder.callbacks["on_pretrain_routine_end"].append(fake)
    yolo.drop_integration_callbacks(holder)
    assert fake not in holder.callbacks["on_pretrain_routine_end"]


# --------------------------------------------------------------------------- the benchmark flow on detection
YOLO_QUICK = {"model": {"name": "yolov8n"}, "data": {"dataset": "shapes", "batch_size": 16},
              "pretrain": {"epochs": 1}, "finetune": {"epochs": 1}, "prune": {"steps": 20, "calibration_batches": 1},
              "evaluate": {"latency_repeats": 3}, "benchmark": {"methods": ["l1", "taylor"], "speedups": [2]}}


def test_yolo_benchmark_runs_through_the_flow_mlflow_and_leaderboard(tmp_path):
    """`prunebench benchmark` on yolov8n/shapes: the same flow, cached trials, MLflow runs and leaderboard as a
    classifier's, ranked by mAP50-95 with mAP50, MACs and latency beside it."""
    import json

    from helpers import client, make_project
    proj, env = make_project(tmp_path, YOLO_QUICK)

    def benchmark(*args):
        return subprocess.run(["prunebench", "benchmark", *args], cwd=proj, env=env, capture_output=True, text=True,
                              timeout=900)
    first = benchmark()
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((proj / "reports" / "benchmark.json").read_text())
    assert (summary["task"], summary["metric"]) == ("detect", "mAP50-95 (%)")
    assert summary["recipe"]["recipe"] == "yolo" and summary["recipe"]["input_size"] == 64
    trials = summary["trials"]
    assert [t["method"] for t in trials] == ["l1", "taylor"] and all(t["status"] == "ok" for t in trials)
    for t in trials:
        assert t["task"] == "detect" and t["acc_finetuned"] == pytest.approx(100 * t["map50_95_finetuned"])
        assert 0 <= t["map50_95_finetuned"] <= t["map50_finetuned"] <= 1
        assert t["speedup"] >= 2 and t["latency_speedup"] > 0 and t["macs_pruned"] < t["macs_dense"]
    assert trials[1]["calibration_samples"] > 0  # taylor calibrated on the detection loss
    board = (proj / "reports" / "leaderboard.md").read_text()
    assert "Dense mAP50-95 (%)" in board and "mAP50@2x" in board and "MACs / latency speedup@2x" in board
    c = client(proj)
    exp = c.get_experiment_by_name("prunebench/shapes/yolov8n")
    runs = {r.data.tags.get("mlflow.runName"): r for r in c.search_runs([exp.experiment_id])}
    child = runs["l1@2x/protected/s0"]
    assert child.info.status == "FINISHED" and child.data.params["task"] == "detect"
    assert child.data.metrics["map50_95_finetuned"] == pytest.approx(trials[0]["map50_95_finetuned"])
    assert {"speedup", "latency_speedup", "map50_finetuned", "seconds_total"} <= set(child.data.metrics)
    again = benchmark()  # same key, same result: nothing trains twice and no new run is logged
    assert again.returncode == 0 and "nothing to compute" in again.stderr
    assert len(c.search_runs([exp.experiment_id])) == len(runs)


@pytest.mark.parametrize("method, says", [
    ("l2+group_norm", "sparse training (group_norm) is not available for YOLO"),
    ("hrank", "method 'hrank' is calibrated on classification outputs"),
])
def test_yolo_benchmark_refuses_methods_yolo_cannot_run_before_any_work(method, says, cli):
    root = Path(__file__).resolve().parents[1]
    code, _, err = cli("benchmark", "--params", root / "params.yaml", "--profile", "yolo", "--methods", f"l1,{method}")
    assert code == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
