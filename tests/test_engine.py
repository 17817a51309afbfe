"""The pruning engine: speedup targets per scope, protection, checkpoints, data, reproducibility."""
import math
import pickle

import numpy as np
import pytest
import torch

import pruning
from pruning.errors import PruneBenchError

TOLERANCE = 1.15  # achieved speedup must land in [target, target * TOLERANCE]


def fresh(name, input_size=32):
    torch.manual_seed(0)
    return pruning.create_model(name, 10, 3, input_size)


@pytest.mark.parametrize("model_name", ["resnet20", "vgg19"])
@pytest.mark.parametrize("scope", pruning.SCOPES)
def test_each_scope_reaches_the_speedup_target(model_name, scope):
    model = fresh(model_name)
    example = torch.randn(1, 3, 32, 32)
    model, report = pruning.prune(model, example, "l2", 2.0, scope=scope, steps=60)
    assert report.target_reached
    assert 2.0 <= report.speedup <= 2.0 * TOLERANCE
    macs, params = pruning.count_macs_params(model, example)
    assert macs == report.macs_pruned and report.macs_dense / macs == pytest.approx(report.speedup)
    assert params == report.params_pruned < report.params_dense
    assert model(example).shape == (1, 10)


def test_protected_keeps_ten_percent_of_every_group():
    model = fresh("resnet20")
    dense = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    model, report = pruning.prune(model, torch.randn(1, 3, 32, 32), "l1", 12.0, scope="protected", steps=60)
    assert report.speedup > 4  # deep enough that protection matters
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.out_channels >= math.ceil(0.1 * dense[name]), name


def test_local_prunes_every_layer_by_the_same_ratio():
    model = fresh("vgg19")
    dense = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    pruning.prune(model, torch.randn(1, 3, 32, 32), "l2", 2.0, scope="local", steps=50)
    ratios = [m.out_channels / d for m, d in zip([m for m in model.modules() if isinstance(m, torch.nn.Conv2d)], dense)]
    assert max(ratios) - min(ratios) < 0.05


def test_unreachable_target_warns_and_reports_the_achieved_value():
    model = fresh("resnet20")
    with pytest.warns(UserWarning, match="not reachable"):
        _, report = pruning.prune(model, torch.randn(1, 3, 32, 32), "l2", 500.0, scope="protected", steps=20)
    assert not report.target_reached and 1 < report.speedup < 500 and report.warnings


@pytest.mark.parametrize("kwargs, message", [
    ({"speedup": 1.0}, "speedup must be > 1"),
    ({"scope": "everywhere"}, "unknown scope"),
    ({"method": "nope"}, "unknown method"),
    ({"method": "group_norm"}, "is a sparsifier"),
    ({"method": "taylor"}, "needs calibration data"),
])
def test_bad_prune_arguments_raise_one_clear_error(kwargs, message):
    args = {"method": "l2", "speedup": 2.0, "scope": "protected", **kwargs}
    with pytest.raises(PruneBenchError, match=message):
        pruning.prune(fresh("resnet20"), torch.randn(1, 3, 32, 32), **args)


def test_bn_method_on_a_model_without_bn_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
    with pytest.raises(PruneBenchError, match="no BatchNorm"):
        pruning.prune(model, torch.randn(1, 3, 32, 32), "bnscale", 2.0)


def test_data_driven_criteria_calibrate_once_and_prune(digits):
    loader = digits.loader("train", 32, shuffle=True)
    for method in ("taylor", "hessian", "obdc"):
        model, report = pruning.prune(fresh("resnet20"), digits.spec.example_inputs(), method, 2.0, data=loader,
                                      calibration_batches=2, steps=30)
        assert report.target_reached and report.calibration_samples == 64
        assert all(p.grad is None for p in model.parameters())  # calibration statistics are cleaned up


