"""Nothing loaded from disk runs code, and a bad input file is one clear line.

Every loader gets a malicious file: a pickle whose ``__reduce__`` would create a marker file (``os.system`` or
``builtins.exec``).  Loading must raise :class:`PruneBenchError` naming the file, and the marker must not exist.
Legitimate files of each kind (an ultralytics ``.pt`` saved the way ultralytics saves one, a CIFAR folder in the
python-pickle layout, ultralytics' own label cache) still load, identically.
"""
import builtins
import copy
import io
import os
import pickle

import numpy as np
import pytest
import torch

import pruning
from pruning import PruneBenchError, detection
from pruning.detection import yolo
from pruning.data import MIN_IMAGES_PER_CLASS

IMGSZ = 64


class Payload:
    """Unpickling this runs ``how`` (os.system or builtins.exec), which creates ``marker``."""

    def __init__(self, marker, how="system"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch '{self.marker}'",)
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


PAYLOADS = ["system", "exec"]


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def evil_torch_file(path, marker, how="system", legacy=False):
    """A malicious ``.pt`` written by torch.save, shaped like a checkpoint (zip, or torch's legacy format)."""
    payload = {"format": "prunebench-checkpoint/1", "model": Payload(marker, how), "state_dict": {}}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_the_payload_is_live_when_unpickled_plainly(tmp_path):
    """The malicious files below really run code when loaded the unsafe way, so the refusals are meaningful."""
    for how in PAYLOADS:
        marker = tmp_path / f"marker-{how}"
        torch.load(evil_torch_file(tmp_path / f"{how}.pt", marker, how), weights_only=False)
        assert marker.exists()


# --------------------------------------------------------------------------- prunebench checkpoints and weights
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("how", PAYLOADS)
def test_checkpoint_loaders_refuse_code(tmp_path, how, legacy):
    marker = tmp_path / "marker"
    path = evil_torch_file(tmp_path / "evil.pt", marker, how, legacy)
    for load in (pruning.read_checkpoint, pruning.load_checkpoint,
                 lambda p: pruning.load_weights(pruning.create_model("resnet20", 10), p)):
        with pytest.raises(PruneBenchError) as error:
            load(path)
        message = one_line(error)
        assert str(path) in message and "refused" in message
        assert ("posix.system" if how == "system" else "exec") in message
    assert not marker.exists()


def test_weights_loader_refuses_code_in_a_pth_and_a_fake_safetensors(tmp_path):
    marker = tmp_path / "marker"
    pth = evil_torch_file(tmp_path / "evil.pth", marker)
    fake = tmp_path / "evil.safetensors"
    fake.write_bytes(pickle.dumps(Payload(marker)))
    for path in (pth, fake):
        with pytest.raises(PruneBenchError) as error:
            pruning.load_weights(pruning.create_model("resnet20", 10), path)
        assert str(path) in one_line(error)
    assert not marker.exists()


def test_state_dicts_still_load_from_pt_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    source = pruning.create_model("resnet20", 10)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        target = pruning.load_weights(pruning.create_model("resnet20", 10), tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


@pytest.mark.parametrize("content, reason", [
    (b"epoch,loss\n1,0.5\n2,0.4\n", "contains text"),
    (b"", "the file is empty"),
    (bytes(range(256)) * 4, "not written by torch.save"),
])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, content, reason):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    for load in (pruning.load_checkpoint,
                 lambda p: yolo.load_ultralytics_weights(yolo.build_yolo("yolov8n", 3), p)):
        with pytest.raises(PruneBenchError) as error:
            load(path)
        assert one_line(error).startswith(f"{path} is not a checkpoint: ") and reason in str(error.value)


def test_a_truncated_checkpoint_says_so(tmp_path):
    path = pruning.save_checkpoint(tmp_path / "r20.pt", pruning.create_model("resnet20", 10), model_name="resnet20",
                                   num_classes=10, in_chans=3, input_size=32)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PruneBenchError) as error:
        pruning.load_checkpoint(path)
    assert one_line(error) == f"{path} is not a checkpoint: the archive is truncated or corrupt (copy or save it again)"


