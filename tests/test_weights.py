"""Bring your own weights, tested with files prunebench itself wrote.

A timm model is pretrained (one epoch), exported to ``.safetensors`` and ``.pth`` (timm's own key names: timm's
loader reads them) and loaded back as ``model.checkpoint``: the same weights and the same test accuracy.  A YOLO
checkpoint is exported to an ultralytics ``.pt`` (ultralytics' ``C2f`` again, identical outputs) and read back
through the allow-list.  A file that does not fit names its first mismatched key, in one line (exit 2 on the
command line), and bad export input writes nothing.
"""
import copy

import pytest
import torch
import yaml
from typer.testing import CliRunner

import pruning
from flows import stages
from flows.cli import app
from flows.config import load_params
from pruning import PruneBenchError
from pruning.detection.yolo import save_yolo
from pruning.models import yolo
from pruning.safeload import torch_load_safely
from helpers import randomize_bn

MODEL, SIZE = "timm/resnet10t", 16  # digits at 16x16: one epoch takes seconds
IMGSZ = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def params_for(work, checkpoint=None):
    model = {"name": MODEL, **({"checkpoint": str(checkpoint)} if checkpoint else {})}
    return load_params(work / "none.yaml", overrides={"model": model, "pretrain": {"epochs": 1},
                                                      "data": {"input_size": SIZE, "prepared_dir": str(work / "data")}})


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def same_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A timm model pretrained one epoch by the pretrain stage: its checkpoint, and the stage's result."""
    work = tmp_path_factory.mktemp("dense")
    result = stages.pretrain(params_for(work), work / "dense.pt")
    return work / "dense.pt", result


@pytest.fixture(scope="module")
def other_classes(tmp_path_factory):
    """The same timm model with 5 classes instead of digits' 10, exported: a file that does not fit."""
    work = tmp_path_factory.mktemp("other")
    path = pruning.save_checkpoint(work / "five.pt", pruning.create_model(MODEL, 5, 3, SIZE), model_name=MODEL,
                                   num_classes=5, in_chans=3, input_size=SIZE)
    return pruning.export_weights(path, work / "five.safetensors")


# --------------------------------------------------------------------------- timm: export, load back
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_exported_weights_load_back_as_the_dense_model(dense, tmp_path, suffix):
    checkpoint, first = dense
    assert len(first["history"]) == 1  # the first one trained
    weights = pruning.export_weights(checkpoint, tmp_path / f"weights{suffix}")
    params = params_for(tmp_path, weights)
    stages.preflight(params)
    second = stages.pretrain(params, tmp_path / "dense.pt")
    assert second["history"] == []  # loaded, not trained
    want = pruning.read_checkpoint(checkpoint)["state_dict"]
    assert same_state(pruning.read_checkpoint(tmp_path / "dense.pt")["state_dict"], want)
    assert second["acc_dense"] == first["acc_dense"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_exported_weights_are_in_timms_naming(dense, tmp_path, suffix):
    """timm's own loader (strict) reads the file into a plain ``timm.create_model``: the key names are timm's."""
    import timm
    weights = pruning.export_weights(dense[0], tmp_path / f"weights{suffix}")
    model = timm.create_model(MODEL.removeprefix("timm/"), pretrained=False, num_classes=10)
    timm.models.load_checkpoint(model, str(weights), strict=True)
    assert same_state(model.state_dict(), pruning.read_checkpoint(dense[0])["state_dict"])


def test_export_command_writes_the_file(dense, tmp_path):
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(dense[0]), "--out", str(tmp_path / "w.pth")])
    assert result.exit_code == 0, result.output
    model = pruning.load_weights(pruning.create_model(MODEL, 10, 3, SIZE), tmp_path / "w.pth")
    assert same_state(model.state_dict(), pruning.read_checkpoint(dense[0])["state_dict"])


# --------------------------------------------------------------------------- a file that does not fit
def test_another_class_count_names_the_first_mismatched_key(other_classes):
    with pytest.raises(PruneBenchError) as error:
        pruning.load_weights(pruning.create_model(MODEL, 10, 3, SIZE), other_classes, MODEL)
    assert one_line(error) == (f"cannot load weights from {other_classes} into {MODEL}: first mismatch: fc.weight "
                               f"has shape (5, 512) in the file, (10, 512) in the model (2 mismatched keys in all)")


