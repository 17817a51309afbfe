"""Activation-based data-driven criteria: HRank, ThiNet and CP (channel pruning by LASSO).

Each is a Torch-Pruning importance with ``calibrate(model, batches, pruner) -> n_samples``, run once before the
iterative pruning steps.  Calibration is one forward pass (no backward) over the calibration batches, with hooks:

* ``hrank`` hooks every convolution that produces a group's channels;
* ``thinet`` and ``cp`` hook every convolution / linear layer that *consumes* a group's channels (the next layer).

**Keeping statistics aligned while channels are removed.**  Calibration writes an integer *channel code* into the
``.grad`` of each hooked layer's weight: ``code[o, c] = o * C0 + c`` (original output index ``o``, original input
index ``c``, ``C0`` the original input width), exact in float32.  Torch-Pruning slices ``.grad`` together with the
weight whenever a layer loses input or output channels, so at any later step the surviving original indices are
read back from the codes, and the per-original-channel scores computed once at calibration are looked up by them.
This works in every scope (local, global, protected, isomorphic), at every iterative step and for a sub-group
(protected scope re-scores part of a group).  Layers wider than 2**24 codes keep only the code of the dimension
that their criterion needs.

**Groups.**  Scores are reduced over the members of a DepGraph group like Torch-Pruning's
``GroupMagnitudeImportance`` with ``group_reduction='mean'`` and ``normalizer='mean'`` (``_reduce``/``_normalize``),
so scores of different groups are comparable in global scopes.  A group that has no hooked member (e.g. channels
produced only by linear layers for ``hrank``) falls back to the group L2 magnitude, normalised the same way.
A tiny tie-break (``tie_break`` times the normalised L2 magnitude) separates equal scores: average ranks are often
tied, and a group whose channels all tie at the global threshold would be selected whole, which Torch-Pruning refuses.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from .base import CRITERION, register

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]
_EXACT = 2 ** 24  # float32 represents every integer below this exactly

_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
_IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


# --------------------------------------------------------------------------- channel codes in .grad
def _plain_conv(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and not layer.transposed


def _tag(layer: nn.Module, need: str) -> str:
    """Write the channel code into ``layer.weight.grad``; return the code mode ('both', 'out' or 'in')."""
    w = layer.weight
    o0, c0 = w.shape[0], w.shape[1]
    o = torch.arange(o0, dtype=torch.float64).view(-1, 1)
    c = torch.arange(c0, dtype=torch.float64).view(1, -1)
    if o0 * c0 < _EXACT:
        mode, code = "both", o * c0 + c
    elif need == "out" and o0 < _EXACT:
        mode, code = "out", o + 0 * c
    elif need == "in" and c0 < _EXACT:
        mode, code = "in", c + 0 * o
    else:
        raise ValueError(f"layer too wide for channel codes: {tuple(w.shape)}")
    code = code.to(torch.float32).view(o0, c0, *([1] * (w.dim() - 2))).expand_as(w)
    w.grad = code.to(w.device).contiguous()
    return mode


class _Codes:
    """The original width and code mode of every tagged layer; decodes surviving original indices."""

    def __init__(self):
        self.info: Dict[nn.Module, Tuple[int, str]] = {}

    def tag(self, layer: nn.Module, need: str) -> None:
        if layer not in self.info:
            self.info[layer] = (layer.weight.shape[1], _tag(layer, need))

    def out_ids(self, layer: nn.Module) -> Optional[torch.Tensor]:
        c0, mode = self.info.get(layer, (None, None))
        g = layer.weight.grad
        if mode not in ("both", "out") or g is None:
            return None
        v = g.detach().flatten(1)[:, 0].double()
        return (torch.div(v, c0, rounding_mode="floor") if mode == "both" else v).long()

    def in_ids(self, layer: nn.Module) -> Optional[torch.Tensor]:
        c0, mode = self.info.get(layer, (None, None))
        g = layer.weight.grad
        if mode not in ("both", "in") or g is None:
            return None
        v = g.detach()[0].reshape(g.shape[1], -1)[:, 0].double()
        return (torch.remainder(v, c0) if mode == "both" else v).long()


def _groups(model: nn.Module, batches: list, pruner) -> list:
    if pruner is not None:
        return list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                             root_module_types=pruner.root_module_types))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=batches[0][0][:1])
    return list(graph.get_all_groups())


def _graph(model: nn.Module, batches: list, pruner):
    if pruner is not None:
        return pruner.DG
    return tp.DependencyGraph().build_dependency(model, example_inputs=batches[0][0][:1])


# --------------------------------------------------------------------------- common base
class _ActivationImportance(tp.importance.GroupMagnitudeImportance):
    """Shared machinery: per-original-channel scores on hooked layers, looked up through the channel codes."""

    side = "out"  # 'out': scores of producers' output channels; 'in': scores of consumers' input channels

    def __init__(self, normalizer="mean", tie_break: float = 1e-6):
        super().__init__(p=2, group_reduction="mean", normalizer=normalizer)
        self.tie_break = tie_break
        self.codes = _Codes()
        self.scores: Dict[nn.Module, torch.Tensor] = {}  # layer -> score per original out (or in) index

    def _member_scores(self, group):
        imps, idxs_list = [], []
        fns = _OUT_FNS if self.side == "out" else _IN_FNS
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if dep.handler not in fns or layer not in self.scores:
                continue
            ids = self.codes.out_ids(layer) if self.side == "out" else self.codes.in_ids(layer)
            if ids is None:
                continue
            root_idxs = group[i].root_idxs
            if any(r is None for r in root_idxs):
                continue
            table = self.scores[layer]
            imps.append(table[ids[torch.as_tensor(idxs, dtype=torch.long)]].float())
            idxs_list.append(root_idxs)
        return imps, idxs_list

    @torch.no_grad()
    def __call__(self, group):
        magnitude = super().__call__(group)  # group L2 (mean-normalised): fallback and tie-break
        imps, root_idxs = self._member_scores(group)
        if not imps:
            return magnitude
        scores = self._normalize(self._reduce(imps, root_idxs), self.normalizer)
        if magnitude is not None and self.tie_break:
            scores = scores + self.tie_break * magnitude / (magnitude.max() + 1e-12)
        return scores


# --------------------------------------------------------------------------- HRank
def batched_matrix_rank(maps: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``torch.linalg.matrix_rank`` of every (H, W) map of a (B, H, W) tensor, many maps per call (chunked)."""
    return torch.cat([torch.linalg.matrix_rank(part) for part in maps.split(chunk)]) if len(maps) else \
        torch.zeros(0, dtype=torch.long)


