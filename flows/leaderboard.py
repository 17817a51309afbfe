"""PruningBench's leaderboard from a benchmark summary (reports/benchmark.json): pure aggregation, no tracking.

A cell is one (method, scope, speedup) with a trial per seed.  Per cell: the mean finetuned accuracy over seeds with
its std and 95% Student-t interval, the change from the dense model, the share of parameters kept, and how many
seeds finished.  Per trial: a 95% bootstrap interval over the test images (in its record).  At each speedup the
methods are ranked with ties: a method shares the rank of its group's leader unless a paired permutation test over
the same test images and seeds finds it worse (p < 0.05, see :func:`flows.stats.tied_ranks`); rows are ordered by
their mean tied rank.  Over all (speedup, seed) blocks: a Friedman test and the Nemenyi critical difference,
drawn as a critical-difference diagram.  Rank consistency is Kendall's tau with a bootstrap interval over test
images, between each pair of speedups and between two disjoint halves of the seeds at each speedup.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pruning import fileio

from . import stats

LONG_COLUMNS = ["rank", "method", "criterion", "sparsifier", "scope", "speedup_target", "seed", "speedup", "status",
                "acc_dense", "acc_pruned", "acc_finetuned", "acc_finetuned_lo", "acc_finetuned_hi", "delta_acc",
                "params_kept", "macs_kept", "latency_speedup", "seconds_prune", "seconds_sparsify",
                "seconds_finetune", "seconds_total", "error"]
CELL_COLUMNS = ["rank", "method", "criterion", "sparsifier", "scope", "speedup_target", "seeds", "failed",
                "acc_mean", "acc_std", "acc_lo", "acc_hi", "delta_acc", "params_kept", "macs_kept", "speedup",
                "latency_speedup"]
ALPHA = 0.05            # significance level of the paired comparisons behind tied ranks and of the Friedman test
PAIRED_RESAMPLES = 2000  # per paired comparison (about 0.1 s at 540 images); p-values resolve down to 0.0005
KENDALL_RESAMPLES = 999


METRIC_ACCURACY = "test accuracy (%)"  # what acc_* hold: a classification trial's top-1 accuracy
METRIC_DETECTION = "mAP50-95 (%)"      # ... and a detection trial's mAP50-95 on the validation images, in percent


def metric_of(summary: dict) -> str:
    """The headline score the summary's ``acc_*`` fields hold and its cells rank by."""
    return summary.get("metric") or METRIC_ACCURACY


def short_metric(summary: dict) -> str:
    return "acc" if metric_of(summary) == METRIC_ACCURACY else metric_of(summary).split(" ")[0]


def target_name(summary: dict) -> str:
    """What the speedup targets divide (``prune.target``): methods in one column are compared at equal values of
    it, so a latency-targeted sweep ranks methods at equal measured latency."""
    target = summary.get("target") or "macs"
    if target == "latency":
        return f"measured latency (batch {summary.get('latency_batch', 1)})"
    return {"macs": "MACs", "params": "params"}[target]


def shown_latency_batch(summary: dict) -> int:
    """The batch of the latency speedups a board shows: the target's for a latency target (the equalized value,
    as confirmed at the end of pruning), batch 1 otherwise."""
    return summary.get("latency_batch", 1) if summary.get("target") == "latency" else 1


def _latency_speedup(t: dict) -> Optional[float]:
    return t.get("achieved") if t.get("target") == "latency" else t.get("latency_speedup")


SUMMARY_KEYS = {"model": str, "dataset": str, "acc_dense": (int, float), "trials": list}


def load_summary(path: Path) -> dict:
    """A benchmark summary (``reports/benchmark.json``), checked for what the leaderboard reads."""
    from pruning.errors import PruneBenchError
    summary = fileio.read_json(path)
    if not isinstance(summary, dict):
        raise PruneBenchError(f"{path} is not a prunebench benchmark summary (a JSON object from "
                              f"`prunebench benchmark`)")
    wrong = [k for k, kind in SUMMARY_KEYS.items() if not isinstance(summary.get(k), kind)]
    if wrong:
        raise PruneBenchError(f"{path} is not a prunebench benchmark summary: missing or malformed "
                              f"{', '.join(wrong)}; run `prunebench benchmark` to write one")
    bad = [i for i, t in enumerate(summary["trials"]) if not isinstance(t, dict) or not {"method", "scope",
           "speedup_target", "status"} <= set(t)]
    if bad:
        raise PruneBenchError(f"{path}: trial entries {bad[:5]} lack method, scope, speedup_target or status")
    return summary