def test_a_weights_mismatch_names_the_first_problem(tmp_path):
    torch.save(pruning.create_model("resnet56", 10).state_dict(), tmp_path / "r56.pt")
    with pytest.raises(PruneBenchError) as error:
        pruning.load_weights(pruning.create_model("resnet20", 10), tmp_path / "r56.pt")
    assert one_line(error) == (f"cannot load weights from {tmp_path / 'r56.pt'}: first mismatch: layers.0.3.conv1.weight "
                               f"is in the file but not in the model (216 mismatched keys in all)")


# --------------------------------------------------------------------------- ultralytics weights
def _reference_yolo():
    """A yolov8n DetectionModel as ultralytics' trainer holds it: C2f layers, hyperparameters, class names."""
    yolo.ultralytics_setup()
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", ch=3, nc=3, verbose=False)
    for p in model.parameters():
        p.data.normal_(0, 0.1)  # weights unlike any fresh build
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.args = get_cfg(overrides={"imgsz": IMGSZ})  # what DetectionTrainer attaches (an IterableSimpleNamespace)
    model.names = {0: "square", 1: "circle", 2: "triangle"}
    return model


def _save_like_ultralytics_trainer(model, path):
    """The dict ``BaseTrainer.save_model`` writes (ultralytics/engine/trainer.py): the EMA in fp16, no ``model``,
    optimizer state, train args and metadata; ``best_fitness`` as a numpy scalar, as older trainers stored it."""
    ema = copy.deepcopy(model).half()
    ema.criterion = None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sum(p.square().sum() for p in model.parameters()).backward()  # momentum buffers for the optimizer state
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"epoch": 0, "best_fitness": np.float64(0.25), "stopper": {"best_fitness": 0.25, "best_epoch": 0},
                "model": None, "ema": ema, "updates": 3, "modelopt": None, "optimizer": optimizer.state_dict(),
                "scaler": {}, "train_args": vars(model.args),
                "train_metrics": {"metrics/mAP50(B)": 0.5, "fitness": 0.25},
                "train_results": {"epoch": [1], "train/box_loss": [1.5]}, "date": "2026-01-01T00:00:00+00:00",
                "version": "8.4.190", "git": {"root": None, "branch": None, "commit": None},
                "license": "AGPL-3.0 (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com"},
               buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_ultralytics_checkpoints_load_through_the_safe_path_with_identical_weights(tmp_path):
    from ultralytics.utils.torch_utils import strip_optimizer
    reference = _reference_yolo()
    expected = copy.deepcopy(reference).half().float()  # ultralytics stores fp16
    yolo.replace_c2f(expected)
    trainer_file = _save_like_ultralytics_trainer(reference, tmp_path / "last.pt")
    released = tmp_path / "best.pt"
    strip_optimizer(trainer_file, str(released))  # ultralytics' own final form: model = EMA, no optimizer
    x = torch.randn(1, 3, IMGSZ, IMGSZ)
    for path in (trainer_file, released):
        loaded = yolo.load_ultralytics_weights(yolo.build_yolo("yolov8n", 3), path)
        assert loaded.state_dict().keys() == expected.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), expected.state_dict().values()))
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x)[0], expected.eval()(x)[0])


def test_ultralytics_checkpoint_with_other_classes_is_one_line(tmp_path):
    path = _save_like_ultralytics_trainer(_reference_yolo(), tmp_path / "last.pt")
    with pytest.raises(PruneBenchError) as error:
        yolo.load_ultralytics_weights(yolo.build_yolo("yolov8n", 5), path)
    assert one_line(error).startswith(f"cannot load YOLO weights from {path} into yolov8n with 5 classes: first "
                                      f"mismatch: model.22.cv3.0.2.weight has shape (3, 64, 1, 1) in the file")


@pytest.mark.parametrize("how", PAYLOADS)
def test_ultralytics_loader_refuses_code(tmp_path, how):
    marker = tmp_path / "marker"
    reference = _reference_yolo()
    path = tmp_path / "evil.pt"
    torch.save({"model": reference, "ema": None, "train_args": {"hook": Payload(marker, how)}}, path)
    with pytest.raises(PruneBenchError) as error:
        yolo.load_ultralytics_weights(yolo.build_yolo("yolov8n", 3), path)
    assert str(path) in one_line(error) and "refused" in str(error.value)
    assert not marker.exists()