class HRankImportance(_ActivationImportance):
    """HRank (Lin et al., CVPR 2020): a channel's score is the mean matrix rank of its feature maps.

    The feature map of a convolution's output channel is taken where HRank takes it, after the activation: the
    output of the BatchNorm that directly follows the convolution (if any), passed through ReLU
    (``activation='relu'``; ``None`` uses the raw map).  Ranks are ``torch.linalg.matrix_rank`` of the (H, W) maps,
    computed batched: all N x C maps of a layer and batch in one call (chunked for memory).  A group's score is the
    mean over its producing convolutions (several in a residual group).
    """

    side = "out"

    def __init__(self, activation: Optional[str] = "relu", normalizer="mean", tie_break: float = 1e-6,
                 chunk: int = 8192):
        super().__init__(normalizer=normalizer, tie_break=tie_break)
        self.activation = activation
        self.chunk = chunk

    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        batches = list(batches)
        graph = _graph(model, batches, pruner)
        producers = {}
        for g in _groups(model, batches, pruner):
            for dep, _ in g:
                if dep.handler == function.prune_conv_out_channels and _plain_conv(dep.target.module):
                    producers[dep.target.module] = None
        hooks, sums = [], {}
        for conv in producers:
            node = graph.module2node.get(conv)
            nxt = [n.module for n in node.outputs] if node is not None else []
            where = nxt[0] if len(nxt) == 1 and isinstance(nxt[0], nn.modules.batchnorm._BatchNorm) else conv
            sums[conv] = torch.zeros(conv.out_channels, dtype=torch.float64)
            hooks.append(where.register_forward_hook(self._hook(conv, sums)))
        was_training = model.training
        model.eval()
        count = 0
        try:
            for x, _ in batches:
                model(x)
                count += len(x)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        for conv, total in sums.items():
            self.codes.tag(conv, "out")
            self.scores[conv] = (total / max(count, 1)).float()
        return count

    def _hook(self, conv, sums):
        def hook(module, inputs, output):
            maps = output.detach()
            if self.activation == "relu":
                maps = torch.relu(maps)
            n, c = maps.shape[:2]
            ranks = batched_matrix_rank(maps.reshape(n * c, *maps.shape[2:]).float(), self.chunk)
            sums[conv] += ranks.view(n, c).sum(0).double()
        return hook