def seed_subset(summary: dict, seeds: list, path: Path) -> dict:
    """The summary with only these seeds' trials; a subset that leaves no trial is refused (PruneBenchError)."""
    from pruning.errors import PruneBenchError
    kept = [t for t in summary["trials"] if t.get("seed") in seeds]
    if not kept:
        found = sorted({t.get("seed") for t in summary["trials"]}, key=str)
        raise PruneBenchError(f"{path} has no trials with seeds {', '.join(map(str, seeds))} (its seeds: "
                              f"{', '.join(map(str, found))})")
    return {**summary, "trials": kept, "seeds": [s for s in summary.get("seeds", seeds) if s in seeds]}


TUNED = "tuned"  # the scope of tuned trials (prunebench tune): listed beside the untuned rows, not ranked


def with_tuned(summary: dict, tuned: dict) -> dict:
    """The summary plus the tuned trials (``reports/tuned.json``) of its model, dataset and speedups."""
    speedups = {float(s) for s in summary.get("speedups", [])}
    extra = [t for t in tuned.values() if t.get("model") == summary["model"] and t.get("dataset") ==
             summary["dataset"] and float(t["speedup_target"]) in speedups]
    if not extra:
        return summary
    trials = [t for t in summary["trials"] if t.get("scope") != TUNED] + sorted(extra, key=lambda t: t["method"])
    scopes = [s for s in summary.get("scopes", []) if s != TUNED] + [TUNED]
    return {**summary, "trials": trials, "scopes": scopes}


def _split(method: str) -> tuple[str, str]:
    crit, _, sp = method.partition("+")
    return crit, sp or "none"


def _ok(t: dict) -> bool:
    return t.get("status") == "ok" and t.get("acc_finetuned") is not None


def _speedup(t: dict) -> float:
    return float(t["speedup_target"])


def long_rows(summary: dict) -> list[dict]:
    """One row per trial, ranked among the methods of its (speedup, scope, seed)."""
    rows = []
    for t in summary["trials"]:
        crit, sp = _split(t["method"])
        row = {"method": t["method"], "criterion": crit, "sparsifier": sp, "scope": t["scope"],
               "speedup_target": t["speedup_target"], "seed": t.get("seed"), "status": t.get("status", "failed"),
               "error": t.get("error", "")}
        if _ok(t):
            row.update({k: t.get(k) for k in ("speedup", "acc_dense", "acc_pruned", "acc_finetuned",
                                              "acc_finetuned_lo", "acc_finetuned_hi", "latency_speedup",
                                              "seconds_prune", "seconds_sparsify", "seconds_finetune",
                                              "seconds_total")})
            row["delta_acc"] = t["acc_finetuned"] - t["acc_dense"]
            row["params_kept"] = t["params_pruned"] / t["params_dense"]
            row["macs_kept"] = t["macs_pruned"] / t["macs_dense"]
        rows.append(row)

    def block(r):
        return (r["speedup_target"], r["scope"], -1 if r["seed"] is None else r["seed"])
    for (_, scope, _), group in itertools.groupby(sorted(rows, key=block), key=block):
        if scope == TUNED:
            continue
        ranked = sorted((r for r in group if r["status"] == "ok"), key=lambda r: -r["acc_finetuned"])
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
    return rows


# --------------------------------------------------------------------------- cells: a (method, scope, speedup)
def _mean(values: list) -> float:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else float("nan")


def _correct(trials: list[dict]) -> Optional[dict]:
    """seed -> per-image 0/1 array, when every trial recorded one on the same number of images."""
    vectors = {t.get("seed"): t.get("test_correct") for t in trials}
    if not vectors or any(not v for v in vectors.values()) or len({len(v) for v in vectors.values()}) != 1:
        return None
    return {seed: np.frombuffer(v.encode(), dtype=np.uint8) == ord("1") for seed, v in vectors.items()}


