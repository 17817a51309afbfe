"""The statistics behind the leaderboard: intervals, paired tests, tied ranks, Friedman/Nemenyi and Kendall's tau.

Pure functions on arrays (numpy, scipy, statsmodels); the only file written is the critical-difference diagram.

Data model: one trial's test-set correctness is a 0/1 vector over the test images, in the same image order for
every trial.  A cell (method, speedup) holds one trial per seed, so a ``correct[seed, image]`` array.  Accuracy is
in percent (0-100) throughout.  Two kinds of variation are measured separately: over seeds (training noise,
:func:`seed_interval`) and over test images (the finite test set, :func:`bootstrap_interval`,
:func:`paired_comparison`, :func:`kendall_interval`).  Resampling functions take a ``seed`` and are deterministic.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

#: elements per resampling batch (resamples x images), so that 10 000 images x 9 999 resamples stay in ~32 MB
_BATCH_ELEMENTS = 1 << 22


def _batch(n: int) -> int:
    return max(1, _BATCH_ELEMENTS // max(n, 1))


def _per_image(correct) -> np.ndarray:
    """Per-image correctness as floats in [0, 1]: a 1D vector as is, a ``[seed, image]`` array averaged over seeds."""
    x = np.asarray(correct, dtype=float)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty correct[image] or correct[seed, image] array, got shape {x.shape}")
    return x


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean over seeds with its Student-t interval: ``mean +- t_{(1+c)/2, n-1} * std / sqrt(n)``.

    ``values`` are one number per seed (e.g. accuracies).  Seeds are few (3-5), so the t distribution, not the
    normal, gives the interval's width; ``std`` is the sample standard deviation (ddof=1).  With one seed there is
    no spread to estimate: ``std``, ``lo`` and ``hi`` are None.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("seed_interval needs at least one value")
    n, mean = int(x.size), float(x.mean())
    if n == 1:
        return {"mean": mean, "std": None, "lo": None, "hi": None, "n": 1}
    std = float(x.std(ddof=1))
    if std == 0.0:
        lo = hi = mean
    else:
        lo, hi = (float(v) for v in stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n)))
    return {"mean": mean, "std": std, "lo": lo, "hi": hi, "n": n}


def bootstrap_interval(correct, confidence: float = 0.95, n_resamples: int = 9999,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of accuracy (percent) over test images: how much the finite test set moves it.

    ``correct`` is one trial's 0/1 vector (a ``[seed, image]`` array is first averaged over seeds).  The percentile
    method, not BCa: BCa's acceleration is undefined when every image is right (or wrong), while the percentile
    interval is then simply the point itself.
    """
    x = _per_image(correct)
    res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, batch=_batch(x.size), method="percentile",
                          confidence_level=confidence, rng=np.random.default_rng(seed))
    return float(100.0 * res.confidence_interval.low), float(100.0 * res.confidence_interval.high)


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def paired_comparison(a, b, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> dict:
    """Accuracy difference ``a - b`` (percent) of two methods on the same images and seeds, with interval and p-value.

    ``a`` and ``b`` are ``correct[seed, image]`` arrays with paired rows (same seeds) and columns (same images); each
    is averaged over seeds per image.  Pairing by image removes the images' shared difficulty from the noise, so
    small real differences show.  ``lo``/``hi``: percentile bootstrap resampling image indices, applied to both
    methods.  ``p``: two-sided paired permutation test, i.e. randomly swapping a and b per image (sign flips of
    the per-image difference), via ``scipy.stats.permutation_test(permutation_type='samples')``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_comparison needs arrays of one shape (same seeds and images), got {a.shape}, {b.shape}")
    x, y = _per_image(a), _per_image(b)
    batch = _batch(x.size)
    boot = stats.bootstrap((x, y), _mean_difference, paired=True, n_resamples=n_resamples, batch=batch,
                           method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed))
    perm = stats.permutation_test((x, y), _mean_difference, permutation_type="samples", n_resamples=n_resamples,
                                  batch=batch, rng=np.random.default_rng(seed))
    return {"diff": float(100.0 * (x.mean() - y.mean())), "lo": float(100.0 * boot.confidence_interval.low),
            "hi": float(100.0 * boot.confidence_interval.high), "p": float(perm.pvalue)}


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses to reject under Holm's step-down correction (family-wise error rate <= ``alpha``).

    Many pairwise tests at once would find "significant" differences by chance; Holm controls that like Bonferroni
    but rejects more (statsmodels' ``multipletests(method='holm')``).
    """
    if len(pvalues) == 0:
        return []
    from statsmodels.stats.multitest import multipletests
    reject = multipletests(np.asarray(pvalues, dtype=float), alpha=alpha, method="holm")[0]
    return [bool(r) for r in reject]


def tied_ranks(means: Mapping[str, float], significant: Callable[[str, str], bool]) -> dict[str, int]:
    """Competition ranks (1 = best) that tie methods whose difference from their group's leader is not significant.

    Methods are sorted by mean, highest first.  The first leads a group; each next method joins the current
    leader's group (same rank) while ``significant(leader, method)`` is false; the first that is significantly
    worse leads a new group, ranked by its 1-based position.  E.g. a > b > c > d, a~b, a vs c significant, c~d:
    ranks 1, 1, 3, 3.  Comparing with the leader, not the neighbour, keeps a chain of small steps from tying a
    method with one far better.
    """
    order = sorted(means, key=lambda name: -means[name])
    ranks: dict[str, int] = {}
    leader = None
    for position, name in enumerate(order, start=1):
        if leader is None or significant(leader, name):
            leader, rank = name, position
        ranks[name] = rank
    return ranks


def friedman(scores) -> dict:
    """Friedman test that methods (columns) perform alike over blocks (rows, here one (speedup, seed) each).

    Non-parametric: each block ranks the methods (1 = highest score, ties averaged) and the test asks whether the
    average ranks differ more than chance allows; it needs no assumption on how accuracies are distributed and
    gives every block the same weight.  ``average_ranks`` is in column order.  With fewer than 3 methods or 2
    blocks, or no variation at all, ``statistic`` and ``p`` are None.
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"friedman needs a blocks x methods array, got shape {x.shape}")
    average_ranks = [float(r) for r in stats.rankdata(-x, axis=1).mean(axis=0)] if x.size else []
    statistic = p = None
    if x.shape[1] >= 3 and x.shape[0] >= 2:
        with np.errstate(invalid="ignore", divide="ignore"):
            res = stats.friedmanchisquare(*x.T)
        if np.isfinite(res.statistic):
            statistic, p = float(res.statistic), float(res.pvalue)
    return {"statistic": statistic, "p": p, "average_ranks": average_ranks}


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical value ``q_alpha`` for ``k`` methods (Demsar 2006, Table 5a): the studentized range
    quantile at infinite degrees of freedom divided by sqrt(2) (e.g. k=10, alpha=0.05: 3.164)."""
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0))


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference (Demsar 2006): ``q_alpha * sqrt(k (k + 1) / (6 N))``.

    Two of ``k`` methods whose average ranks over ``N`` blocks differ by at least this differ significantly (all
    pairs at once, at level ``alpha``); used after :func:`friedman` rejects, and drawn by :func:`cd_diagram`.
    """
    if k < 2 or n_blocks < 1:
        raise ValueError(f"nemenyi_cd needs k >= 2 methods and N >= 1 blocks, got k={k}, N={n_blocks}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def cliques(average_ranks: Mapping[str, float], cd: float) -> list[list[str]]:
    """Maximal runs of methods (in rank order) whose average ranks all differ by less than ``cd``: the groups a
    critical-difference diagram joins with a bar.  Single methods are not groups."""
    names = sorted(average_ranks, key=lambda name: average_ranks[name])
    ranks = [average_ranks[name] for name in names]
    groups, last = [], 0
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > max(i, last):  # the group's end moves only right: one ending no further lies inside the previous
            groups.append(names[i:j + 1])
            last = j
    return groups


def cd_diagram(average_ranks: Mapping[str, float], cd: Optional[float], path: os.PathLike | str,
               title: Optional[str] = None) -> Path:
    """Write a Demsar-style critical-difference diagram (PNG) and return its path.

    A rank axis (1, the best, at the left); each method is a line from its average rank to its name, the better
    half named on the left, the worse half on the right; a bar of length ``cd`` at the top, and a thick bar joins
    each maximal group of methods whose average ranks differ by less than ``cd`` (not significantly different).
    ``cd`` None draws the ranks only.  Written atomically (a temporary file beside ``path``, then replaced).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pruning.fileio import atomic_path

    names = sorted(average_ranks, key=lambda name: average_ranks[name])
    k = len(names)
    if k == 0:
        raise ValueError("cd_diagram needs at least one method")
    lo, hi = 1, max(k, math.ceil(max(average_ranks.values())), 2)
    groups = cliques(average_ranks, cd) if cd is not None else []
    left = (k + 1) // 2

    # Layout in inches: x in rank units with room for names on both sides, y downward from the top.
    width, text_space = 10.0, 2.6
    per_rank = (width - 2 * text_space) / (hi - lo)
    pad = text_space / per_rank
    row, axis_y = 0.26, 1.15 if title else 0.85
    group_y = axis_y + 0.22
    first_row = group_y + 0.14 * len(groups) + 0.15
    height = first_row + row * max(left, k - left) + 0.2

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if title:
        ax.text((lo + hi) / 2, 0.2, title, ha="center", va="top", fontsize=12)

    ax.plot([lo, hi], [axis_y, axis_y], color="black", lw=1)
    for tick in range(lo, hi + 1):
        ax.plot([tick, tick], [axis_y - 0.1, axis_y], color="black", lw=1)
        ax.text(tick, axis_y - 0.14, str(tick), ha="center", va="bottom", fontsize=9)
    for tick in np.arange(lo + 0.5, hi, 1.0):
        ax.plot([tick, tick], [axis_y - 0.05, axis_y], color="black", lw=0.7)

    if cd is not None:
        cd_y = axis_y - 0.45
        ax.plot([lo, lo + cd], [cd_y, cd_y], color="black", lw=1.5)
        for end in (lo, lo + cd):
            ax.plot([end, end], [cd_y - 0.05, cd_y + 0.05], color="black", lw=1.5)
        ax.text(lo + cd / 2, cd_y - 0.07, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)

    for i, name in enumerate(names):
        rank = average_ranks[name]
        if i < left:  # best on the top row, lines never cross
            y, x_end, ha = first_row + row * i, lo - 0.1 * pad, "right"
        else:  # worst on the top row
            y, x_end, ha = first_row + row * (k - 1 - i), hi + 0.1 * pad, "left"
        ax.plot([rank, rank, x_end], [axis_y, y, y], color="black", lw=0.8)
        label = f"{name} ({rank:.2f})" if ha == "right" else f"({rank:.2f}) {name}"
        ax.text(x_end + (-0.03 if ha == "right" else 0.03) * pad, y, label, ha=ha, va="center", fontsize=9)

    for g, group in enumerate(groups):
        y = group_y + 0.14 * g
        ax.plot([average_ranks[group[0]] - 0.05, average_ranks[group[-1]] + 0.05], [y, y], color="black", lw=4,
                solid_capstyle="butt")

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return Path(path)


def kendall_interval(x, y, confidence: float = 0.95, n_resamples: int = 999, seed: int = 0) -> dict:
    """Kendall's tau between two rankings of the same methods, with a bootstrap interval over test images.

    ``x`` and ``y`` are ``[method, image]`` arrays of per-image correctness (already averaged over seeds) on the
    same images, e.g. the methods at 2x and at 4x, or at 4x from two disjoint sets of seeds.  Each ranking is by
    mean accuracy; ``tau`` (tau-b, ties allowed) is from the full data.  The interval resamples image indices,
    the same ones for both rankings, and recomputes tau (percentile method): how stable the agreement is against
    the choice of test images.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(f"kendall_interval needs two [method, image] arrays of one shape with >= 2 methods, "
                         f"got {x.shape}, {y.shape}")

    def tau(index):
        return stats.kendalltau(x[:, index].mean(axis=1), y[:, index].mean(axis=1)).statistic

    full = float(tau(np.arange(x.shape[1])))
    res = stats.bootstrap((np.arange(x.shape[1]),), tau, vectorized=False, n_resamples=n_resamples,
                          method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed))
    return {"tau": full, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high)}