# --------------------------------------------------------------------------- contributions to the next layer
class _Contributions:
    """Per consumer layer: the channels' contributions Z (rows: sampled output entries) to its output.

    For a sampled output entry (image n, output channel o, location h, w) of a convolution, ``Z[m, c]`` is what
    input channel c adds to it: ``sum_k W[o, c, k] * patch[n, c, k]``; the entry's value (bias excluded) is
    ``Y[m] = sum_c Z[m, c]``.  Accumulated: the Gram matrix ``Z^T Z``, ``Z^T Y``, ``|Y|^2`` and the row count.
    ``samples_per_image`` entries are drawn per image (``None``: every entry, for tests on tiny models).
    """

    def __init__(self, layer: nn.Module, samples_per_image: Optional[int], generator: torch.Generator):
        self.layer, self.samples, self.gen = layer, samples_per_image, generator
        n_in = layer.weight.shape[1]
        self.gram = torch.zeros(n_in, n_in, dtype=torch.float64)
        self.xy = torch.zeros(n_in, dtype=torch.float64)
        self.energy = 0.0
        self.rows = 0

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        w = layer.weight.detach()
        if isinstance(layer, nn.Linear):
            x = x.reshape(-1, x.shape[-1])
            if self.samples is None:
                return (x.unsqueeze(1) * w.unsqueeze(0)).reshape(-1, w.shape[1])
            rows = torch.arange(len(x)).repeat_interleave(self.samples)
            outs = torch.randint(w.shape[0], (len(rows),), generator=self.gen)
            return x[rows] * w[outs]
        kh, kw = layer.kernel_size
        sh, sw = layer.stride
        dh, dw = layer.dilation
        if isinstance(layer.padding, str):  # 'same' / 'valid'
            ph = dh * (kh - 1) // 2 if layer.padding == "same" else 0
            pw = dw * (kw - 1) // 2 if layer.padding == "same" else 0
        else:
            ph, pw = layer.padding
        n, c = x.shape[:2]
        ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if self.samples is None:
            u = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
            u = u.view(n, c, kh * kw, ho * wo)
            z = torch.einsum("ock,nckl->nolc", w.reshape(w.shape[0], c, kh * kw), u)
            return z.reshape(-1, c)
        m = n * self.samples
        img = torch.arange(n).repeat_interleave(self.samples)
        outs = torch.randint(w.shape[0], (m,), generator=self.gen)
        hs = torch.randint(ho, (m,), generator=self.gen)
        ws = torch.randint(wo, (m,), generator=self.gen)
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        r = hs.view(-1, 1) * sh + torch.arange(kh).view(1, -1) * dh  # (m, kh)
        q = ws.view(-1, 1) * sw + torch.arange(kw).view(1, -1) * dw  # (m, kw)
        patches = xp[img.view(-1, 1, 1), :, r.view(m, kh, 1), q.view(m, 1, kw)]  # (m, kh, kw, c)
        return torch.einsum("mijc,mcij->mc", patches, w[outs])

    def add(self, x: torch.Tensor) -> None:
        z = self.matrix(x.detach().float()).double()
        y = z.sum(1)
        self.gram += z.T @ z
        self.xy += z.T @ y
        self.energy += float(y @ y)
        self.rows += len(z)


def _consumer_ok(layer: nn.Module) -> bool:
    return _plain_conv(layer) or isinstance(layer, nn.Linear)


