"""Pruning-ratio allocations (the library side of tuning): layer groups, scaling to a target, absolute ratios."""
import copy

import pytest
import torch
from torch import nn

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
    dense = pruning.count_macs_params(model, x)
    low, high = reachable_speedup(model, x, 0.05, 10), reachable_speedup(model, x, 0.3, 10)
    assert low > high > 4
    assert pruning.count_macs_params(model, x) == dense  # the probes pruned copies, not the model


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


class TwoKinds(nn.Module):
    """Two kinds of DepGraph group: ``a1``/``a2`` (conv -> BN -> conv) and ``b1``/``b2`` (conv -> conv, no BN)."""

    def __init__(self):
        super().__init__()
        self.a1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.a2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.b1 = nn.Conv2d(16, 16, 3, padding=1)
        self.b2 = nn.Conv2d(16, 16, 3, padding=1)
        self.b3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.a1(x)))
        x = torch.relu(self.bn2(self.a2(x)))
        x = torch.relu(self.b3(torch.relu(self.b2(torch.relu(self.b1(x))))))
        return self.fc(x.mean((2, 3)))


class ScoreByLayer:
    """An importance giving every channel of a group its root layer's base score plus a small seeded spread."""

    def __init__(self, model, base):
        self.base = {getattr(model, name): value for name, value in base.items()}
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, group):
        n = len(group[0].idxs)
        return self.base.get(group[0].dep.target.module, 0.0) + 0.1 * torch.rand(n, generator=self.generator)


@pytest.mark.parametrize("scope", ["global", "isomorphic"])
def test_isomorphic_ranks_each_group_only_against_groups_of_its_structure(scope):
    """Every a-channel outscores every b-channel.  A global ranking takes b-channels only; the isomorphic scope
    ranks a1 against a2 and b1 against b2, so each kind loses channels, each from its lower-scored member."""
    torch.manual_seed(0)
    model = TwoKinds().eval()
    base = {"a1": 40.0, "a2": 30.0, "b1": 20.0, "b2": 10.0, "b3": 0.0}
    pruning.prune(model, torch.randn(1, 3, 8, 8), ScoreByLayer(model, base), 1.5, scope, steps=20, num_classes=10)
    lost = {name: 16 - getattr(model, name).out_channels for name in base}
    if scope == "global":
        assert lost["a1"] == lost["a2"] == 0 and lost["b2"] > 0
    else:
        assert lost["a2"] > 0 and lost["b2"] > 0  # each kind gives channels, whatever the other kind scores
        assert lost["a1"] < lost["a2"] and lost["b1"] < lost["b2"]
