"""PruningBench's leaderboard from a benchmark summary (reports/benchmark.json): pure aggregation, no tracking.

Per method (criterion + sparsifier) and scope: accuracy at each speedup with its change from the dense model, the
fraction of parameters kept, the step time (pruning, ``seconds_prune``) and the reg time (sparse training,
``seconds_sparsify``); methods are ranked at each speedup by finetuned accuracy and ordered by their mean rank.
Rank consistency across speedups is Kendall's tau between the rankings at every pair of speedups.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
from pathlib import Path
from typing import Optional

from pruning import fileio

LONG_COLUMNS = ["rank", "method", "criterion", "sparsifier", "scope", "speedup_target", "speedup", "status",
                "acc_dense", "acc_pruned", "acc_finetuned", "delta_acc", "params_kept", "macs_kept",
                "latency_speedup", "seconds_prune", "seconds_sparsify", "seconds_finetune", "seconds_total",
                "error"]


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


def long_rows(summary: dict) -> list[dict]:
    """One row per trial with its rank among methods at the same (speedup, scope)."""
    rows = []
    for t in summary["trials"]:
        crit, sp = _split(t["method"])
        row = {"method": t["method"], "criterion": crit, "sparsifier": sp, "scope": t["scope"],
               "speedup_target": t["speedup_target"], "status": t.get("status", "failed"),
               "error": t.get("error", "")}
        if _ok(t):
            row.update({k: t.get(k) for k in ("speedup", "acc_dense", "acc_pruned", "acc_finetuned",
                                              "latency_speedup", "seconds_prune", "seconds_sparsify",
                                              "seconds_finetune", "seconds_total")})
            row["delta_acc"] = t["acc_finetuned"] - t["acc_dense"]
            row["params_kept"] = t["params_pruned"] / t["params_dense"]
            row["macs_kept"] = t["macs_pruned"] / t["macs_dense"]
        rows.append(row)
    for (s, scope), group in itertools.groupby(sorted(rows, key=lambda r: (r["speedup_target"], r["scope"])),
                                               key=lambda r: (r["speedup_target"], r["scope"])):
        if scope == TUNED:
            continue
        ranked = sorted((r for r in group if r["status"] == "ok"), key=lambda r: -r["acc_finetuned"])
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
    return rows


def build(summary: dict) -> list[dict]:
    """One row per (method, scope): per-speedup accuracy/delta/params kept, times, mean rank; best first."""
    speedups = sorted({float(t["speedup_target"]) for t in summary["trials"]})
    table: dict = {}
    for r in long_rows(summary):
        key = (r["method"], r["scope"])
        row = table.setdefault(key, {"method": r["method"], "criterion": r["criterion"],
                                     "sparsifier": r["sparsifier"], "scope": r["scope"], "by_speedup": {},
                                     "seconds_prune": [], "seconds_sparsify": [], "failed": 0})
        row["by_speedup"][float(r["speedup_target"])] = r
        if r["status"] == "ok":
            row["seconds_prune"].append(r["seconds_prune"])
            row["seconds_sparsify"].append(r["seconds_sparsify"])
        else:
            row["failed"] += 1
    n_methods = len(table)
    out = []
    for row in table.values():
        ranks = [row["by_speedup"].get(s, {}).get("rank", n_methods + 1) for s in speedups]
        accs = [row["by_speedup"][s]["acc_finetuned"] for s in speedups
                if row["by_speedup"].get(s, {}).get("status") == "ok"]
        row["mean_rank"] = sum(ranks) / len(ranks) if row["scope"] != TUNED else float("nan")
        row["mean_acc"] = sum(accs) / len(accs) if accs else float("nan")
        row["step_time"] = sum(row.pop("seconds_prune")) / max(1, len(accs)) if accs else float("nan")
        sp = row.pop("seconds_sparsify")
        row["reg_time"] = max(sp) if sp else float("nan")  # sparse training runs once per method, shared
        row["speedups"] = speedups
        out.append(row)
    out.sort(key=lambda r: (r["scope"] == TUNED, r["mean_rank"] if r["scope"] != TUNED else 0,
                            -(r["mean_acc"] if r["mean_acc"] == r["mean_acc"] else -1e9)))
    for i, r in enumerate(out, 1):
        r["rank"] = i if r["scope"] != TUNED else "-"
    return out


def rank_consistency(summary: dict) -> dict:
    """Kendall's tau between method rankings at each pair of speedups (per scope); mean over pairs."""
    from scipy.stats import kendalltau
    rows = long_rows(summary)
    pairs = {}
    for scope in sorted({r["scope"] for r in rows}):
        acc = {}
        for r in rows:
            if r["scope"] == scope and r["status"] == "ok":
                acc.setdefault(float(r["speedup_target"]), {})[r["method"]] = r["acc_finetuned"]
        for a, b in itertools.combinations(sorted(acc), 2):
            common = sorted(set(acc[a]) & set(acc[b]))
            if len(common) < 2:
                continue
            tau, _ = kendalltau([acc[a][m] for m in common], [acc[b][m] for m in common])
            pairs[f"{scope}:{a:g}x-{b:g}x"] = None if tau != tau else float(tau)
    vals = [v for v in pairs.values() if v is not None]
    return {"pairs": pairs, "mean": sum(vals) / len(vals) if vals else None}


