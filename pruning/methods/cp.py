"""CP, channel pruning (He et al., ICCV 2017): LASSO over the channels' contributions to the next layer."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modes import eval_mode
from .activations import is_plain_conv
from .base import CRITERION, register
from .contributions import ConsumerImportance, forward_with_hooks

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


class CPImportance(ConsumerImportance):
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
        convs = [layer for layer in self.scores if is_plain_conv(layer)]
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
        forward_with_hooks(model, batches, convs, hook)
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

        with eval_mode(model):
            forward_with_hooks(model, data["batches"], convs, hook)
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


@register("cp", CRITERION, needs_data=True,
          summary="LASSO path over the channels' contributions to the next layer's output",
          reference="He et al., Channel Pruning for Accelerating Very Deep Neural Networks, ICCV 2017")
def cp(samples_per_image: int = 10, refit: bool = False, **_):
    return CPImportance(samples_per_image=samples_per_image, refit=refit)