def test_tampered_files_name_the_first_mismatched_key(dense, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(str(pruning.export_weights(dense[0], tmp_path / "w.safetensors")))
    renamed = {("stem.weight" if k == "conv1.0.weight" else k): v for k, v in state.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    cut = {**state, "layer1.0.conv1.weight": state["layer1.0.conv1.weight"][:8]}
    torch.save(cut, tmp_path / "cut.pth")
    extra = {**state, "head.extra": torch.zeros(3)}
    torch.save(extra, tmp_path / "extra.pth")
    expected = {"renamed.safetensors": "conv1.0.weight is missing from the file (2 mismatched keys in all)",
                "cut.pth": "layer1.0.conv1.weight has shape (8, 64, 3, 3) in the file, (64, 64, 3, 3) in the model",
                "extra.pth": "head.extra is in the file but not in the model"}
    for name, problem in expected.items():
        with pytest.raises(PruneBenchError) as error:
            pruning.load_weights(pruning.create_model(MODEL, 10, 3, SIZE), tmp_path / name)
        assert one_line(error) == f"cannot load weights from {tmp_path / name}: first mismatch: {problem}"


def test_a_mismatch_on_the_command_line_is_one_line_and_exit_2(cli, other_classes, tmp_path):
    """``model.checkpoint`` is checked by the preflight of ``prunebench prune``, before any training."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"name": MODEL, "checkpoint": str(other_classes)},
                                                          "data": {"input_size": SIZE}}))
    code, out, err = cli("prune", "--method", "l2", "--speedup", "2", "--out", "pruned.pt", timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: cannot load weights from {other_classes} into {MODEL}: first mismatch: "
                               f"fc.weight has shape (5, 512)")
    assert not (tmp_path / "pruned.pt").exists()


# --------------------------------------------------------------------------- bad export input
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    model, _ = pruning.prune(pruning.create_model(MODEL, 10, 3, SIZE), torch.randn(1, 3, SIZE, SIZE), "l2", 1.5,
                             steps=2)
    return pruning.save_checkpoint(tmp_path_factory.mktemp("pruned") / "pruned.pt", model, model_name=MODEL,
                                   num_classes=10, in_chans=3, input_size=SIZE)


@pytest.mark.parametrize("source, out, message", [
    ("missing", "w.safetensors", "does not exist"),
    ("dense", "w.tflite", "cannot export to {out}: choose a .safetensors or .pth file (a .pt for YOLO models), "
                          "or .onnx"),
    ("yolo", "w.onnx", "ONNX export of YOLO models is ultralytics' own"),
    ("dense", "w.pt", f"{MODEL} exports to a .safetensors or .pth file (a .pt is prunebench's own format)"),
    ("pruned", "w.safetensors", f"holds a pruned {MODEL}: its shapes no longer fit the {MODEL} architecture"),
    ("yolo", "w.safetensors", "yolov8n exports to an ultralytics .pt file, not .safetensors"),
    ("yolo", "same", "would overwrite the checkpoint"),
])
def test_bad_export_input_is_one_line_exit_2_and_writes_nothing(request, tmp_path, source, out, message):
    checkpoint = {"missing": lambda: tmp_path / "missing.pt", "dense": lambda: request.getfixturevalue("dense")[0],
                  "pruned": lambda: request.getfixturevalue("pruned"),
                  "yolo": lambda: request.getfixturevalue("yolo_checkpoint")}[source]()
    target = checkpoint if out == "same" else tmp_path / out
    before = sorted(p.name for p in target.parent.iterdir())
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(target)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert message.format(out=target) in lines[0]
    assert sorted(p.name for p in target.parent.iterdir()) == before  # nothing written, not even a temporary file


# --------------------------------------------------------------------------- YOLO: an ultralytics .pt
def randomized_yolo(classes: int = 3):
    """yolov8n with random weights and BatchNorm statistics unlike a fresh build (so merging them is tested)."""
    torch.manual_seed(0)
    model = yolo.build_yolo("yolov8n", classes)
    randomize_bn(model)
    return model.eval()


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


@pytest.fixture(scope="module")
def yolo_checkpoint(tmp_path_factory):
    return save_yolo(tmp_path_factory.mktemp("yolo") / "dense.pt", randomized_yolo(), "yolov8n", 3, IMGSZ)


def test_restore_c2f_is_the_inverse_of_replace_c2f():
    from ultralytics.nn.modules import C2f
    from ultralytics.nn.tasks import DetectionModel
    split = randomized_yolo()
    x = torch.randn(2, 3, IMGSZ, IMGSZ)
    merged = copy.deepcopy(split)
    assert yolo.restore_c2f(merged) == 8
    assert not any(isinstance(m, yolo.C2fSplit) for m in merged.modules())
    assert sum(type(m) is C2f for m in merged.modules()) == 8
    assert torch.equal(outputs(merged, x), outputs(split, x))
    assert list(merged.state_dict()) == list(DetectionModel("yolov8n.yaml", nc=3, verbose=False).state_dict())
    assert yolo.replace_c2f(merged) == 8 and same_state(merged.state_dict(), split.state_dict())


def test_yolo_export_is_an_ultralytics_pt_with_identical_outputs(yolo_checkpoint, tmp_path):
    from ultralytics.nn.modules import C2f
    from ultralytics.nn.tasks import load_checkpoint as ultralytics_load
    path = pruning.export_weights(yolo_checkpoint, tmp_path / "yolov8n.pt")
    ckpt = torch_load_safely(path, yolo.ultralytics_globals())  # weights_only + the allow-list: nothing else inside
    assert ckpt["epoch"] == -1 and isinstance(ckpt["version"], str) and ckpt["ema"] is None
    assert sum(type(m) is C2f for m in ckpt["model"].modules()) == 8
    original, _ = pruning.load_checkpoint(yolo_checkpoint)
    x = torch.randn(2, 3, IMGSZ, IMGSZ)
    loaded = yolo.load_ultralytics_weights(yolo.build_yolo("yolov8n", 3), path)
    assert same_state(loaded.state_dict(), original.state_dict())
    assert torch.equal(outputs(loaded, x), outputs(original, x))
    by_ultralytics, _ = ultralytics_load(path)  # ultralytics' own loader reads it as one of its files
    assert torch.equal(outputs(by_ultralytics, x), outputs(original, x))


def test_yolo_export_command_and_another_class_count(yolo_checkpoint, tmp_path):
    path = tmp_path / "yolov8n.pt"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(yolo_checkpoint), "--out", str(path)])
    assert result.exit_code == 0, result.output
    with pytest.raises(PruneBenchError) as error:
        yolo.load_ultralytics_weights(yolo.build_yolo("yolov8n", 5), path)
    assert one_line(error) == (f"cannot load YOLO weights from {path} into yolov8n with 5 classes: first mismatch: "
                               f"model.22.cv3.0.2.weight has shape (3, 64, 1, 1) in the file, (5, 64, 1, 1) in the "
                               f"model (6 mismatched keys in all)")
