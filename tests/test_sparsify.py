"""Sparse training does something: each sparsifier shrinks the channels it penalises and changes what gets pruned.

Every pairing is compared with a *control*: the same dense copy trained the same way (epochs, lr, batches, no
weight decay) without the penalty, then pruned by the criterion alone.  Both assertions compare the sparse-trained
model with that control, so each fails when the regulariser is switched off (``reg=0``, and ``delta_reg=0`` for
growing_reg: the two trainings are then the same, bit for bit; checked for all five pairings).
"""
import copy
from itertools import islice

import numpy as np
import pytest
import torch

import pruning
from flows.sparsity_plot import sparsity_plot
from pruning.sparsity import group_norms, relative_norms, sparsity_share, sparsity_summary

RECIPE = pruning.Recipe(epochs=2, lr=0.05)
# strong on purpose: 8 steps of training instead of the benchmark's 100
STRENGTH = {"bnscale_reg": {"reg": 0.5}, "group_lasso": {"reg": 0.5}, "group_norm": {"reg": 0.1},
            "growing_reg": {"reg": 0.2, "delta_reg": 0.5}}
PAIRINGS = ["bnscale+bnscale_reg", "bnscale+group_lasso", "l2+group_norm", "l2+growing_reg", "l2+group_lasso"]


@pytest.fixture(scope="module")
def setup(one_thread):
    bundle = pruning.load_data("digits", input_size=8)
    batches = list(islice(iter(bundle.loader("train", 32)), 4))
    torch.manual_seed(0)
    dense = pruning.create_model("resnet20", 10, 3, 8)
    pruning.train(dense, batches, pruning.Recipe(epochs=2, lr=0.1))  # BN scales no longer all 1
    x = bundle.spec.example_inputs()
    control = _trained(dense, x, "bnscale_reg", batches, {"reg": 0.0})  # no penalty: plain training
    return dense, control, batches, x


def _trained(dense, x, sparsifier, batches, options, criterion="l2"):
    model = copy.deepcopy(dense)
    torch.manual_seed(0)
    pruning.sparsify(model, x, sparsifier, batches, RECIPE, criterion=criterion, **options)
    return model


def _pruned(model, x, criterion):
    """(per-layer widths, pruned channel indices) after pruning a copy to 2x MACs."""
    _, report = pruning.prune(copy.deepcopy(model), x, criterion, 2.0, "protected", steps=10)
    return {r["layer"]: r["channels"] for r in report.channels}, report.pruning_history


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_sparsifier_shrinks_its_groups_and_changes_the_allocation(setup, pairing):
    dense, control, batches, x = setup
    criterion, sparsifier = pairing.split("+")
    kinds = pruning.get_method(sparsifier).build().penalises
    model = _trained(dense, x, sparsifier, batches, STRENGTH[sparsifier], criterion)
    # (a) the penalised channel norms end smaller than after the same training without the penalty
    sparse_norms, control_norms = np.concatenate(group_norms(model, x, kinds)), np.concatenate(
        group_norms(control, x, kinds))
    assert np.median(sparse_norms / control_norms) < 0.9  # measured 0.72 (bnscale_reg) .. 0.79 (group_norm)
    # (b) pruning the sparse-trained copy to the same target keeps other widths, and other channels, than pruning
    # the control.  Not against the dense model: on it plain training alone already moves some widths.
    widths, history = _pruned(model, x, criterion)
    control_widths, control_history = _pruned(control, x, criterion)
    assert widths != control_widths and history != control_history


def test_defaults_come_from_the_sparsifier_when_not_given(setup):
    """``reg=None`` (what ``sparsify.reg: null`` passes) is the sparsifier's own default, not zero."""
    dense, _, batches, x = setup
    default = pruning.get_method("group_norm").defaults()["reg"]
    assert default > 0
    implicit = _trained(dense, x, "group_norm", batches, {"reg": None, "delta_reg": None})
    explicit = _trained(dense, x, "group_norm", batches, {"reg": default})
    for a, b in zip(implicit.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)


def test_sparsity_share_on_hand_made_norms():
    groups = [np.array([10.0, 5.0, 0.05, 0.0]), np.array([1.0, 0.009, 0.5])]
    # below 1% of the group's largest: 0.05 and 0.0 of 10 (0.05 < 0.1), 0.009 of 1
    assert sparsity_share(groups) == pytest.approx(3 / 7)
    assert sparsity_share(groups, 0.6) == pytest.approx(5 / 7)
    # the largest is per group: pooled with the first group's 10, the second group's 0.5 would count too
    assert sparsity_share(groups, 0.1) == pytest.approx(3 / 7)
    assert sparsity_share(np.array([2.0, 1.0])) == 0.0  # one array is one group
    assert sparsity_share([np.zeros(3)]) == 1.0          # an all-zero group is all sparse
    np.testing.assert_allclose(relative_norms(groups), [1, 0.5, 0.005, 0, 1, 0.009, 0.5])
    summary = sparsity_summary([np.ones(4)], groups)
    assert summary["sparsity_before"] == 0.0 and summary["sparsity_after"] == pytest.approx(3 / 7)
    assert summary["sparsity_after_10pct"] == pytest.approx(3 / 7)
    assert summary["rel_norm_p10_before"] == 1.0 and "norm_ratio_median" not in summary  # other groups: no ratio
    same = sparsity_summary(groups, [g / 2 for g in groups])
    assert same["norm_ratio_median"] == pytest.approx(0.5) and same["sparsity_after"] == same["sparsity_before"]


def test_group_norms_match_group_lasso_and_skip_the_classifier(setup):
    dense, _, _, x = setup
    from pruning.methods.group_lasso import GroupLassoPruner
    model = copy.deepcopy(dense)
    pruner = GroupLassoPruner(model, x, importance=pruning.get_method("l2").build(), ignored_layers=[model.fc])
    ours = group_norms(dense, x)
    theirs = [n.detach().numpy() for n in pruner.group_norms()]
    assert len(ours) == len(theirs) and all(np.allclose(a, b) for a, b in zip(ours, theirs))
    assert 10 not in {len(n) for n in ours}  # the classifier's 10 outputs are no group
    assert sum(len(n) for n in ours) < sum(m.out_channels for m in dense.modules()
                                           if isinstance(m, torch.nn.Conv2d))  # residual groups couple layers
    bn_only = group_norms(dense, x, ("bn",))
    assert all((n > 0).all() for n in bn_only) and len(bn_only) == len(ours)


def test_sparsity_plot_writes_one_png(tmp_path):
    rng = np.random.default_rng(0)
    before = [rng.uniform(0.5, 1.0, 16), rng.uniform(0.5, 1.0, 32)]
    after = [np.r_[0.0, 1e-3, rng.uniform(0.01, 1.0, 14)], rng.uniform(0.05, 1.0, 32)]
    out = sparsity_plot(before, after, tmp_path / "sparsity.png", title="l2+group_norm")
    assert out == tmp_path / "sparsity.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sparsity.png"]  # no temporary file left behind
