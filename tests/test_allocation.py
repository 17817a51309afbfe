"""Pruning-ratio allocations (the library side of tuning): layer groups, scaling to a target, absolute ratios."""
import copy

import pytest
import torch

import pruning
from pruning.allocation import group_widths, layer_groups, ratio_dict, reachable_speedup, scalable


def resnet20():
    torch.manual_seed(0)
    return pruning.create_model("resnet20", 10, 1, 32), torch.randn(1, 1, 32, 32)


@pytest.mark.parametrize("name, expected", [
    ("resnet20", ["layers.0", "layers.1", "layers.2"]),
    ("vgg19", ["features.0..features.10", "features.14..features.23", "features.27..features.36",
               "features.40..features.49"]),
    ("timm/deit_tiny_patch16_224", ["blocks.0..blocks.2", "blocks.3..blocks.5", "blocks.6..blocks.8",
                                    "blocks.9..blocks.11"]),
])
def test_layer_groups_follow_the_architecture_and_cover_every_prunable_layer(name, expected):
    model = pruning.create_model(name, 10, 3, 32)
    groups = layer_groups(model, 10)
    assert list(groups) == expected
    covered = [m for modules in groups.values() for m in modules]
    head = pruning.models.classifier_layers(model, 10)[0]
    prunable = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                and m not in set(head.modules())]
    assert len(covered) == len(set(map(id, covered))) == len(prunable)  # a partition: each layer exactly once


def test_a_scaled_allocation_meets_the_target_and_prunes_the_favoured_group_hardest():
    kept = {}
    for favoured in ("layers.0", "layers.2"):
        model, x = resnet20()
        groups = layer_groups(model, 10)
        before = group_widths(groups)
        shape = {g: (1.0 if g == favoured else 0.3) for g in groups}
        _, report = pruning.prune(model, x, "l2", 3.0, "protected", protect=0.1, steps=60, num_classes=10,
                                  pruning_ratio_dict=ratio_dict(groups, scalable(shape)))
        assert report.target_reached and 3.0 <= report.speedup < 3.6
        after = group_widths(groups)
        kept[favoured] = {g: after[g] / before[g] for g in groups}
    assert kept["layers.0"]["layers.0"] < kept["layers.2"]["layers.0"]
    assert kept["layers.2"]["layers.2"] < kept["layers.0"]["layers.2"]


def test_absolute_ratios_without_a_target_run_every_step_to_each_group_ratio():
    model, x = resnet20()
    groups = layer_groups(model, 10)
    before = group_widths(groups)
    ratios = {"layers.0": 0.0, "layers.1": 0.25, "layers.2": 0.5}
    _, report = pruning.prune(model, x, "l1", None, "protected", protect=0.1, steps=5, num_classes=10,
                              pruning_ratio_dict=ratio_dict(groups, ratios))
    assert report.steps_taken == 5 and report.speedup_target is None and report.target_reached
    after = group_widths(groups)
    kept = {g: after[g] / before[g] for g in groups}
    assert kept["layers.0"] == 1.0 and kept["layers.1"] > kept["layers.2"]
    # a group's ratio counts coupled channels once (Torch-Pruning groups); layer widths count every coupled layer
    for g in ("layers.1", "layers.2"):
        assert kept[g] == pytest.approx(1 - ratios[g], abs=0.15)


def test_reachable_speedup_falls_as_the_protection_floor_rises():
    model, x = resnet20()
    low, high = reachable_speedup(model, x, 0.05, 10), reachable_speedup(model, x, 0.3, 10)
    assert low > high > 4
    assert pruning.count_macs_params(model, x)[0] > 0  # the model itself was not pruned


def test_allocation_mistakes_are_named():
    model, x = resnet20()
    groups = layer_groups(model, 10)
    with pytest.raises(pruning.PruneBenchError, match="missing"):
        ratio_dict(groups, {"layers.0": 0.5})
    with pytest.raises(pruning.PruneBenchError, match="positive"):
        scalable({"layers.0": 0.0, "layers.1": 1.0})
    other = copy.deepcopy(model)  # a ratio dict built from another object must not silently do nothing
    with pytest.raises(pruning.PruneBenchError, match="not part of the model"):
        pruning.prune(other, x, "l1", 2.0, pruning_ratio_dict=ratio_dict(groups, {g: 1.0 for g in groups}))
