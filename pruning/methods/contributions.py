"""What each input channel contributes to the next layer's output: the statistics ThiNet and CP rank channels by.

:class:`ConsumerImportance` hooks every convolution / linear layer that *consumes* a group's channels; see
:mod:`.activations` for how the scores stay aligned with the channels while they are removed.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modes import eval_mode
from ..tp_adapter import IN_FNS, group_members
from .activations import Batches, ActivationImportance, pruner_groups, is_plain_conv

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
        z = self.matrix(x.detach().float()).double().cpu()  # statistics stay on the CPU, in float64
        y = z.sum(1)
        self.gram += z.T @ z
        self.xy += z.T @ y
        self.energy += float(y @ y)
        self.rows += len(z)


def _consumer_ok(layer: nn.Module) -> bool:
    return is_plain_conv(layer) or isinstance(layer, nn.Linear)


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
    for member in group_members(group, IN_FNS):
        layer = member.layer
        if layer not in stats or stats[layer].energy <= 0:
            continue
        s = stats[layer]
        p = torch.zeros(n_root, s.gram.shape[0], dtype=torch.float64)  # root channel <- layer input feature
        p[torch.as_tensor(member.root_idxs), torch.as_tensor(member.idxs)] = 1.0
        gram += p @ s.gram @ p.T / s.energy
        xy += p @ s.xy / s.energy
        rows = max(rows, s.rows)
        used.append(layer)
    return (gram, xy, rows, used) if used else None


class ConsumerImportance(ActivationImportance):
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
        groups = pruner_groups(model, batches, pruner)
        gen = torch.Generator().manual_seed(self.seed)
        stats: Dict[nn.Module, _Contributions] = {}
        for g in groups:
            for member in group_members(g, IN_FNS):
                if _consumer_ok(member.layer) and member.layer not in stats:
                    stats[member.layer] = _Contributions(member.layer, self.samples_per_image, gen)
        hooks = [layer.register_forward_hook(lambda mod, inp, out, s=s: s.add(inp[0])) for layer, s in stats.items()]
        count = 0
        try:
            with eval_mode(model):
                for x, _ in batches:
                    self._forward(model, x)
                    count += len(x)
        finally:
            for h in hooks:
                h.remove()
        for g in groups:
            joint = group_statistics(g, stats)
            if joint is None:
                continue
            gram, xy, rows, consumers = joint
            root_scores = self._order_scores(gram, xy, rows)
            for member in group_members(g, IN_FNS):
                layer = member.layer
                if layer not in consumers:
                    continue
                self.codes.tag(layer, "in")
                table = self.scores.setdefault(layer, torch.zeros(layer.weight.shape[1]))
                table[torch.as_tensor(member.idxs)] = root_scores[torch.as_tensor(member.root_idxs)].float()
        self._after_calibrate(model, batches, stats)
        return count

    def _forward(self, model, x):
        model(x)

    def _after_calibrate(self, model, batches, stats):
        pass


def ordered_scores(order: List[int], values: torch.Tensor, n: int) -> torch.Tensor:
    """Scores that sort like ``order`` (first = lowest), carrying ``values`` (made non-decreasing) as magnitude."""
    values = torch.cummax(values.double().clamp_min(0), 0).values
    top = float(values[-1]) if len(values) else 1.0
    step = 1e-6 * (top if top > 0 else 1.0) / max(n, 1)
    scores = torch.zeros(n, dtype=torch.float64)
    scores[torch.as_tensor(order, dtype=torch.long)] = values + step * torch.arange(1, len(order) + 1)
    return scores


def forward_with_hooks(model: nn.Module, batches, layers, make_hook) -> None:
    """Run every batch through the model with ``make_hook(layer, batch_index)`` as each layer's forward hook."""
    for b, (x, _) in enumerate(batches):
        hooks = [layer.register_forward_hook(make_hook(layer, b)) for layer in layers]
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
