"""Rankings with their evidence: per-cell seed intervals, ranks tied where a paired test finds no difference,
Friedman/Nemenyi with a critical-difference diagram, Kendall tau with intervals, failed seeds counted, and bad seed
input refused with one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from flows import leaderboard as lb

PNG = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 2)
# a ~ b (0.5 points apart), c ~ d, both far below: ranks 1, 1, 3, 3 at each speedup
RATES = {"a": 0.970, "b": 0.965, "c": 0.900, "d": 0.895}


def trial(method, speedup, seed, correct=None, status="ok"):
    t = {"method": method, "scope": "protected", "speedup_target": speedup, "seed": seed, "status": status}
    if status != "ok":
        return {**t, "error": "RuntimeError: boom"}
    return {**t, "acc_finetuned": 100.0 * correct.mean(), "acc_dense": 98.0, "acc_pruned": 50.0,
            "params_dense": 100, "params_pruned": 100 / speedup, "macs_dense": 1000, "macs_pruned": 1000 / speedup,
            "speedup": speedup, "latency_speedup": 1.5, "seconds_prune": 1.0, "seconds_sparsify": 0.0,
            "test_correct": "".join("1" if c else "0" for c in correct)}


@pytest.fixture(scope="module")
def summary():
    rng = np.random.default_rng(0)
    trials = [trial(m, s, seed, rng.random(540) < rate - (0.02 if s == 4 else 0.0))
              for m, rate in RATES.items() for s in (2.0, 4.0) for seed in SEEDS]
    # e finished 2 of its 3 seeds at 4x, and none at 2x
    trials += [trial("e", 4.0, seed, rng.random(540) < 0.5) for seed in (0, 1)] + [trial("e", 4.0, 2, status="x")]
    trials += [trial("e", 2.0, seed, status="x") for seed in SEEDS]
    return {"model": "resnet20", "dataset": "digits", "acc_dense": 98.0, "scopes": ["protected"],
            "speedups": [2, 4], "seeds": list(SEEDS), "trials": trials,
            "recipe": {"model": "resnet20", "finetune": "10 epochs, lr 0.01", "seeds": "0,1,2"}}


@pytest.fixture(scope="module")
def board(summary):
    return lb.build(summary)


def test_a_cell_is_the_mean_over_seeds_with_its_t_interval(summary, board):
    accs = [t["acc_finetuned"] for t in summary["trials"] if t["method"] == "a" and t["speedup_target"] == 2.0]
    cell = board.cells[("a", "protected", 2.0)]
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(accs), scale=np.std(accs, ddof=1) / np.sqrt(3))
    assert cell["seeds"] == 3 and cell["acc_mean"] == pytest.approx(np.mean(accs))
    assert (cell["acc_lo"], cell["acc_hi"]) == pytest.approx((lo, hi))


def test_ranks_tie_where_the_paired_test_finds_no_difference(board):
    for speedup in (2.0, 4.0):
        ranks = {m: board.cells[(m, "protected", speedup)]["rank"] for m in RATES}
        assert ranks == {"a": 1, "b": 1, "c": 3, "d": 3}, speedup
        # the evidence: each method's paired comparison with the leader it was tested against
        tests = {m: board.cells[(m, "protected", speedup)]["vs_leader"] for m in RATES}
        joined = [m for m, t in tests.items() if t and t["p"] >= lb.ALPHA]
        split = [m for m, t in tests.items() if t and t["p"] < lb.ALPHA]
        assert len(joined) == 2 and len(split) == 1 and tests[split[0]]["leader"] in ("a", "b")
        assert tests[split[0]]["diff"] > 3  # leader minus method, in points
    assert [r["method"] for r in board.rows] == ["a", "b", "c", "d", "e"]


def test_friedman_and_kendall_come_with_their_evidence(board):
    f = board.friedman["protected"]
    assert f["blocks"] == 6 and f["methods"] == 4 and f["p"] < 0.01
    assert f["left_out"] == ["e"]  # it lacks blocks: left out and named, not imputed
    assert f["average_ranks"]["a"] < f["average_ranks"]["c"] and f["cd"] > 0
    tau = board.consistency
    assert set(tau["pairs"]) == {"protected:2x-4x"} and set(tau["seed_halves"]) == {"protected:2x", "protected:4x"}
    for v in [*tau["pairs"].values(), *tau["seed_halves"].values()]:
        assert v["lo"] <= v["tau"] <= v["hi"]
    assert tau["seed_halves"]["protected:4x"]["seeds_a"] == [0]


def test_reports_carry_intervals_ranks_seeds_and_the_recipe(summary, board, tmp_path):
    files = lb.write_reports(summary, tmp_path, board)
    md = Path(files["md"]).read_text()
    assert "Recipe: model resnet20; finetune 10 epochs, lr 0.01; seeds 0,1,2." in md
    assert "(2/3 seeds)" in md and "failed (3)" in md and "Friedman test (protected)" in md and "Left out" in md
    a2 = board.cells[("a", "protected", 2.0)]
    assert f"{a2['acc_mean']:.2f} ±{(a2['acc_hi'] - a2['acc_lo']) / 2:.2f} [1]" in md
    metrics = json.loads(Path(files["metrics"]).read_text())
    assert metrics["a"]["x2"]["seeds"] == 3 and metrics["e"]["x4"]["seeds"] == 2 and metrics["e"]["x2"]["failed"] == 1
    assert metrics["b"]["x4"]["rank"] == 1 and "kendall_tau_seeds_4x_lo" in metrics and "friedman_p_protected" in metrics
    numbers = lambda d: all(numbers(v) if isinstance(v, dict) else isinstance(v, (int, float)) for v in d.values())
    assert numbers(metrics)  # DVC metrics: numbers only
    cells = Path(files["csv"]).read_text().splitlines()
    assert cells[0].startswith("rank,method") and len(cells) == 1 + 10
    assert len(Path(files["trials_csv"]).read_text().splitlines()) == 1 + len(summary["trials"])
    for png in (files["png"], files["rank_png"], files["cd_png"]):
        assert Path(png).read_bytes()[:8] == PNG, png


def test_a_summary_without_seeds_or_per_image_results_still_ranks(tmp_path):
    """Older summaries (one seed, no per-image outcomes): strict ranks and Kendall's point estimate alone."""
    def old(method, s, acc):
        return {"method": method, "scope": "protected", "speedup_target": s, "status": "ok", "acc_finetuned": acc,
                "acc_dense": 90.0, "params_dense": 100, "params_pruned": 50, "macs_dense": 10, "macs_pruned": 5}
    summary = {"model": "resnet20", "dataset": "digits", "acc_dense": 90.0,
               "trials": [old("l2", 2, 85), old("l2", 4, 80), old("taylor", 2, 87), old("taylor", 4, 82),
                          old("random", 2, 70), old("random", 4, 60)]}
    board = lb.build(summary)
    assert [r["method"] for r in board.rows] == ["taylor", "l2", "random"]
    assert board.consistency["pairs"]["protected:2x-4x"] == {"tau": pytest.approx(1.0), "lo": None, "hi": None}
    files = lb.write_reports(summary, tmp_path)
    assert "87.00 [1]" in Path(files["md"]).read_text()