def make_cell(method: str, scope: str, speedup: float, trials: list[dict]) -> dict:
    ok = [t for t in trials if _ok(t)]
    crit, sp = _split(method)
    cell = {"method": method, "criterion": crit, "sparsifier": sp, "scope": scope, "speedup_target": speedup,
            "status": "ok" if ok else "failed", "seeds": len(ok), "failed": len(trials) - len(ok),
            "error": next((t.get("error", "") for t in trials if not _ok(t)), "")}
    if not ok:
        return cell
    acc = stats.seed_interval([t["acc_finetuned"] for t in ok])
    cell.update({"acc_mean": acc["mean"], "acc_std": acc["std"], "acc_lo": acc["lo"], "acc_hi": acc["hi"],
                 "delta_acc": _mean([t["acc_finetuned"] - t["acc_dense"] for t in ok]),
                 "params_kept": _mean([t["params_pruned"] / t["params_dense"] for t in ok]),
                 "macs_kept": _mean([t["macs_pruned"] / t["macs_dense"] for t in ok]),
                 "speedup": _mean([t.get("speedup") for t in ok]),
                 "latency_speedup": _mean([_latency_speedup(t) for t in ok]),
                 "map50": _mean([t.get("map50_finetuned") for t in ok]),
                 "seconds_total": _mean([t.get("seconds_total") for t in ok]),
                 "seconds_prune": _mean([t.get("seconds_prune") for t in ok]),
                 # sparse training runs once per method and seed, shared by its speedups
                 "seconds_sparsify": _mean([t.get("seconds_sparsify") for t in ok]),
                 "correct": _correct(ok), "by_seed": {t.get("seed"): t["acc_finetuned"] for t in ok}})
    return cell


def cells_of(summary: dict) -> dict:
    """(method, scope, speedup) -> cell, in the summary's order."""
    grouped: dict = {}
    for t in summary["trials"]:
        grouped.setdefault((t["method"], t["scope"], _speedup(t)), []).append(t)
    return {key: make_cell(*key, trials) for key, trials in grouped.items()}


def paired(a: dict, b: dict) -> Optional[dict]:
    """Cell a against cell b over the seeds both finished and the same test images (None: nothing to pair)."""
    if a.get("correct") is None or b.get("correct") is None:
        return None
    seeds = sorted(set(a["correct"]) & set(b["correct"]), key=str)
    if not seeds:
        return None
    return stats.paired_comparison(np.stack([a["correct"][s] for s in seeds]),
                                   np.stack([b["correct"][s] for s in seeds]), n_resamples=PAIRED_RESAMPLES)


def rank_cells(cells: dict) -> None:
    """Tied ranks per (speedup, scope): each cell gets ``rank`` and ``vs_leader`` (its paired comparison with the
    leader of its group; None for a leader, or when no per-image results allow one: then ranks are strict)."""
    by_block: dict = {}
    for (method, scope, speedup), cell in cells.items():
        if scope != TUNED and cell["status"] == "ok":
            by_block.setdefault((speedup, scope), {})[method] = cell
    for group in by_block.values():
        comparisons: dict = {}

        def significant(leader: str, method: str) -> bool:
            result = paired(group[leader], group[method])
            comparisons[method] = None if result is None else {**result, "leader": leader}
            return result is None or result["p"] < ALPHA
        ranks = stats.tied_ranks({m: c["acc_mean"] for m, c in group.items()}, significant)
        for method, cell in group.items():
            cell["rank"] = ranks[method]
            cell["vs_leader"] = comparisons.get(method)


# --------------------------------------------------------------------------- significance over all blocks
def friedman_of(summary: dict, scope: str) -> Optional[dict]:
    """Friedman test over the (speedup, seed) blocks where every method of ``scope`` finished, with the average
    ranks and the Nemenyi critical difference (None with fewer than 3 methods or 2 complete blocks)."""
    acc: dict = {}
    for t in summary["trials"]:
        if t["scope"] == scope and _ok(t):
            acc.setdefault((_speedup(t), t.get("seed")), {})[t["method"]] = t["acc_finetuned"]
    everyone = sorted({m for block in acc.values() for m in block})
    blocks = sorted(acc, key=str)
    # the test needs complete blocks: a method that failed in some block is left out (and named), not imputed
    methods = [m for m in everyone if all(m in acc[b] for b in blocks)]
    if len(methods) < 3 or len(blocks) < 2:
        return None
    result = stats.friedman(np.array([[acc[b][m] for m in methods] for b in blocks]))
    average = dict(zip(methods, (float(r) for r in result["average_ranks"])))
    return {"statistic": result["statistic"], "p": result["p"], "average_ranks": average, "blocks": len(blocks),
            "methods": len(methods), "left_out": [m for m in everyone if m not in methods],
            "cd": stats.nemenyi_cd(len(methods), len(blocks), ALPHA)}