def test_pruned_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model, _ = pruning.prune(fresh("resnet20"), torch.randn(1, 3, 32, 32), "fpgm", 2.5, steps=30)
    model, _ = pruning.prune(model, torch.randn(1, 3, 32, 32), "l2", 1.3, steps=30)  # a second round stacks
    path = pruning.save_checkpoint(tmp_path / "p.pt", model, model_name="resnet20", num_classes=10, in_chans=3,
                                   input_size=32)
    payload = torch.load(path, weights_only=True)  # loads without unpickling code
    assert payload["pruning_history"]
    loaded, meta = pruning.load_checkpoint(path)
    x = torch.randn(4, 3, 32, 32)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x)) and meta["model"] == "resnet20"


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(PruneBenchError, match="does not exist"):
        pruning.load_checkpoint(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(PruneBenchError, match="corrupt"):
        pruning.load_checkpoint(corrupt)
    path = pruning.save_checkpoint(tmp_path / "r20.pt", fresh("resnet20"), model_name="resnet20", num_classes=10,
                                   in_chans=3, input_size=32)
    with pytest.raises(PruneBenchError, match="not a 'vgg19'"):
        pruning.load_checkpoint(path, expect_model="vgg19")
    with pytest.raises(PruneBenchError, match="100 classes|has 10 classes"):
        pruning.load_checkpoint(path, expect_classes=100)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.weight"] = torch.zeros(3, 3)
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(PruneBenchError, match="does not match"):
        pruning.load_checkpoint(tmp_path / "mismatch.pt")


def test_digits_split_is_fixed_stratified_and_real(digits):
    sizes = {s: len(digits.splits[s][1]) for s in ("train", "val", "test")}
    assert sizes == {"train": 988, "val": 269, "test": 540}  # 55/15/30 of 1797
    for split in ("train", "val", "test"):
        assert set(np.unique(digits.splits[split][1])) == set(range(10))
    again = pruning.load_data("digits", input_size=32)
    assert np.array_equal(again.splits["test"][0], digits.splits["test"][0])
    assert digits.splits["train"][0].shape[1:] == (3, 32, 32)
    native = pruning.load_data("digits")  # the default: the scans' own 8x8, nothing interpolated
    assert native.spec.input_size == 8 and native.splits["train"][0].shape[1:] == (3, 8, 8)
    assert np.array_equal(native.splits["test"][1], digits.splits["test"][1])


def test_materialized_data_reloads_identically(digits, tmp_path):
    folder = pruning.materialize(digits, tmp_path / "digits")
    back = pruning.load_data(str(folder))
    assert back.spec == digits.spec
    assert all(np.array_equal(back.splits[s][0], digits.splits[s][0]) for s in ("train", "val", "test"))


def test_cifar_loader_reads_the_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(20)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    bundle = pruning.load_data("cifar10", root=tmp_path)
    assert bundle.spec.num_classes == 10 and len(bundle.splits["test"][1]) == 20
    assert len(bundle.splits["train"][1]) + len(bundle.splits["val"][1]) == 100
    with pytest.raises(PruneBenchError, match="not found"):
        pruning.load_data("cifar100", root=tmp_path)


def test_imagefolder_loader(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    bundle = pruning.load_data(f"imagefolder:{tmp_path / 'imgs'}", input_size=16)
    assert bundle.spec.num_classes == 2 and bundle.splits["train"][0].shape[1:] == (3, 16, 16)
    assert sum(len(bundle.splits[s][1]) for s in ("train", "val", "test")) == 20
    with pytest.raises(PruneBenchError, match="does not exist"):
        pruning.load_data(f"imagefolder:{tmp_path / 'nowhere'}")


def test_training_is_reproducible(digits):
    def run():
        pruning.seed_everything(0)
        model = fresh("resnet20")
        loader = digits.loader("val", 64, shuffle=True, augment=True, seed=0)
        pruning.train(model, loader, pruning.Recipe(epochs=1, lr=0.05))
        return model.state_dict()
    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_improves_a_pruned_model(digits):
    pruning.seed_everything(0)
    model = fresh("resnet20")
    train_loader = digits.loader("train", 64, shuffle=True)
    pruning.train(model, train_loader, pruning.Recipe(epochs=1, lr=0.1))
    pruning.prune(model, digits.spec.example_inputs(), "random", 3.0, steps=20)
    before = pruning.accuracy(model, digits.loader("val", 256))
    pruning.finetune(model, train_loader, pruning.Recipe(epochs=1, lr=0.05))
    assert pruning.accuracy(model, digits.loader("val", 256)) > before


def test_group_lists_coupled_layers():
    groups = pruning.group(fresh("resnet20"), torch.randn(1, 3, 32, 32))
    shortcut = next(g for g in groups if g["root"].endswith("layers.2.0.shortcut.0") or "layers.2.0.shortcut.0" in g["members"])
    assert "layers.2.2.conv2" in shortcut["members"]  # the residual stream prunes as one group
    assert all("fc" != g["root"] for g in groups)  # the classifier is protected