def test_seed_subset_that_leaves_no_trial_is_refused(summary):
    from pruning.errors import PruneBenchError
    assert {t["seed"] for t in lb.seed_subset(summary, [1], Path("b.json"))["trials"]} == {1}
    with pytest.raises(PruneBenchError, match="no trials with seeds 7"):
        lb.seed_subset(summary, [7], Path("b.json"))


@pytest.mark.parametrize("args, expected", [
    (["benchmark", "--seeds", "a,b"], "--seeds takes integers"),
    (["benchmark", "--seeds", "-1"], "distinct integers >= 0"),
    (["benchmark", "--params", "seeds_empty.yaml"], "benchmark.seeds"),
    (["benchmark", "--params", "seeds_float.yaml"], "benchmark.seeds"),
    (["leaderboard", "--results", "summary.json", "--seeds", "9"], "no trials with seeds 9"),
])
def test_bad_seeds_are_one_line_exit_2_and_write_nothing(cli, tmp_path, summary, args, expected):
    for name, seeds in (("seeds_empty", []), ("seeds_float", [0, 1.5]), ("seeds_twice", [3, 3])):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"benchmark": {"seeds": seeds}}))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(*args, timeout=120)
    assert code == 2 and expected in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_trial_runs_in_its_seeds_context_and_its_key_ignores_the_other_seeds():
    from flows.config import Params
    from flows.sweep import SweepContext
    from flows.trials import Trial, trials_of

    def context(seeds, dense="shared"):
        params = Params.model_validate({"benchmark": {"methods": ["l2"], "speedups": [2], "seeds": seeds,
                                                      "dense": dense}})
        return SweepContext(params, "dense.pt", "hash0", {"content": "data"}, "1", "exp", "sqlite://", "trials")
    assert [t.seed for t in trials_of(context([0, 1]).params)] == [0, 1]
    shared = context([0, 1])
    key = Trial("l2", 2.0, "protected", 1).key(shared.for_seed(1))
    assert key == Trial("l2", 2.0, "protected", 1).key(context([0, 1, 2]).for_seed(1))  # adding seed 2 reuses it
    assert key != Trial("l2", 2.0, "protected", 0).key(shared.for_seed(0))
    assert shared.for_seed(1).params.seed == 1 and shared.for_seed(1).dense == "dense.pt"
    own = {"dense": "dense-1.pt", "dense_hash": "hash1", "dense_eval": {"acc": 97.0}}
    per_seed = context([0, 1], "per_seed")
    per_seed.seed_baselines = {1: own}
    one = per_seed.for_seed(1)
    assert (one.dense, one.dense_hash, one.dense_eval, one.params.seed) == ("dense-1.pt", "hash1", {"acc": 97.0}, 1)
    assert Trial("l2", 2.0, "protected", 1).key(one) != key  # its own dense baseline: its own trial


def test_a_latency_targeted_board_shows_the_confirmed_latency_at_the_targets_batch(summary):
    """At a latency target the cells equalize measured latency at ``latency_batch``: the latency column is the
    confirmed speedup there (``achieved``), not the batch-1 timing taken at evaluation."""
    trials = [{**t, "target": "latency", "achieved": 2.0 + 0.01 * t["seed"]} for t in summary["trials"]]
    board = lb.build({**summary, "trials": trials, "target": "latency", "latency_batch": 32})
    assert board.cells[("a", "protected", 2.0)]["latency_speedup"] == pytest.approx(2.01)
    text = lb.markdown(board)
    assert "same measured latency (batch 32) speedup" in text and "measured batch-32 CPU latency" in text
    assert "2.00x / 2.01x" in text
    assert "measured batch-1 CPU latency" in lb.markdown(lb.build(summary))
