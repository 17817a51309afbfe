"""HRank, ThiNet, CP and the group-LASSO sparsifier against independent computations; pairings end to end."""
import copy
import json
from itertools import islice

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

import pruning
from pruning.methods.cp import CPImportance, lasso_path_scores
from pruning.methods.hrank import HRankImportance
from pruning.methods.thinet import ThiNetImportance
from pruning.methods.group_lasso import GroupLassoPruner, group_lasso_penalty


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():  # non-trivial BN so that ReLU zeroes parts of the maps
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(2)]
    return model, batches


def _pruner(model, importance):
    return tp.pruner.BasePruner(model, torch.randn(1, 3, 8, 8), importance=importance, pruning_ratio=0.5,
                                ignored_layers=[model.fc])


def _group(pruner, module):
    return pruner.DG.get_pruning_group(module, tp.prune_conv_out_channels, list(range(module.out_channels)))


def _contributions(model, batches):
    """Independent: Z[(n, o, l), c] = contribution of conv2's input channel c to its output entry (n, o, l)."""
    rows = []
    with torch.no_grad():
        for x, _ in batches:
            a = torch.relu(model.bn1(model.conv1(x)))
            u = F.unfold(a, 3, padding=1).view(len(x), 6, 9, -1)          # (n, c, k, l)
            w = model.conv2.weight.reshape(8, 6, 9)                        # (o, c, k)
            z = (w[None, :, :, :, None] * u[:, None]).sum(3)               # (n, o, c, l)
            rows.append(z.permute(0, 1, 3, 2).reshape(-1, 6))
    z = torch.cat(rows).double()
    return z, z.sum(1)


# --------------------------------------------------------------------------- HRank
def test_hrank_scores_are_mean_matrix_rank_and_survive_pruning():
    model, batches = _tiny()
    imp = HRankImportance(normalizer=None, tie_break=0.0)
    pruner = _pruner(model, imp)
    assert imp.calibrate(model, batches, pruner) == 16
    expected = []
    with torch.no_grad():
        for conv, bn in ((model.conv1, model.bn1), (model.conv2, model.bn2)):
            maps = torch.cat([torch.relu(bn(conv(x))) if conv is model.conv1 else
                              torch.relu(bn(conv(torch.relu(model.bn1(model.conv1(x)))))) for x, _ in batches])
            ranks = torch.stack([torch.stack([torch.linalg.matrix_rank(maps[n, c]) for c in range(maps.shape[1])])
                                 for n in range(len(maps))]).double()
            expected.append(ranks.mean(0))
    got1 = imp(_group(pruner, model.conv1))
    assert torch.allclose(got1.double(), expected[0], atol=1e-5)
    assert torch.allclose(imp(_group(pruner, model.conv2)).double(), expected[1], atol=1e-5)
    assert len(set(expected[0].tolist())) > 1  # the maps' ranks really differ
    # remove two channels of conv1 (and conv2's matching inputs): the scores stay with their channels
    pruner.DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [1, 4]).prune()
    keep = [0, 2, 3, 5]
    assert torch.allclose(imp(_group(pruner, model.conv1)).double(), expected[0][keep], atol=1e-5)


# --------------------------------------------------------------------------- ThiNet
def test_thinet_first_greedy_pick_is_smallest_reconstruction_error():
    model, batches = _tiny(1)
    imp = ThiNetImportance(samples_per_image=None, normalizer=None, tie_break=0.0)
    pruner = _pruner(model, imp)
    imp.calibrate(model, batches, pruner)
    scores = imp(_group(pruner, model.conv1))
    z, _ = _contributions(model, batches)
    errors = z.pow(2).sum(0)  # removing channel c alone changes the outputs by Z[:, c]
    assert int(torch.argmin(scores)) == int(torch.argmin(errors))
    # the second pick is the channel that, together with the first, changes the outputs least
    first = int(torch.argmin(errors))
    pair = torch.stack([(z[:, first] + z[:, c]).pow(2).sum() if c != first else torch.tensor(np.inf, dtype=z.dtype)
                        for c in range(z.shape[1])])
    assert int(torch.argsort(scores)[1]) == int(torch.argmin(pair))


# --------------------------------------------------------------------------- CP
def _lasso_support(z, y, alpha):
    from sklearn.linear_model import Lasso
    fit = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=200_000).fit(z, y)
    return set(np.flatnonzero(np.abs(fit.coef_) > 1e-12).tolist())