def group_statistics(group, stats: Dict[nn.Module, _Contributions]):
    """Joint statistics of a group over root channels: sum over consumers of Z^T Z / |Y|^2 and Z^T Y / |Y|^2.

    Each consumer's contributions are summed per root channel (a flattened linear input maps many features to one
    channel) and scaled by the consumer's output energy, so that the objective is the sum of the consumers'
    *relative* reconstruction errors.  Returns (gram, xy, rows, consumers) or None when no consumer was hooked.
    """
    n_root = len(group[0].idxs)
    gram = torch.zeros(n_root, n_root, dtype=torch.float64)
    xy = torch.zeros(n_root, dtype=torch.float64)
    rows, used = 0, []
    for i, (dep, idxs) in enumerate(group):
        layer = dep.target.module
        if dep.handler not in _IN_FNS or layer not in stats:
            continue
        root = group[i].root_idxs
        if any(r is None for r in root) or stats[layer].energy <= 0:
            continue
        s = stats[layer]
        p = torch.zeros(n_root, s.gram.shape[0], dtype=torch.float64)  # root channel <- layer input feature
        p[torch.as_tensor(root), torch.as_tensor(idxs)] = 1.0
        gram += p @ s.gram @ p.T / s.energy
        xy += p @ s.xy / s.energy
        rows = max(rows, s.rows)
        used.append(layer)
    return (gram, xy, rows, used) if used else None