def test_the_yolo_prune_command_refuses_code_in_one_line(cli, tmp_path):
    marker = tmp_path / "marker"
    evil_torch_file(tmp_path / "evil.pt", marker)
    code, _, err = cli("prune", "--model", "yolov8n", "--dataset", "shapes", "--method", "l2", "--speedup", "2",
                       "--checkpoint", "evil.pt")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: refused to load evil.pt: it asks for 'posix.system'")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["evil", "text"])
def test_a_yolo_model_checkpoint_in_params_is_loaded_safely(tmp_path, kind):
    """``model.checkpoint`` in params.yaml takes the same path: prunebench checkpoint first, else ultralytics."""
    from flows import stages
    from flows.config import load_params
    marker, path = tmp_path / "marker", tmp_path / "dense.pt"
    if kind == "evil":
        evil_torch_file(path, marker)
    else:
        path.write_text("weights: yolov8n.pt\n")
    params = load_params(tmp_path / "params.yaml", None, {
        "model": {"name": "yolov8n", "checkpoint": str(path)},
        "data": {"dataset": "shapes", "prepared_dir": str(tmp_path / "data")}})
    with pytest.raises(PruneBenchError) as error:
        stages.detection_trial(params, "l2", 2.0, "protected", None, tmp_path / "out.pt", tmp_path / "work")
    expected = "refused to load" if kind == "evil" else f"{path} is not a checkpoint: it contains text"
    assert expected in one_line(error) and not marker.exists() and not (tmp_path / "out.pt").exists()


def test_ultralytics_label_caches_are_read_without_unpickling_code(tmp_path):
    """ultralytics reads ``labels/<split>.cache`` with ``np.load(allow_pickle=True)``: a crafted one must not run,
    and the dataset still builds (the cache is rescanned and rewritten); a genuine cache reads back unchanged."""
    data = detection.load_detection_data("shapes", tmp_path, imgsz=IMGSZ)
    cache = data.yaml.parent / "labels" / "val.cache"
    next(iter(yolo._detection_batches(data.yaml, IMGSZ, 8, "val")))  # ultralytics writes the genuine cache
    genuine = np.load(cache, allow_pickle=True).item()
    from ultralytics.data.utils import load_dataset_cache_file
    again = load_dataset_cache_file(cache)
    assert again["hash"] == genuine["hash"] and len(again["labels"]) == len(genuine["labels"]) == 60
    assert all(np.array_equal(a["bboxes"], b["bboxes"]) for a, b in zip(again["labels"], genuine["labels"]))
    marker = tmp_path / "marker"
    crafted = np.empty((), dtype=object)
    crafted[()] = {"version": genuine["version"], "hash": genuine["hash"], "labels": Payload(marker)}
    with open(cache, "wb") as f:
        np.save(f, crafted, allow_pickle=True)
    batch = next(iter(yolo._detection_batches(data.yaml, IMGSZ, 8, "val")))
    assert len(batch["img"]) == 8 and not marker.exists()