def test_cp_path_order_matches_sklearn_lasso_on_random_matrix():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 12)) * rng.uniform(0.2, 2.0, size=12)
    y = z @ rng.uniform(-1, 1, size=12) + 0.1 * rng.normal(size=200)
    scores = lasso_path_scores(torch.tensor(z.T @ z), torch.tensor(z.T @ y), len(z))
    order = torch.argsort(scores, descending=True).tolist()
    checked = 0
    for alpha in np.geomspace(1e-3, 1.0, 40) * np.abs(z.T @ y).max() / len(z):
        support = _lasso_support(z, y, alpha)
        if 0 < len(support) < z.shape[1]:
            assert set(order[:len(support)]) == support, alpha
            checked += 1
    assert checked >= 5


def test_cp_kept_set_matches_sklearn_lasso_on_the_models_contributions():
    model, batches = _tiny(2)
    imp = CPImportance(samples_per_image=None, normalizer=None, tie_break=0.0)
    pruner = _pruner(model, imp)
    imp.calibrate(model, batches, pruner)
    scores = imp(_group(pruner, model.conv1))
    z, y = _contributions(model, batches)
    z, y = z.numpy(), y.numpy()
    order = torch.argsort(scores, descending=True).tolist()
    checked = 0
    for alpha in np.geomspace(1e-3, 0.9, 12) * np.abs(z.T @ y).max() / len(z):
        support = _lasso_support(z, y, alpha)
        if 0 < len(support) < z.shape[1]:
            assert set(order[:len(support)]) == support, alpha
            checked += 1
    assert checked >= 3


def test_cp_refit_reduces_the_next_layers_reconstruction_error():
    model, batches = _tiny(3)
    with torch.no_grad():
        target = [model.conv2(torch.relu(model.bn1(model.conv1(x)))) for x, _ in batches]
    imp = CPImportance(samples_per_image=None, refit=True, refit_positions=64)
    pruner = _pruner(model, imp)
    imp.calibrate(model, batches, pruner)
    pruner.DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0, 3]).prune()

    def error():
        with torch.no_grad():
            return sum(float((model.conv2(torch.relu(model.bn1(model.conv1(x)))) - t).pow(2).sum())
                       for (x, _), t in zip(batches, target))
    before = error()
    assert imp.finish(model) >= 1
    assert error() < before


# --------------------------------------------------------------------------- group lasso
def _hand_penalty(model, reg):
    """Groups of Tiny: conv1 channels (conv1 rows, bn1 scale, conv2 columns), conv2 channels (+ fc columns)."""
    g1 = (model.conv1.weight.flatten(1).pow(2).sum(1) + model.bn1.weight.pow(2)
          + model.conv2.weight.transpose(0, 1).flatten(1).pow(2).sum(1))
    g2 = model.conv2.weight.flatten(1).pow(2).sum(1) + model.bn2.weight.pow(2) + model.fc.weight.pow(2).sum(0)
    return reg * (g1.sqrt().sum() + g2.sqrt().sum())


def test_group_lasso_penalty_and_gradient_match_hand_computation():
    model, _ = _tiny(4)
    pruner = GroupLassoPruner(model, torch.randn(1, 3, 8, 8), importance=tp.importance.GroupMagnitudeImportance(),
                              reg=0.01, ignored_layers=[model.fc])
    hand = _hand_penalty(model, 0.01)
    assert torch.allclose(group_lasso_penalty(pruner), hand, rtol=1e-5)
    params = [model.conv1.weight, model.bn1.weight, model.conv2.weight, model.bn2.weight, model.fc.weight]
    expected = torch.autograd.grad(hand, params)
    model.zero_grad(set_to_none=True)
    pruner.regularize(model)
    for p, e in zip(params, expected):
        assert torch.allclose(p.grad, e, rtol=1e-4, atol=1e-8)


def test_one_training_step_with_group_lasso_shrinks_group_norms():
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    norms = []
    for use in (False, True):
        model, _ = _tiny(5)
        model.train()
        pruner = GroupLassoPruner(model, torch.randn(1, 3, 8, 8),
                                  importance=tp.importance.GroupMagnitudeImportance(), reg=0.05,
                                  ignored_layers=[model.fc])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if use:
            spec = pruning.get_method("group_lasso").build(reg=0.05)
            spec.after_backward(pruner, model)
        opt.step()
        with torch.no_grad():
            norms.append(torch.cat(pruner.group_norms()))
    without, with_reg = norms
    assert bool((with_reg < without).all())