class _ConsumerImportance(_ActivationImportance):
    side = "in"

    def __init__(self, samples_per_image: Optional[int] = 10, seed: int = 0, normalizer="mean",
                 tie_break: float = 1e-6):
        super().__init__(normalizer=normalizer, tie_break=tie_break)
        self.samples_per_image = samples_per_image
        self.seed = seed

    def _order_scores(self, gram: torch.Tensor, xy: torch.Tensor, rows: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        batches = list(batches)
        groups = _groups(model, batches, pruner)
        gen = torch.Generator().manual_seed(self.seed)
        stats: Dict[nn.Module, _Contributions] = {}
        for g in groups:
            for dep, _ in g:
                layer = dep.target.module
                if dep.handler in _IN_FNS and _consumer_ok(layer) and layer not in stats:
                    stats[layer] = _Contributions(layer, self.samples_per_image, gen)
        hooks = [layer.register_forward_hook(lambda mod, inp, out, s=s: s.add(inp[0])) for layer, s in stats.items()]
        was_training = model.training
        model.eval()
        count = 0
        try:
            for x, _ in batches:
                self._forward(model, x)
                count += len(x)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        for g in groups:
            joint = group_statistics(g, stats)
            if joint is None:
                continue
            gram, xy, rows, consumers = joint
            root_scores = self._order_scores(gram, xy, rows)
            for i, (dep, idxs) in enumerate(g):
                layer = dep.target.module
                if layer not in consumers or dep.handler not in _IN_FNS:
                    continue
                self.codes.tag(layer, "in")
                table = self.scores.setdefault(layer, torch.zeros(layer.weight.shape[1]))
                table[torch.as_tensor(idxs)] = root_scores[torch.as_tensor(g[i].root_idxs)].float()
        self._after_calibrate(model, batches, stats)
        return count

    def _forward(self, model, x):
        model(x)

    def _after_calibrate(self, model, batches, stats):
        pass


def _ordered_scores(order: List[int], values: torch.Tensor, n: int) -> torch.Tensor:
    """Scores that sort like ``order`` (first = lowest), carrying ``values`` (made non-decreasing) as magnitude."""
    values = torch.cummax(values.double().clamp_min(0), 0).values
    top = float(values[-1]) if len(values) else 1.0
    step = 1e-6 * (top if top > 0 else 1.0) / max(n, 1)
    scores = torch.zeros(n, dtype=torch.float64)
    scores[torch.as_tensor(order, dtype=torch.long)] = values + step * torch.arange(1, len(order) + 1)
    return scores


# --------------------------------------------------------------------------- ThiNet
def thinet_greedy(gram: torch.Tensor) -> Tuple[List[int], torch.Tensor]:
    """ThiNet's greedy selection on the Gram matrix of the contributions Z.

    Removing the set T changes the next layer's sampled outputs by ``sum_{c in T} Z[:, c]``; its squared norm is
    ``1_T^T G 1_T``.  Channels are removed one at a time, each time the one whose addition to T gives the smallest
    error (``e_T + 2 (G 1_T)_c + G_cc``).  Returns the removal order and the error after each removal.
    """
    n = gram.shape[0]
    diag = gram.diagonal().clone()
    v = torch.zeros(n, dtype=gram.dtype)
    removed = torch.zeros(n, dtype=torch.bool)
    err, order, errors = 0.0, [], []
    for _ in range(n):
        cand = err + 2 * v + diag
        cand[removed] = math.inf
        c = int(torch.argmin(cand))
        err = float(cand[c])
        order.append(c)
        errors.append(err)
        removed[c] = True
        v += gram[:, c]
    return order, torch.tensor(errors, dtype=torch.float64)


class ThiNetImportance(_ConsumerImportance):
    """ThiNet (Luo et al., ICCV 2017): keep the channels whose removal least changes the next layer's output.

    Calibration samples ``samples_per_image`` output entries per image of every next layer (consumer) and records
    each input channel's contribution to them; channels are then removed greedily, each time the one that least
    increases the reconstruction error of the sampled outputs.  The greedy order is the score: the channel removed
    first scores lowest; the score's magnitude is the (non-decreasing) relative error reached when it is removed.

    Coupled layers: a DepGraph group's channels feed several consumers at once (in a ResNet, every convolution that
    reads the residual stream, and the classifier).  Removing a channel removes it from all of them, so the greedy
    runs once per group on the *sum of the consumers' relative errors*: each consumer's contributions are scaled by
    its output energy and their Gram matrices summed (``group_statistics``).  Producers of the group (the
    convolutions and BatchNorms whose outputs are the channels) enter only through the activations they produce.
    """

    def _order_scores(self, gram, xy, rows):
        order, errors = thinet_greedy(gram)
        return _ordered_scores(order, errors, gram.shape[0])


# --------------------------------------------------------------------------- CP
def lasso_path_scores(gram: torch.Tensor, xy: torch.Tensor, rows: int) -> torch.Tensor:
    """Channel scores from the LASSO regularisation path of ``min_b |Y - Z b|^2/(2 n) + alpha |b|_1``.

    The exact path (LARS-lasso on the sufficient statistics, ``sklearn.linear_model.lars_path_gram``) is followed
    from large alpha down; a channel's score is the alpha at which its coefficient first becomes non-zero, relative to
    the path's largest alpha: channels whose coefficients are zero for the most regularisation are the least important,
    and the top-k channels are the LASSO's support with k channels.  Channels never selected score 0 (ties broken by
    their own energy, tiny).
    """
    from sklearn.linear_model import lars_path_gram
    n = gram.shape[0]
    g = gram.double().numpy()
    scale = float(np.abs(g).max()) or 1.0
    with warnings.catch_warnings():  # dead (all-zero) channels make the Gram matrix singular: harmless here
        warnings.simplefilter("ignore")
        alphas, _, coefs = lars_path_gram(xy.double().numpy() / scale, g / scale, n_samples=max(int(rows), 1),
                                          method="lasso", max_iter=10 * n + 10)
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    nonzero = torch.as_tensor(coefs != 0)  # (n, len(alphas))
    entered = torch.where(nonzero.any(1), nonzero.float().argmax(1), torch.full((n,), -1))
    top = float(alphas[0]) if len(alphas) and alphas[0] > 0 else 1.0
    score = torch.where(entered > 0, alphas[(entered - 1).clamp_min(0)] / top, torch.zeros(n, dtype=torch.float64))
    # a coefficient that is non-zero at the very first alpha (degenerate path) gets the top score
    score = torch.where(entered == 0, torch.ones(n, dtype=torch.float64), score)
    energy = gram.diagonal().double()
    return score + 1e-9 * energy / (energy.max() + 1e-30)


class CPImportance(_ConsumerImportance):
    """CP, channel pruning (He et al., ICCV 2017): LASSO over the channels' contributions to the next layer's output.

    The contributions are sampled as for ``thinet`` (``samples_per_image`` output entries per image of each
    consumer; coupled consumers of a group are summed as relative errors).  The LASSO's regularisation path orders
    the channels: the later a channel's coefficient leaves zero as alpha decreases, the lower its score
    (``lasso_path_scores``).

    ``refit=True`` adds CP's second step, a least-squares refit of each next layer's weights on the kept channels
    so that it reproduces its dense output on the calibration data (``refit_positions`` sampled locations per image).
    The refit needs the pruned model, so it runs in :meth:`finish`, which the pruning loop calls after its last step.
    """

    def __init__(self, samples_per_image: Optional[int] = 10, refit: bool = False, refit_positions: int = 8,
                 ridge: float = 1e-4, **kwargs):
        super().__init__(samples_per_image=samples_per_image, **kwargs)
        self.refit = refit
        self.refit_positions = refit_positions
        self.ridge = ridge
        self._refit_data = {}

    def _order_scores(self, gram, xy, rows):
        return lasso_path_scores(gram, xy, rows)

    # ---------------------------------------------------------------- optional least-squares refit
    def _after_calibrate(self, model, batches, stats):
        if not self.refit:
            return
        gen = torch.Generator().manual_seed(self.seed + 1)
        convs = [layer for layer in self.scores if _plain_conv(layer)]
        for conv in convs:
            self.codes.tag(conv, "both")
        positions = {}
        targets = {conv: [] for conv in convs}

        def hook(conv, b):
            def fn(mod, inp, out):
                y = out.detach()
                if mod.bias is not None:
                    y = y - mod.bias.detach().view(1, -1, 1, 1)
                n, _, ho, wo = y.shape
                img = torch.arange(n).repeat_interleave(self.refit_positions)
                hs = torch.randint(ho, (len(img),), generator=gen)
                ws = torch.randint(wo, (len(img),), generator=gen)
                positions[(conv, b)] = (img, hs, ws)
                targets[conv].append(y[img, :, hs, ws])
            return fn

        model.eval()
        _forward_with_hooks(model, batches, convs, hook)
        self._refit_data = {"batches": batches, "positions": positions,
                            "targets": {c: torch.cat(t) for c, t in targets.items()}}

    @torch.no_grad()
    def finish(self, model: nn.Module) -> int:
        """Least-squares refit of every pruned next layer (``refit=True``); returns the number of layers refitted.

        Must run before the channel codes in ``.grad`` are cleared.  Inputs come from the pruned network (as in CP,
        so the refit also absorbs the error of earlier layers); targets are the dense outputs recorded at calibration.
        """
        if not self.refit or not self._refit_data:
            return 0
        data = self._refit_data
        convs = [c for c in data["targets"] if c.weight.grad is not None]
        patches = {c: [] for c in convs}

        def hook(conv, b):
            def fn(mod, inp, out):
                img, hs, ws = data["positions"][(conv, b)]
                kh, kw = conv.kernel_size
                u = F.unfold(inp[0].detach(), conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                             stride=conv.stride)
                wo = out.shape[3]
                patches[conv].append(u[img, :, hs * wo + ws])
            return fn

        was_training = model.training
        model.eval()
        _forward_with_hooks(model, data["batches"], convs, hook)
        model.train(was_training)
        for conv in convs:
            out_ids = self.codes.out_ids(conv)
            if out_ids is None:
                continue
            p = torch.cat(patches[conv]).double()
            y = data["targets"][conv][:, out_ids].double()
            a = p.T @ p
            a += self.ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype)
            w = torch.linalg.solve(a, p.T @ y)  # (C' k^2, O')
            grad = conv.weight.grad
            conv.weight.data.copy_(w.T.reshape(conv.weight.shape).to(conv.weight.dtype))
            conv.weight.grad = grad
        self._refit_data = {}
        return len(convs)