# --------------------------------------------------------------------------- rank consistency
def _per_image(cells: list[dict], seeds: Optional[list] = None) -> Optional[np.ndarray]:
    """[method, image] correctness averaged over ``seeds`` (all the cell's seeds when None)."""
    rows = []
    for c in cells:
        correct = c.get("correct")
        chosen = [s for s in (correct or {}) if seeds is None or s in seeds]
        if not chosen:
            return None
        rows.append(np.mean([correct[s] for s in chosen], axis=0))
    return np.stack(rows) if len({len(r) for r in rows}) == 1 else None


def _tau(x_cells: list[dict], y_cells: list[dict], x_seeds=None, y_seeds=None) -> Optional[dict]:
    if len(x_cells) < 2:
        return None
    x, y = _per_image(x_cells, x_seeds), _per_image(y_cells, y_seeds)
    if x is not None and y is not None and x.shape == y.shape:
        return stats.kendall_interval(x, y, n_resamples=KENDALL_RESAMPLES)
    # no per-image results (detection's mAP, or an old summary): the point estimate over seed means alone
    from scipy.stats import kendalltau
    tau = kendalltau([_seed_mean(c, x_seeds) for c in x_cells], [_seed_mean(c, y_seeds) for c in y_cells]).statistic
    return None if tau != tau else {"tau": float(tau), "lo": None, "hi": None}


def _seed_mean(cell: dict, seeds: Optional[list]) -> float:
    """The cell's mean score over ``seeds`` (all of them when None)."""
    if seeds is None:
        return cell["acc_mean"]
    return _mean([cell.get("by_seed", {}).get(s) for s in seeds])


def _seeds_of(cell: dict) -> set:
    return set(cell.get("correct") or cell.get("by_seed") or {})


