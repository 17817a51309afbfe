"""Each criterion against an independent computation on a tiny model (one DepGraph group: conv1 out-channels)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

import pruning
from pruning.methods import get_method


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial BN scales, so BN members contribute distinct values
        model.bn1.weight.uniform_(0.2, 1.5)
        model.bn2.weight.uniform_(0.2, 1.5)
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 8, 8))
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8)))
    return model, group


def batches(n=3, size=5):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def members(model):
    """Per-channel weight rows of the group's members: conv1 filters, bn1 scales, conv2 input columns."""
    return [model.conv1.weight.detach().flatten(1), model.bn1.weight.detach().unsqueeze(1),
            model.conv2.weight.detach().transpose(0, 1).flatten(1)]


def mean_normalised(per_member):
    score = torch.stack(per_member).mean(0)
    return score / score.mean()


def score(name, model, group, data=None, **kwargs):
    imp = get_method(name).build(num_classes=4, **kwargs)
    if data is not None:
        imp.calibrate(model, data, pruner=None)
    return imp(group)


def test_l1_is_group_mean_of_absolute_sums(tiny):
    model, group = tiny
    expected = mean_normalised([w.abs().sum(1) for w in members(model)])
    assert torch.allclose(score("l1", model, group), expected, atol=1e-5)


def test_l2_is_group_mean_of_squared_norms(tiny):
    model, group = tiny
    expected = mean_normalised([w.pow(2).sum(1) for w in members(model)])
    assert torch.allclose(score("l2", model, group), expected, atol=1e-5)


def test_fpgm_is_the_sum_of_distances_between_signed_filters(tiny):
    model, group = tiny  # conv1 is the group's only layer whose out-channels (filters) are pruned
    w = model.conv1.weight.detach().flatten(1).double().numpy()
    distances = np.sqrt(((w[:, None] - w[None]) ** 2).sum(-1)).sum(1)
    expected = torch.from_numpy(distances / distances.mean()).float()
    assert torch.allclose(score("fpgm", model, group), expected, rtol=1e-4)


def test_fpgm_ranks_by_signed_weights_unlike_torch_prunings_squared_ones():
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 2))
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 1, 2])
    fpgm, upstream = get_method("fpgm").build(), tp.importance.FPGMImportance(p=2)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.2, 0.0], [0.0, 1.0]]))
    before = fpgm(group), upstream(group)
    assert before[0].argmin() == 0  # filter 0 lies nearest the others
    with torch.no_grad():
        model[0].weight[0].neg_()  # now far from filter 1; its squared weights are unchanged
    after = fpgm(group), upstream(group)
    assert after[0].argmin() == 2 and after[0][0] > before[0][0]
    assert torch.equal(after[1], before[1])


def test_lamp_normalises_by_the_sum_of_larger_scores(tiny):
    model, group = tiny
    raw = torch.stack([w.pow(2).sum(1) for w in members(model)]).mean(0)
    expected = torch.stack([raw[i] / raw[raw >= raw[i]].sum() for i in range(len(raw))])
    assert torch.allclose(score("lamp", model, group), expected, atol=1e-5)


def test_bnscale_is_the_normalised_absolute_gamma(tiny):
    model, group = tiny
    gamma = model.bn1.weight.detach().abs()
    assert torch.allclose(score("bnscale", model, group), gamma / gamma.mean(), atol=1e-4)


def test_random_gives_varied_scores_fixed_by_its_seed(tiny):
    model, group = tiny
    first = score("random", model, group, seed=3)
    assert first.shape == (8,) and len(set(first.tolist())) == 8  # not a constant (or tied) vector
    torch.manual_seed(99)  # torch's global generator plays no part
    assert torch.equal(first, score("random", model, group, seed=3))
    assert not torch.equal(first, score("random", model, group, seed=4))


def test_taylor_is_abs_weight_times_gradient_of_the_mean_loss(tiny):
    model, group = tiny
    data = batches()
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    reference = Tiny()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    F.cross_entropy(reference(x), y).backward()
    rows = [(reference.conv1.weight, 0), (reference.bn1.weight, 0), (reference.conv2.weight, 1)]
    per_member = [(w.detach() * w.grad).transpose(0, dim).flatten(1).abs().sum(1) if w.dim() > 1
                  else (w.detach() * w.grad).abs() for w, dim in rows]
    assert torch.allclose(score("taylor", model, group, data), mean_normalised(per_member), rtol=1e-4)


def per_sample_mean_grad_squares(model, data, sample_labels=False):
    squares, n = {}, 0
    generator = torch.Generator().manual_seed(0)
    for x, y in data:
        if sample_labels:
            with torch.no_grad():
                y = torch.multinomial(torch.softmax(model(x), 1), 1, generator=generator).view(-1)
        for xi, yi in zip(x, y):
            model.zero_grad()
            F.cross_entropy(model(xi[None]), yi[None]).backward()
            for name, p in model.named_parameters():
                squares[name] = squares.get(name, 0) + p.grad.detach().pow(2)
            n += 1
    model.zero_grad(set_to_none=True)
    return {k: v / n for k, v in squares.items()}


def obd(weight, h, dim):
    return (weight.detach().pow(2) * h).transpose(0, dim).flatten(1).sum(1) if weight.dim() > 1 else \
        weight.detach().pow(2) * h