# --------------------------------------------------------------------------- registry
@register("hrank", CRITERION, needs_data=True,
          summary="mean matrix rank of the channel's (post-ReLU) feature maps",
          reference="Lin et al., HRank: Filter Pruning using High-Rank Feature Map, CVPR 2020")
def hrank(activation: Optional[str] = "relu", **_):
    return HRankImportance(activation=activation)


@register("thinet", CRITERION, needs_data=True,
          summary="greedy: remove channels that least change the next layer's sampled outputs",
          reference="Luo et al., ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression, ICCV 2017")
def thinet(samples_per_image: int = 10, **_):
    return ThiNetImportance(samples_per_image=samples_per_image)


@register("cp", CRITERION, needs_data=True,
          summary="LASSO path over the channels' contributions to the next layer's output",
          reference="He et al., Channel Pruning for Accelerating Very Deep Neural Networks, ICCV 2017")
def cp(samples_per_image: int = 10, refit: bool = False, **_):
    return CPImportance(samples_per_image=samples_per_image, refit=refit)


def _forward_with_hooks(model: nn.Module, batches, layers, make_hook) -> None:
    """Run every batch through the model with ``make_hook(layer, batch_index)`` as each layer's forward hook."""
    for b, (x, _) in enumerate(batches):
        hooks = [layer.register_forward_hook(make_hook(layer, b)) for layer in layers]
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