# --------------------------------------------------------------------------- CIFAR
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar10(root, per_file=20):
    """A tiny folder in the layout of torchvision's cifar-10-batches-py: pickled dicts with bytes keys."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in CIFAR10_FILES:
        batches[name] = {b"batch_label": f"{name} of 6".encode(), b"labels": [i % 10 for i in range(per_file)],
                         b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                         b"filenames": [f"img_{i}.png".encode() for i in range(per_file)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=2)  # the protocol of the distributed (Python 2) files
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return folder, batches


def test_cifar_folder_loads_with_the_restricted_unpickler(tmp_path):
    _, batches = write_cifar10(tmp_path)
    bundle = pruning.load_data("cifar10", root=tmp_path)
    images, labels = bundle.splits["test"]
    expected = batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    assert np.array_equal(images, expected) and labels.tolist() == batches["test_batch"][b"labels"]
    assert len(bundle.splits["train"][1]) + len(bundle.splits["val"][1]) == 100


@pytest.mark.parametrize("how", PAYLOADS)
def test_a_malicious_cifar_batch_is_refused(tmp_path, how):
    folder, _ = write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Payload(marker, how), b"labels": []}, f, protocol=2)
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data("cifar10", root=tmp_path)
    message = one_line(error)
    assert message.startswith(f"refused to load CIFAR file {folder / 'data_batch_2'}: it asks for ")
    assert ("posix.system" if how == "system" else "exec") in message
    assert not marker.exists()


def test_a_half_present_or_damaged_cifar_folder_is_one_line(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data("cifar10", root=tmp_path)
    assert f"cifar10 is incomplete: {folder} lacks data_batch_3 " in one_line(error)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_4").read_bytes()[:3000])  # truncated copy
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data("cifar10", root=tmp_path)
    assert one_line(error).startswith(f"CIFAR file {folder / 'data_batch_3'} is corrupt")
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data("cifar100", root=tmp_path)
    assert "cifar100 not found: expected" in one_line(error)


# --------------------------------------------------------------------------- prepared data
def test_prepared_data_with_an_object_array_is_refused(digits, tmp_path):
    folder = pruning.materialize(digits, tmp_path / "digits")
    marker = tmp_path / "marker"
    images, labels = digits.splits["val"]
    crafted = np.empty(1, dtype=object)
    crafted[0] = Payload(marker)
    np.savez(folder / "val.npz", images=crafted, labels=labels)
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data(str(folder))
    assert "val.npz: Object arrays cannot be loaded" in one_line(error)
    assert not marker.exists()


# --------------------------------------------------------------------------- imagefolder
def write_images(folder, classes, per_class, size=(12, 12)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in classes:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    return folder


def test_imagefolder_with_a_corrupt_image_names_the_file(tmp_path):
    folder = write_images(tmp_path / "imgs", ["cat", "dog"], 8)
    bad = folder / "dog" / "3.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data(f"imagefolder:{folder}", input_size=16)
    assert one_line(error) == f"imagefolder: {bad} is not a readable image (unknown or damaged image format)"


def test_imagefolder_too_small_for_the_split_says_how_many_are_needed(tmp_path):
    folder = write_images(tmp_path / "imgs", ["cat", "dog"], MIN_IMAGES_PER_CLASS)
    write_images(folder, ["bird"], 2)
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data(f"imagefolder:{folder}", input_size=16)
    assert f"needs at least {MIN_IMAGES_PER_CLASS} images per class; too few in bird (2)" in one_line(error)
    write_images(folder, ["bird"], MIN_IMAGES_PER_CLASS)  # the fewest that always split: it now loads
    bundle = pruning.load_data(f"imagefolder:{folder}", input_size=16)
    assert bundle.spec.num_classes == 3 and sum(len(y) for _, y in bundle.splits.values()) == 3 * MIN_IMAGES_PER_CLASS


def test_imagefolder_with_one_class_is_refused_in_both_layouts(tmp_path):
    flat = write_images(tmp_path / "flat", ["cat"], 10)
    split = tmp_path / "split"
    for part in ("train", "val"):
        write_images(split / part, ["cat"], 4)
    for folder, where in ((flat, flat), (split, split / "train")):
        with pytest.raises(PruneBenchError) as error:
            pruning.load_data(f"imagefolder:{folder}", input_size=16)
        assert one_line(error).startswith(f"imagefolder {where} has 1 class folder (cat): a classification dataset "
                                          f"needs at least 2 classes")


def test_imagefolder_splits_must_share_their_classes(tmp_path):
    folder = tmp_path / "split"
    write_images(folder / "train", ["cat", "dog", "fox"], 3)
    write_images(folder / "val", ["cat", "fox"], 3)  # labels would shift: fox would become class 1
    with pytest.raises(PruneBenchError) as error:
        pruning.load_data(f"imagefolder:{folder}", input_size=16)
    assert one_line(error) == (f"imagefolder {folder}: val/ must have the same class folders as train/ (lacks dog)")