def test_hessian_is_the_mean_over_samples_of_grad_squared_times_weight_squared(tiny):
    model, group = tiny
    data = batches()
    h = per_sample_mean_grad_squares(model, data)
    expected = mean_normalised([obd(model.conv1.weight, h["conv1.weight"], 0),
                                obd(model.bn1.weight, h["bn1.weight"], 0),
                                obd(model.conv2.weight, h["conv2.weight"], 1)])
    assert torch.allclose(score("hessian", model, group, data), expected, rtol=1e-3)


def test_hessian_accumulates_every_sample_not_only_the_last(tiny):
    """Torch-Pruning 1.6.1's accumulate_grad keeps only the last sample; ours sums all of them."""
    model, _ = tiny
    imp = get_method("hessian").build()
    data = batches(n=1, size=4)
    last = None
    for xi, yi in zip(*data[0]):
        model.zero_grad()
        F.cross_entropy(model(xi[None]), yi[None]).backward()
        imp.accumulate_grad(model)
        last = model.conv1.weight.grad.pow(2).clone()
    mean = per_sample_mean_grad_squares(model, data)["conv1.weight"]
    accumulated = imp._accu_grad[model.conv1.weight] / imp._counter[model.conv1.weight]
    assert imp._counter[model.conv1.weight] == 4
    assert torch.allclose(accumulated, mean, rtol=1e-4)
    assert not torch.allclose(accumulated, last, rtol=1e-2)

    upstream = tp.importance.GroupHessianImportance()
    for xi, yi in zip(*data[0]):
        model.zero_grad()
        F.cross_entropy(model(xi[None]), yi[None]).backward()
        upstream.accumulate_grad(model)
    assert torch.allclose(upstream._accu_grad[model.conv1.weight], last)  # the upstream bug this fixes


def test_obdc_uses_the_fisher_with_labels_sampled_from_the_model(tiny):
    model, group = tiny
    data = batches()
    h = per_sample_mean_grad_squares(model, data, sample_labels=True)
    expected = mean_normalised([obd(model.conv1.weight, h["conv1.weight"], 0),
                                obd(model.conv2.weight, h["conv2.weight"], 1)])
    assert torch.allclose(score("obdc", model, group, data), expected, rtol=1e-3)


def test_a_weights_elementwise_scores_are_computed_once_until_it_changes():
    """A step scores a layer's weight for every group it belongs to: once computed, then again only when the
    weight (or its statistic) is replaced or changed."""
    from pruning.methods.gradient_scores import ElementwiseScores
    calls = []
    scores = ElementwiseScores(lambda w, s: calls.append(1) or w * s)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    weight.grad = torch.randn(4, 3)
    first = scores(weight)
    assert scores(weight) is first and len(calls) == 1
    with torch.no_grad():
        weight.mul_(2)  # changed in place
    assert torch.allclose(scores(weight), 2 * first) and len(calls) == 2
    weight.grad = torch.randn(4, 3)  # a new statistic
    scores(weight)
    pruned = torch.nn.Parameter(weight.data[:2].clone())  # what pruning does: a new, narrower weight
    pruned.grad = weight.grad[:2].clone()
    assert scores(pruned).shape == (2, 3) and len(calls) == 4


def test_a_layer_used_twice_takes_the_general_path():
    """The hooks would square each use's gradient apart; a shared layer's per-sample gradient sums its uses."""
    from pruning.methods.per_sample_grads import hooked_grad_squares, per_sample_grad_squares, vmap_grad_squares

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))
    torch.manual_seed(0)
    model, x, y = Twice(), torch.randn(5, 4), torch.randint(3, (5,))
    assert hooked_grad_squares(model, x, y) is None
    squares, reference = per_sample_grad_squares(model, x, y), vmap_grad_squares(model, x, y)
    assert all(torch.allclose(squares[n], reference[n]) for n in reference)


def test_per_sample_conv_squares_agree_one_sample_or_many_at_once():
    """The CPU's one-sample-at-a-time products and the GPU's batched ones are the same sums."""
    from pruning.methods.per_sample_grads import conv_weight_squares
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
    inp, g = torch.randn(5, 4, 9, 9), torch.randn(5, 6, 5, 5)
    one = conv_weight_squares(conv, inp, g, at_once=1)
    expected = torch.stack([torch.nn.grad.conv2d_weight(inp[n:n + 1], conv.weight.shape, g[n:n + 1], stride=2,
                                                        padding=1).flatten(1) for n in range(5)]).pow(2).sum(0)
    assert torch.allclose(one, expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(conv_weight_squares(conv, inp, g, at_once=2), one, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["resnet20", "timm/resnet10t"])  # the second has in-place activations
def test_hooked_per_sample_squares_equal_vmaps_and_leave_the_model_as_it_was(model_name):
    """The one-backward-pass path (layer hooks) gives torch.func's per-sample gradients squared, and hands the
    model back as it was."""
    from pruning.methods.per_sample_grads import hooked_grad_squares, vmap_grad_squares
    torch.manual_seed(0)
    model = pruning.create_model(model_name, 10, 3, 8).eval()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(10, (6,))
    hooked = hooked_grad_squares(model, x, y)
    assert hooked is not None
    reference = vmap_grad_squares(model, x, y)
    assert set(hooked) == set(reference)
    assert all(torch.allclose(hooked[n], reference[n], rtol=1e-3, atol=1e-8) for n in hooked)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