def _fmt(v, spec=".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _cell(r: Optional[dict]) -> str:
    if not r:
        return "-"
    if r["status"] != "ok":
        return "failed"
    return f"{r['acc_finetuned']:.2f} ({r['delta_acc']:+.2f})"


def table_rows(rows: list[dict]) -> list[dict]:
    """Flat rows for display (Prefect table artifact, rich, Markdown)."""
    flat = []
    for r in rows:
        d = {"rank": r["rank"], "method": r["method"], "criterion": r["criterion"], "sparsifier": r["sparsifier"],
             "scope": r["scope"]}
        for s in r["speedups"]:
            cell = r["by_speedup"].get(s)
            d[f"acc@{s:g}x (Δ)"] = _cell(cell)
            d[f"params kept@{s:g}x"] = _fmt(cell.get("params_kept") if cell else None, ".1%")
        d["step time (s)"] = _fmt(r["step_time"], ".2f")
        d["reg time (s)"] = _fmt(r["reg_time"], ".1f")
        d["mean rank"] = _fmt(r["mean_rank"], ".2f")
        flat.append(d)
    return flat


def markdown(summary: dict, rows: list[dict]) -> str:
    flat = table_rows(rows)
    tau = rank_consistency(summary)
    lines = [f"# Leaderboard: {summary['model']} on {summary['dataset']}", "",
             f"Dense accuracy {summary['acc_dense']:.2f}%. Accuracy after finetuning (change from dense) at each "
             "MACs speedup; step time = pruning seconds, reg time = sparse-training seconds. Ranked by mean rank "
             "over speedups.", ""]
    if flat:
        cols = list(flat[0])
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        lines += ["| " + " | ".join(str(d[c]) for c in cols) + " |" for d in flat]
    lines += ["", "## Rank consistency (Kendall tau)", ""]
    if tau["pairs"]:
        lines += [f"- {k}: {_fmt(v, '.3f')}" for k, v in tau["pairs"].items()]
        lines.append(f"- mean: {_fmt(tau['mean'], '.3f')}")
    else:
        lines.append("- needs at least two speedups with two or more methods each")
    failed = [t for t in summary["trials"] if t.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- {t['method']} @ {t['speedup_target']:g}x ({t['scope']}): {t.get('error', '')}" for t in failed]
    return "\n".join(lines) + "\n"


def flat_metrics(summary: dict, rows: list[dict]) -> dict:
    m = {"acc_dense": summary["acc_dense"]}
    tau = rank_consistency(summary)
    if tau["mean"] is not None:
        m["kendall_tau_mean"] = tau["mean"]
    return m


def series_name(summary: dict, method: str, scope: str) -> str:
    """A method's name in metrics and plots: ``l2``, or ``l2@global`` when the benchmark ran several scopes, and
    ``l2@tuned`` for a tuned row, so that adding tuned rows never renames the untuned ones."""
    untuned_scopes = [s for s in summary.get("scopes", []) if s != TUNED]
    return method if scope != TUNED and len(untuned_scopes) <= 1 else f"{method}@{scope}"


def speedup_key(speedup_target) -> str:
    """``x2``, ``x2_5``: no dot, which DVC would read as one more level of nesting."""
    return f"x{float(speedup_target):g}".replace(".", "_")


METRIC_FIELDS = ("acc_finetuned", "acc_pruned", "delta_acc", "speedup", "params_kept", "latency_speedup")


def metrics_json(summary: dict, rows: list[dict]) -> dict:
    """DVC metrics, numbers only (``dvc exp show`` flattens the nesting into ``l2.x2.acc_finetuned``): dense
    accuracy, trial counts, rank consistency, and per method and speedup the accuracy, its change, the speedup
    reached, the share of params kept and the latency speedup; a failed trial is ``failed: 1``."""
    tau = rank_consistency(summary)
    metrics = {"acc_dense": summary["acc_dense"], "trials": len(summary["trials"]),
               "trials_failed": sum(t.get("status") != "ok" for t in summary["trials"])}
    if tau["mean"] is not None:
        metrics["kendall_tau_mean"] = round(tau["mean"], 4)
    for r in long_rows(summary):
        entry = {"failed": int(r["status"] != "ok")}
        if r["status"] == "ok":
            entry.update({k: round(r[k], 4) for k in METRIC_FIELDS if isinstance(r.get(k), (int, float))})
        name = series_name(summary, r["method"], r["scope"])
        metrics.setdefault(name, {})[speedup_key(r["speedup_target"])] = entry
    return metrics


PLOT_COLUMNS = ["method", "criterion", "sparsifier", "scope", "speedup_target", "speedup", "acc_dense",
                "acc_pruned", "acc_finetuned", "delta_acc", "params_kept", "macs_kept", "latency_speedup"]


def plot_rows(summary: dict) -> list[list]:
    """DVC plot data in long form, one row per finished trial: the chart colours by ``method``."""
    ok = sorted((r for r in long_rows(summary) if r["status"] == "ok"),
                key=lambda r: (r["method"], r["scope"], float(r["speedup_target"])))
    rows = []
    for r in ok:
        r = {**r, "method": series_name(summary, r["method"], r["scope"])}
        rows.append([round(v, 4) if isinstance(v, float) else v for v in (r.get(c) for c in PLOT_COLUMNS)])
    return rows


def _plots(summary: dict, rows: list[dict], out: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        pts = [(s, c["acc_finetuned"]) for s, c in sorted(r["by_speedup"].items()) if c["status"] == "ok"]
        if pts:
            label = series_name(summary, r["method"], r["scope"])
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
            ranks = [(s, c.get("rank")) for s, c in sorted(r["by_speedup"].items()) if c.get("rank")]
            axes[1].plot([p[0] for p in ranks], [p[1] for p in ranks], "o-", label=label)
    axes[0].axhline(summary["acc_dense"], color="k", ls=":", label="dense")
    axes[0].set(xlabel="MACs speedup (target)", ylabel="test accuracy (%)", title="accuracy vs speedup")
    axes[1].set(xlabel="MACs speedup (target)", ylabel="rank (1 = best)", title="rank per speedup")
    axes[1].invert_yaxis()
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"leaderboard: {summary['model']} on {summary['dataset']}, every method")
    fig.tight_layout()
    files["png"] = _save_png(fig, out / "leaderboard.png")

    tau = rank_consistency(summary)
    speedups = sorted({float(t["speedup_target"]) for t in summary["trials"]})
    scopes = sorted({t["scope"] for t in summary["trials"]})
    fig, ax = plt.subplots(figsize=(4 + len(speedups), 3.5 + 0.3 * len(speedups)))
    n = len(speedups)
    grid = [[1.0 if i == j else float("nan") for j in range(n)] for i in range(n)]
    for i, j in itertools.permutations(range(n), 2):
        a, b = sorted((speedups[i], speedups[j]))
        vals = [tau["pairs"].get(f"{sc}:{a:g}x-{b:g}x") for sc in scopes]
        vals = [v for v in vals if v is not None]
        if vals:
            grid[i][j] = sum(vals) / len(vals)
    im = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdYlGn")
    labels = [f"{s:g}x" for s in speedups]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            if grid[i][j] == grid[i][j]:
                ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center")
    ax.set_title(f"rank consistency across speedups (Kendall tau)\n{summary['model']} on {summary['dataset']}"
                 + ("" if n > 1 else ": needs two or more speedups"))
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    files["rank_png"] = _save_png(fig, out / "rank_consistency.png")
    return files


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


def write_reports(summary: dict, out: Path = Path("reports")) -> dict:
    """leaderboard.csv (one row per trial), leaderboard.md, leaderboard.png, rank_consistency.png,
    metrics.json (DVC metrics) and plots.csv (DVC plots: every finished trial, one row each, with its method)."""
    out = fileio.ensure_dir(out)
    rows = build(summary)
    files = {"csv": out / "leaderboard.csv", "md": out / "leaderboard.md", "metrics": out / "metrics.json"}
    long = sorted(long_rows(summary), key=lambda r: (r["speedup_target"], r["scope"], r.get("rank", 1e9)))
    fileio.write_text(files["csv"], _csv_text(LONG_COLUMNS, [[r.get(c, "") for c in LONG_COLUMNS] for r in long]))
    fileio.write_text(files["md"], markdown(summary, rows))
    fileio.write_json(files["metrics"], metrics_json(summary, rows), indent=2)
    files["plots"] = fileio.write_text(out / "plots.csv", _csv_text(PLOT_COLUMNS, plot_rows(summary)))
    files.update(_plots(summary, rows, out))
    return {k: str(v) for k, v in files.items()}


def print_table(summary: dict, rows: Optional[list] = None, console=None) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=None if sys.stdout.isatty() else 200)  # logs (DVC, CI): no truncation
    rows = build(summary) if rows is None else rows
    flat = table_rows(rows)
    table = Table(title=f"prunebench leaderboard: {summary['model']} on {summary['dataset']} "
                        f"(dense {summary['acc_dense']:.2f}%)")
    for c in (flat[0] if flat else {"rank": 0}):
        table.add_column(c, justify="right" if c not in ("method", "criterion", "sparsifier", "scope") else "left")
    for d in flat:
        table.add_row(*[str(v) for v in d.values()])
    console.print(table)
    tau = rank_consistency(summary)
    if tau["mean"] is not None:
        console.print(f"rank consistency across speedups: mean Kendall tau {tau['mean']:.3f}")
