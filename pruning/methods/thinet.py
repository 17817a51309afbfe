"""ThiNet (Luo et al., ICCV 2017): greedily remove the channels that least change the next layer's output."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch

from .base import CRITERION, register
from .contributions import ConsumerImportance, ordered_scores

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


class ThiNetImportance(ConsumerImportance):
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
        return ordered_scores(order, errors, gram.shape[0])


@register("thinet", CRITERION, needs_data=True,
          summary="greedy: remove channels that least change the next layer's sampled outputs",
          reference="Luo et al., ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression, ICCV 2017")
def thinet(samples_per_image: int = 10, **_):
    return ThiNetImportance(samples_per_image=samples_per_image)