def rank_consistency(summary: dict, cells: dict) -> dict:
    """Kendall's tau (with a bootstrap interval over test images) between the rankings at each pair of speedups
    (``pairs``, seeds averaged) and between two disjoint halves of the seeds at each speedup (``seed_halves``);
    ``mean``: the mean tau over speedup pairs."""
    ok = {k: c for k, c in cells.items() if c["status"] == "ok" and k[1] != TUNED}
    pairs, halves = {}, {}
    for scope in sorted({k[1] for k in ok}):
        by_speedup: dict = {}
        for (method, sc, speedup), c in ok.items():
            if sc == scope:
                by_speedup.setdefault(speedup, {})[method] = c
        for a, b in itertools.combinations(sorted(by_speedup), 2):
            common = sorted(set(by_speedup[a]) & set(by_speedup[b]))
            tau = _tau([by_speedup[a][m] for m in common], [by_speedup[b][m] for m in common])
            if tau:
                pairs[f"{scope}:{a:g}x-{b:g}x"] = tau
        seeds = sorted({s for c in ok.values() if c["scope"] == scope for s in _seeds_of(c)}, key=str)
        if len(seeds) >= 2:
            first, second = seeds[:len(seeds) // 2], seeds[len(seeds) // 2:]
            for speedup, group in sorted(by_speedup.items()):
                both = [c for c in group.values() if set(seeds) <= _seeds_of(c)]
                tau = _tau(both, both, first, second)
                if tau:
                    halves[f"{scope}:{speedup:g}x"] = {**tau, "seeds_a": first, "seeds_b": second}
    vals = [v["tau"] for v in pairs.values()]
    return {"pairs": pairs, "seed_halves": halves, "mean": sum(vals) / len(vals) if vals else None}


# --------------------------------------------------------------------------- the board
@dataclass
class Board:
    """Everything the reports show, computed once from a summary."""
    summary: dict
    cells: dict
    rows: list
    friedman: dict = field(default_factory=dict)   # scope -> friedman_of
    consistency: dict = field(default_factory=dict)

    @property
    def speedups(self) -> list:
        return sorted({k[2] for k in self.cells})


def build(summary: dict) -> Board:
    """Cells, tied ranks, and one row per (method, scope) ordered by mean tied rank over speedups."""
    cells = cells_of(summary)
    rank_cells(cells)
    speedups = sorted({k[2] for k in cells})
    table: dict = {}
    for (method, scope, speedup), cell in cells.items():
        row = table.setdefault((method, scope), {"method": method, "criterion": cell["criterion"],
                                                 "sparsifier": cell["sparsifier"], "scope": scope, "by_speedup": {}})
        row["by_speedup"][speedup] = cell
    n_methods = len(table)
    rows = []
    for row in table.values():
        ok = [c for c in row["by_speedup"].values() if c["status"] == "ok"]
        ranks = [row["by_speedup"].get(s, {}).get("rank", n_methods + 1) for s in speedups]
        row["mean_rank"] = sum(ranks) / len(ranks) if row["scope"] != TUNED else float("nan")
        row["mean_acc"] = _mean([c["acc_mean"] for c in ok])
        row["step_time"] = _mean([c["seconds_prune"] for c in ok])
        row["reg_time"] = max((c["seconds_sparsify"] for c in ok), default=float("nan"))
        row["speedups"] = speedups
        rows.append(row)
    rows.sort(key=lambda r: (r["scope"] == TUNED, r["mean_rank"] if r["scope"] != TUNED else 0,
                             -(r["mean_acc"] if r["mean_acc"] == r["mean_acc"] else -1e9)))
    for r in rows:
        r["rank"] = _fmt(r["mean_rank"], ".1f") if r["scope"] != TUNED else "-"
    scopes = sorted({k[1] for k in cells if k[1] != TUNED})
    friedman = {sc: f for sc in scopes if (f := friedman_of(summary, sc))}
    return Board(summary, cells, rows, friedman, rank_consistency(summary, cells))


# --------------------------------------------------------------------------- display
def _fmt(v, spec=".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _cell(c: Optional[dict], n_seeds: int) -> str:
    """``97.41 ±0.52 [2]`` : mean ± half the 95% interval over seeds, the tied rank; ``(2/3)`` when seeds failed."""
    if not c:
        return "-"
    if c["status"] != "ok":
        return f"failed ({c['failed']})"
    half = "" if c.get("acc_hi") is None else f" ±{(c['acc_hi'] - c['acc_lo']) / 2:.2f}"
    seeds = "" if c["seeds"] == n_seeds else f" ({c['seeds']}/{c['seeds'] + c['failed']} seeds)"
    rank = f" [{c['rank']}]" if "rank" in c else ""
    return f"{c['acc_mean']:.2f}{half}{rank}{seeds}"


def _n_seeds(board: Board) -> int:
    return max((c["seeds"] + c["failed"] for c in board.cells.values()), default=0)


def table_rows(board: Board) -> list[dict]:
    """Flat rows for display (Prefect table artifact, rich, Markdown)."""
    flat, n = [], _n_seeds(board)
    short, detection = short_metric(board.summary), board.summary.get("task") == "detect"
    for r in board.rows:
        d = {"mean rank": r["rank"], "method": r["method"], "scope": r["scope"]}
        for s in r["speedups"]:
            cell = r["by_speedup"].get(s) or {}
            d[f"{short}@{s:g}x [rank]"] = _cell(cell, n)
            d[f"Δ@{s:g}x"] = _fmt(cell.get("delta_acc"), "+.2f")
            if detection:
                d[f"mAP50@{s:g}x"] = _fmt(cell.get("map50"), ".3f")
            d[f"params kept@{s:g}x"] = _fmt(cell.get("params_kept"), ".1%")
            d[f"MACs / latency speedup@{s:g}x"] = _speedups(cell)
        d["step time (s)"] = _fmt(r["step_time"], ".2f")
        d["reg time (s)"] = _fmt(r["reg_time"], ".1f")
        flat.append(d)
    return flat


def _speedups(c: dict) -> str:
    """``2.01x / 1.43x``: the MACs speedup reached beside the measured latency speedup (means over seeds)."""
    if c.get("status") != "ok":
        return "-"
    return f"{_fmt(c.get('speedup'))}x / {_fmt(c.get('latency_speedup'))}x"


def recipe_lines(summary: dict) -> list[str]:
    recipe = summary.get("recipe") or {}
    if not recipe:
        return []
    return ["Recipe: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in recipe.items() if v is not None) + "."]


def _interval(t: Optional[dict]) -> str:
    if not t:
        return "-"
    if t.get("lo") is None:
        return f"{t['tau']:.3f}"
    return f"{t['tau']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}]"


def significance_lines(board: Board) -> list[str]:
    lines = []
    for scope, f in board.friedman.items():
        p = "-" if f["p"] is None else f"{f['p']:.2g}"
        lines.append(f"- Friedman test ({scope}): {f['methods']} methods over {f['blocks']} (speedup, seed) blocks, "
                     f"chi2 {_fmt(f['statistic'])}, p = {p}; Nemenyi critical difference {f['cd']:.2f} ranks "
                     f"(alpha {ALPHA:g}): methods whose average ranks differ by less are not distinguishable "
                     f"(critical_difference.png)."
                     + (f" Left out (not finished in every block): {', '.join(f['left_out'])}." if f["left_out"]
                        else ""))
    if not board.friedman:
        lines.append("- Friedman test: needs 3 or more methods and 2 or more (speedup, seed) blocks.")
    tau = board.consistency
    for k, v in tau["pairs"].items():
        lines.append(f"- Kendall tau between the rankings at {k.split(':')[1]} ({k.split(':')[0]}): {_interval(v)}")
    for k, v in tau["seed_halves"].items():
        lines.append(f"- Kendall tau at {k.split(':')[1]} ({k.split(':')[0]}) between seeds {v['seeds_a']} and "
                     f"{v['seeds_b']}: {_interval(v)}")
    if not tau["pairs"] and not tau["seed_halves"]:
        lines.append("- rank consistency needs two speedups or two seeds")
    return lines


def markdown(board: Board) -> str:
    summary, flat = board.summary, table_rows(board)
    lines = [f"# Leaderboard: {summary['model']} on {summary['dataset']}", "",
             *recipe_lines(summary), "", _legend(board), ""]
    if flat:
        cols = list(flat[0])
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        lines += ["| " + " | ".join(str(d[c]) for c in cols) + " |" for d in flat]
    lines += ["", "## Significance and rank consistency", "", *significance_lines(board)]
    failed = [t for t in summary["trials"] if t.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- {t['method']} @ {t['speedup_target']:g}x ({t['scope']}, seed {t.get('seed')}): "
                  f"{t.get('error', '')}" for t in failed]
    return "\n".join(lines) + "\n"


def _legend(board: Board) -> str:
    summary, metric = board.summary, metric_of(board.summary)
    if summary.get("task") == "detect":  # no per-image correctness to pair: ranks follow the means
        ranking = ("[its rank at that speedup] by the mean (mAP is a dataset-level score, so no per-image paired "
                   "test applies: read the intervals over seeds before calling two methods apart)")
    else:
        ranking = (f"[its rank at that speedup]: methods share a rank unless a paired permutation test over the "
                   f"same test images and seeds finds them worse than their group's leader (p < {ALPHA:g}, not "
                   f"corrected for multiple comparisons; the Friedman/Nemenyi test below is the family-wise view)")
    return (f"Dense {metric} {summary['acc_dense']:.2f}. Methods in one column are pruned to the same "
            f"{target_name(summary)} speedup. Each cell: finetuned {metric}, mean over "
            f"{_n_seeds(board)} seed(s) ± half its 95% t-interval over seeds, and {ranking}. Δ = change from "
            f"dense; MACs / latency speedup = dense over pruned MACs and measured batch-"
            f"{shown_latency_batch(summary)} CPU latency; step time = "
            f"pruning seconds, reg time = sparse-training seconds. Rows are ordered by mean rank over speedups.")


def flat_metrics(board: Board) -> dict:
    """The parent run's summary metrics: dense accuracy, rank consistency, the Friedman test."""
    m = {"acc_dense": board.summary["acc_dense"]}
    tau = board.consistency
    if tau["mean"] is not None:
        m["kendall_tau_mean"] = tau["mean"]
    for k, v in {**tau["pairs"], **tau["seed_halves"]}.items():
        name = "kendall_tau_" + ("seeds_" if k in tau["seed_halves"] else "") + k.split(":")[1].replace(".", "_")
        m.update({name: v["tau"], **({f"{name}_lo": v["lo"], f"{name}_hi": v["hi"]} if v.get("lo") is not None
                                     else {})})
    for scope, f in board.friedman.items():
        if f["p"] is not None:
            m[f"friedman_p_{scope}"] = f["p"]
        m[f"nemenyi_cd_{scope}"] = f["cd"]
    return m


def series_name(summary: dict, method: str, scope: str) -> str:
    """A method's name in metrics and plots: ``l2``, or ``l2@global`` when the benchmark ran several scopes, and
    ``l2@tuned`` for a tuned row, so that adding tuned rows never renames the untuned ones."""
    untuned_scopes = [s for s in summary.get("scopes", []) if s != TUNED]
    return method if scope != TUNED and len(untuned_scopes) <= 1 else f"{method}@{scope}"


def speedup_key(speedup_target) -> str:
    """``x2``, ``x2_5``: no dot, which DVC would read as one more level of nesting."""
    return f"x{float(speedup_target):g}".replace(".", "_")


CELL_METRICS = ("acc_mean", "acc_std", "acc_lo", "acc_hi", "delta_acc", "speedup", "params_kept", "latency_speedup",
                "rank", "seeds")


def metrics_json(board: Board) -> dict:
    """DVC metrics, numbers only (``dvc exp show`` flattens the nesting into ``l2.x2.acc_mean``): dense accuracy,
    trial counts, rank consistency and the Friedman test, and per method and speedup the mean accuracy over seeds
    with its std and interval, its change, the speedup reached, params and latency kept, tied rank and seeds
    finished; a cell with no finished seed is ``failed: 1``."""
    summary = board.summary
    metrics = {"trials": len(summary["trials"]),
               "trials_failed": sum(t.get("status") != "ok" for t in summary["trials"]),
               **{k: round(v, 4) for k, v in flat_metrics(board).items()}}
    for c in board.cells.values():
        entry = {"failed": int(c["status"] != "ok")}
        entry.update({k: round(c[k], 4) for k in CELL_METRICS if isinstance(c.get(k), (int, float))})
        name = series_name(summary, c["method"], c["scope"])
        metrics.setdefault(name, {})[speedup_key(c["speedup_target"])] = entry
    return metrics


PLOT_COLUMNS = ["method", "criterion", "sparsifier", "scope", "speedup_target", "seed", "speedup", "acc_dense",
                "acc_pruned", "acc_finetuned", "delta_acc", "params_kept", "macs_kept", "latency_speedup"]


def plot_rows(summary: dict) -> list[list]:
    """DVC plot data in long form, one row per finished trial (every seed): the chart colours by ``method``."""
    ok = sorted((r for r in long_rows(summary) if r["status"] == "ok"),
                key=lambda r: (r["method"], r["scope"], float(r["speedup_target"]), str(r["seed"])))
    rows = []
    for r in ok:
        r = {**r, "method": series_name(summary, r["method"], r["scope"])}
        rows.append([round(v, 4) if isinstance(v, float) else v for v in (r.get(c) for c in PLOT_COLUMNS)])
    return rows


def _plots(board: Board, out: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    summary, files = board.summary, {}
    metric = metric_of(summary)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for i, r in enumerate(board.rows):
        pts = [(s, c) for s, c in sorted(r["by_speedup"].items()) if c["status"] == "ok"]
        if not pts:
            continue
        label = series_name(summary, r["method"], r["scope"])
        shift = (i - len(board.rows) / 2) * 0.01  # side by side, so the intervals do not hide each other
        err = [[c["acc_mean"] - c["acc_lo"] if c.get("acc_lo") is not None else 0 for _, c in pts],
               [c["acc_hi"] - c["acc_mean"] if c.get("acc_hi") is not None else 0 for _, c in pts]]
        axes[0].errorbar([s * (1 + shift) for s, _ in pts], [c["acc_mean"] for _, c in pts], yerr=err, fmt="o-",
                         capsize=2, label=label)
        ranks = [(s, c["rank"]) for s, c in pts if "rank" in c]
        axes[1].plot([p[0] for p in ranks], [p[1] for p in ranks], "o-", label=label)
        axes[2].errorbar([c["latency_speedup"] for _, c in pts], [c["acc_mean"] for _, c in pts], yerr=err,
                         fmt="o-", capsize=2, label=label)
    for ax in (axes[0], axes[2]):
        ax.axhline(summary["acc_dense"], color="k", ls=":", label="dense")
    target = target_name(summary)
    axes[0].set(xlabel=f"{target} speedup (target)", ylabel=f"{metric}, mean and 95% interval over seeds",
                title=f"{short_metric(summary)} vs {target} speedup")
    axes[2].set(xlabel=f"measured latency speedup (batch {shown_latency_batch(summary)}, CPU; mean over seeds)",
                ylabel=metric,
                title=f"{short_metric(summary)} vs measured latency")
    axes[1].set(xlabel=f"{target} speedup (target)", ylabel="tied rank (1 = best)", title="rank per speedup (ties: not "
                "significantly different)")
    axes[1].invert_yaxis()
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"leaderboard: {summary['model']} on {summary['dataset']}, every method")
    fig.tight_layout()
    files["png"] = _save_png(fig, out / "leaderboard.png")
    files["rank_png"] = _consistency_png(board, out / "rank_consistency.png")
    if not board.friedman:  # DVC declares the file: say why there is no diagram rather than leave it missing
        fig, ax = plt.subplots(figsize=(8, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, "no critical-difference diagram: the Friedman test needs 3 or more methods that finished\n"
                "in 2 or more (speedup, seed) blocks", ha="center", va="center")
        files["cd_png"] = _save_png(fig, out / "critical_difference.png")
    for i, (scope, f) in enumerate(board.friedman.items()):
        name = "critical_difference.png" if i == 0 else f"critical_difference_{scope}.png"
        p = "-" if f["p"] is None else f"{f['p']:.2g}"
        files["cd_png" if i == 0 else f"cd_png_{scope}"] = stats.cd_diagram(
            f["average_ranks"], f["cd"], out / name,
            f"{summary['model']} on {summary['dataset']} ({scope}): average rank over {f['blocks']} "
            f"(speedup, seed) blocks; Friedman p = {p}, Nemenyi CD = {f['cd']:.2f}")
    return files


def _consistency_png(board: Board, path: Path) -> Path:
    """Kendall tau between speedups (seeds averaged), and between seed halves on the diagonal."""
    import matplotlib.pyplot as plt
    summary, tau, speedups = board.summary, board.consistency, board.speedups
    scopes = sorted({k[1] for k in board.cells if k[1] != TUNED})
    n = len(speedups)
    grid = [[float("nan")] * n for _ in range(n)]
    for i, j in itertools.product(range(n), repeat=2):
        a, b = sorted((speedups[i], speedups[j]))
        key = f"{a:g}x" if i == j else f"{a:g}x-{b:g}x"
        source = tau["seed_halves"] if i == j else tau["pairs"]
        vals = [source[f"{sc}:{key}"]["tau"] for sc in scopes if f"{sc}:{key}" in source]
        if vals:
            grid[i][j] = sum(vals) / len(vals)
    fig, ax = plt.subplots(figsize=(4 + n, 3.5 + 0.3 * n))
    im = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdYlGn")
    labels = [f"{s:g}x" for s in speedups]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    for i, j in itertools.product(range(n), repeat=2):
        if grid[i][j] == grid[i][j]:
            ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center")
    ax.set_title(f"rank consistency (Kendall tau): between speedups,\nand between seed halves on the diagonal\n"
                 f"{summary['model']} on {summary['dataset']}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save_png(fig, path)


def _save_png(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _csv_text(header: list, rows: list) -> str:
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    return text.getvalue()


def write_reports(summary: dict, out: Path = Path("reports"), board: Optional[Board] = None) -> dict:
    """leaderboard.csv (one row per cell: method, scope, speedup), trials.csv (one row per trial), leaderboard.md,
    leaderboard.png, rank_consistency.png, critical_difference.png, metrics.json (DVC metrics) and plots.csv (DVC
    plots: every finished trial, one row each, with its method)."""
    out = fileio.ensure_dir(out)
    board = board or build(summary)
    files = {"csv": out / "leaderboard.csv", "trials_csv": out / "trials.csv", "md": out / "leaderboard.md",
             "metrics": out / "metrics.json"}
    cells = sorted(board.cells.values(), key=lambda c: (c["speedup_target"], c["scope"], c.get("rank", 1e9)))
    fileio.write_text(files["csv"], _csv_text(CELL_COLUMNS, [[_round(c.get(k, "")) for k in CELL_COLUMNS]
                                                             for c in cells]))
    long = sorted(long_rows(summary), key=lambda r: (r["speedup_target"], r["scope"], str(r["seed"]),
                                                     r.get("rank", 1e9)))
    fileio.write_text(files["trials_csv"], _csv_text(LONG_COLUMNS, [[r.get(c, "") for c in LONG_COLUMNS]
                                                                    for r in long]))
    fileio.write_text(files["md"], markdown(board))
    fileio.write_json(files["metrics"], metrics_json(board), indent=2)
    files["plots"] = fileio.write_text(out / "plots.csv", _csv_text(PLOT_COLUMNS, plot_rows(summary)))
    files.update(_plots(board, out))
    return {k: str(v) for k, v in files.items()}


def _round(v):
    return round(v, 4) if isinstance(v, float) else ("" if v is None else v)


def print_table(summary: dict, board: Optional[Board] = None, console=None) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=None if sys.stdout.isatty() else 200)  # logs (DVC, CI): no truncation
    board = build(summary) if board is None else board
    flat = table_rows(board)
    table = Table(title=f"prunebench leaderboard: {summary['model']} on {summary['dataset']} "
                        f"(dense {metric_of(summary)} {summary['acc_dense']:.2f})",
                  caption="\n".join(recipe_lines(summary)))
    for c in (flat[0] if flat else {"rank": 0}):
        table.add_column(c, justify="left" if c in ("method", "scope") else "right")
    for d in flat:
        table.add_row(*[str(v) for v in d.values()])
    console.print(table)
    for line in significance_lines(board):
        console.print(line)
