"""Optimal Brain Damage (LeCun et al., NeurIPS 1989): a diagonal Hessian (``hessian``) or the true Fisher
diagonal with labels sampled from the model (``obdc``, as in EigenDamage, Wang et al., ICML 2019)."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from .base import CRITERION, register
from .gradient_scores import Batches, ElementwiseScores, score_group, trainable_parameters
from .per_sample_grads import Labels, per_sample_grad_squares


class HessianImportance(tp.importance.GroupHessianImportance):
    """OBD with a diagonal Hessian: mean over samples of (dL_i/dw)^2 * w^2, summed over the channel's weights.

    Torch-Pruning 1.6.1's ``accumulate_grad`` tests ``name`` against a dict keyed by parameters, so it keeps only the
    last sample's gradient; here every sample counts.  ``calibrate`` computes per-sample gradients with
    ``torch.func`` (vmap over the batch) and stores their mean square in ``.grad``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._elementwise = ElementwiseScores(lambda w, h: w.pow(2) * h)

    def accumulate_grad(self, model: nn.Module) -> None:
        """Torch-Pruning's API: add the current ``.grad`` (of one sample's loss) to the running sum of squares."""
        for param in trainable_parameters(model):
            if param.grad is None:
                continue
            square = param.grad.detach().pow(2)
            if param in self._accu_grad:
                self._accu_grad[param] += square
                self._counter[param] += 1
            else:
                self._accu_grad[param] = square.clone()
                self._counter[param] = 1

    @torch.no_grad()
    def __call__(self, group):
        for param, total in self._accu_grad.items():  # accumulate_grad's sums become the mean in .grad
            param.grad = total / self._counter[param]
        self.zero_grad()
        return score_group(self, group, self._elementwise)

    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        model.eval()
        self.zero_grad()
        sums = {name: torch.zeros_like(p) for name, p in model.named_parameters() if p.requires_grad}
        count = 0
        for x, y in batches:
            for name, sq in per_sample_grad_squares(model, x, self.labels(y)).items():
                sums[name] += sq
            count += len(x)
        for name, p in model.named_parameters():
            if name in sums:
                p.grad = sums[name] / count
        return count

    def labels(self, y: torch.Tensor) -> Labels:
        """The labels the squared gradients are taken with: the data's."""
        return y


class OBDCImportance(HessianImportance):
    """OBD with the true Fisher: like ``hessian`` but with labels sampled from the model's own predictions.

    This is what Torch-Pruning's ``OBDCImportance`` estimates (per-sample squared gradients of conv/linear weights
    under sampled labels).  Its Fisher buffers are not re-indexed when a layer loses output channels, so they break
    after the first pruning step; kept in ``.grad`` here, they stay aligned with the weights.
    """

    def __init__(self, num_classes: int | None = None):
        super().__init__(target_types=[nn.modules.conv._ConvNd, nn.Linear])
        self.num_classes = num_classes

    def calibrate(self, model: nn.Module, batches: Batches, pruner=None) -> int:
        self._generator = torch.Generator().manual_seed(0)
        return super().calibrate(model, batches, pruner)

    def labels(self, y: torch.Tensor) -> Labels:
        """Labels drawn from the model's own softmax over the logits of the same forward pass."""
        def sampled(logits: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(logits.float(), 1).cpu()  # the generator (and so the draws) is the CPU's
            return torch.multinomial(probs, 1, generator=self._generator).view(-1).to(logits.device)
        return sampled


@register("hessian", CRITERION, needs_data=True, summary="OBD: mean per-sample grad^2 * w^2 (diagonal Hessian)",
          reference="LeCun et al., Optimal Brain Damage, NeurIPS 1989")
def hessian(**_):
    return HessianImportance()


@register("obdc", CRITERION, needs_data=True, summary="OBD with the true Fisher diagonal (labels sampled from the model)",
          reference="Wang et al., EigenDamage, ICML 2019")
def obdc(num_classes: int = 1000, **_):
    return OBDCImportance(num_classes=num_classes)