# --------------------------------------------------------------------------- end to end on resnet20 / digits
@pytest.mark.parametrize("method", ["hrank", "thinet", "cp"])
def test_datadriven_prunes_resnet20_to_2x_protected(digits, method):
    torch.manual_seed(0)
    model = pruning.create_model("resnet20", digits.spec.num_classes)
    dense = pruning.create_model("resnet20", digits.spec.num_classes)
    widths = {n: m.out_channels for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    model, report = pruning.prune(model, digits.spec.example_inputs(), method=method, speedup=2.0,
                                  scope="protected", data=digits.loader("train", 64), steps=5,
                                  calibration_batches=1)
    assert report.target_reached and report.speedup >= 2.0
    assert report.calibration_samples == 64
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 0.1 * widths[name]
    with torch.no_grad():
        assert model(digits.spec.example_inputs(2)).shape == (2, digits.spec.num_classes)


def test_isomorphic_scope(digits):
    model = pruning.create_model("resnet20", digits.spec.num_classes)
    _, report = pruning.prune(model, digits.spec.example_inputs(), method="hrank", speedup=1.5, scope="isomorphic",
                              data=digits.loader("train", 64), steps=4, calibration_batches=1)
    assert report.speedup >= 1.5 and report.scope == "isomorphic"


@pytest.mark.parametrize("pair", ["bnscale+bnscale_reg", "bnscale+group_lasso", "l2+group_norm", "l2+growing_reg",
                                  "l2+group_lasso"])
def test_pruningbench_pairings_run(digits, pair):
    criterion, sparsifier = pair.split("+")
    torch.manual_seed(0)
    model = pruning.create_model("resnet20", digits.spec.num_classes)
    ex = digits.spec.example_inputs()
    subset = list(islice(iter(digits.loader("train", 32, shuffle=False)), 1))
    history = pruning.sparsify(model, ex, sparsifier, subset, pruning.Recipe(epochs=1, lr=0.01), criterion=criterion)
    assert len(history) == 1
    _, report = pruning.prune(model, ex, method=pair, speedup=2.0, scope="protected", steps=5)
    assert report.method == pair and report.speedup >= 2.0


# --------------------------------------------------------------------------- bad input and the registry
@pytest.mark.parametrize("method", ["hrank", "thinet", "cp"])
def test_datadriven_without_data_names_the_method(method):
    model = pruning.create_model("resnet20", 10)
    with pytest.raises(pruning.PruneBenchError, match=method):
        pruning.prune(model, torch.randn(1, 3, 32, 32), method=method, speedup=2.0)


def test_bn_sparsifier_on_model_without_bn_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    with pytest.raises(pruning.PruneBenchError, match="bnscale_reg.*BatchNorm"):
        pruning.sparsify(model, torch.randn(1, 3, 16, 16), "bnscale_reg", [], pruning.Recipe(epochs=1, lr=0.01))


def test_methods_json_lists_12_criteria_and_4_sparsifiers(cli):
    code, out, err = cli("methods", "--json")
    assert code == 0, err
    rows = json.loads(out)
    criteria = {r["name"] for r in rows if r["stage"] == "criterion"}
    sparsifiers = {r["name"] for r in rows if r["stage"] == "sparsifier"}
    assert len(criteria) == 12 and {"hrank", "thinet", "cp"} <= criteria
    assert sparsifiers == {"bnscale_reg", "group_norm", "growing_reg", "group_lasso"}
    assert all(r["needs_data"] for r in rows if r["name"] in ("hrank", "thinet", "cp"))


def _channel_norms(model) -> torch.Tensor:
    """Per output channel of each conv + BN pair: the L2 norm of the filter and its BN scale together."""
    pairs = ((model.conv1, model.bn1), (model.conv2, model.bn2))
    return torch.cat([torch.cat([conv.weight.detach().flatten(1), bn.weight.detach().unsqueeze(1)], 1).norm(dim=1)
                      for conv, bn in pairs])


@pytest.mark.parametrize("sparsifier, measure", [
    ("bnscale_reg", lambda m: torch.cat([m.bn1.weight, m.bn2.weight]).detach().abs().sum()),
    ("group_norm", lambda m: _channel_norms(m).sum()),
    ("group_lasso", lambda m: _channel_norms(m).sum()),
    ("growing_reg", lambda m: _channel_norms(m).sum())])
def test_each_sparsifier_shrinks_the_norms_it_targets(sparsifier, measure):
    """Sparse training vs. the same training without the regulariser, from the same weights on the same batches."""
    model, batches = _tiny()
    batches, ex = batches * 4, torch.randn(1, 3, 8, 8)
    recipe = pruning.Recipe(epochs=4, lr=0.05, momentum=0.0, weight_decay=0.0)
    dense = copy.deepcopy(model)
    torch.manual_seed(0)
    pruning.train(dense, batches, recipe)
    torch.manual_seed(0)
    pruning.sparsify(model, ex, sparsifier, batches, recipe, reg=0.5)
    # measured: bnscale_reg 0.59, group_norm 0.23, group_lasso 0.64, growing_reg 0.91 of the dense value
    assert measure(model) < 0.95 * measure(dense)
