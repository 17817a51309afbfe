"""A sparse training's before/after histogram of group norms, one PNG for the trial's MLflow run.

The norms are :func:`pruning.sparsity.group_norms` of the dense and the sparse-trained model, each channel's divided
by the largest of its group (:func:`pruning.sparsity.relative_norms`); the x axis is logarithmic, so channels driven
towards zero spread out to the left instead of piling up in one bar, and the thresholds of the sparsity figures
(1% and 10% of the group's largest) are drawn as vertical lines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pruning import fileio
from pruning.sparsity import EXTRA_THRESHOLDS, THRESHOLD, relative_norms, sparsity_share

FLOOR = 1e-3  # relative norms below this (exact zeros included) go into the first bin


def sparsity_plot(before: Sequence[np.ndarray], after: Sequence[np.ndarray], out: Path,
                  title: str = "") -> Optional[Path]:
    """Write the histogram of relative group norms before and after sparse training to ``out`` (atomically);
    None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rel = {"before": relative_norms(before), "after": relative_norms(after)}
    low = min([FLOOR] + [float(r[r > 0].min()) for r in rel.values() if (r > 0).any()])
    bins = np.logspace(np.log10(low), 0, 41)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for (label, r), color in zip(rel.items(), ("tab:blue", "tab:orange")):
        ax.hist(np.clip(r, low, 1.0), bins=bins, alpha=0.55, color=color,
                label=f"{label}: {sparsity_share(r, THRESHOLD):.1%} < {THRESHOLD:g}, "
                      f"{sparsity_share(r, EXTRA_THRESHOLDS[0]):.1%} < {EXTRA_THRESHOLDS[0]:g}")
    for t in (THRESHOLD, *EXTRA_THRESHOLDS):
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("channel norm / largest norm of its group")
    ax.set_ylabel("channels")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "group norms before and after sparse training", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out
