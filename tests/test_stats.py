"""flows.stats: seed and image intervals, paired tests, Holm, tied ranks, Friedman/Nemenyi, CD diagram, Kendall's tau."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from flows import stats

FAST = 499  # resamples: enough for the tests' clear-cut cases, fast on a shared CPU


def test_seed_interval_is_the_student_t_interval():
    res = stats.seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} = 4.3027 (tables)
    assert res["n"] == 3 and res["mean"] == pytest.approx(2.0) and res["std"] == pytest.approx(1.0)
    assert half == pytest.approx(2.484, abs=1e-3)
    assert res["lo"] == pytest.approx(2.0 - half) and res["hi"] == pytest.approx(2.0 + half)
    assert stats.seed_interval([5.0]) == {"mean": 5.0, "std": None, "lo": None, "hi": None, "n": 1}
    assert stats.seed_interval([4.0, 4.0])["lo"] == stats.seed_interval([4.0, 4.0])["hi"] == 4.0


def test_bootstrap_interval_contains_accuracy_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 5000):
        correct = rng.random(n) < 0.8
        lo, hi = stats.bootstrap_interval(correct, n_resamples=FAST)
        assert lo < 100 * correct.mean() < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # width ~ 1/sqrt(n): 5x narrower expected
    assert stats.bootstrap_interval(np.ones(50, bool), n_resamples=FAST) == (100.0, 100.0)
    assert stats.bootstrap_interval(np.zeros(50, bool), n_resamples=FAST) == (0.0, 0.0)
    assert stats.bootstrap_interval(correct, n_resamples=FAST, seed=3) == stats.bootstrap_interval(
        correct, n_resamples=FAST, seed=3)


def test_paired_comparison_finds_a_small_real_difference_and_none_between_identical_methods():
    rng = np.random.default_rng(0)
    a = rng.random((3, 500)) < 0.7
    b = a.copy()
    flipped = rng.choice(np.flatnonzero(a.all(axis=0)), 30, replace=False)
    b[:, flipped] = False  # 30 of 500 images right for a, wrong for b, on every seed: 6 points
    res = stats.paired_comparison(a, b, n_resamples=FAST)
    assert res["diff"] == pytest.approx(6.0)
    assert 0 < res["lo"] < 6.0 < res["hi"]
    assert res["p"] < 0.01
    assert stats.paired_comparison(b, a, n_resamples=FAST)["diff"] == pytest.approx(-6.0)
    c = a.copy()
    c[:, flipped[:10]] = False  # 2 points: within the images' noise unpaired (p ~ 0.4), clear when paired by image
    assert stats.paired_comparison(a, c, n_resamples=FAST)["p"] < 0.01
    assert stats.paired_comparison(a, b, n_resamples=FAST, seed=5) == stats.paired_comparison(
        a, b, n_resamples=FAST, seed=5)

    same = stats.paired_comparison(a, a, n_resamples=FAST)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and same["p"] == 1.0
    with pytest.raises(ValueError):
        stats.paired_comparison(a, b[:2])


def test_holm_rejects_step_down():
    # sorted p: 0.01 <= 0.05/4, 0.015 <= 0.05/3, 0.03 > 0.05/2 -> stop; the rest stays too
    assert stats.holm([0.03, 0.01, 0.2, 0.015]) == [False, True, False, True]
    assert stats.holm([0.04, 0.04]) == [False, False]  # each alone would pass 0.05
    assert stats.holm([]) == []


def test_tied_ranks_tie_with_the_group_leader_not_the_neighbour():
    means = {"c": 70.0, "a": 90.0, "d": 65.0, "b": 85.0}
    significant_pairs = {("a", "c"), ("a", "d")}
    ranks = stats.tied_ranks(means, lambda x, y: (x, y) in significant_pairs)
    assert ranks == {"a": 1, "b": 1, "c": 3, "d": 3}
    assert stats.tied_ranks(means, lambda x, y: True) == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert stats.tied_ranks(means, lambda x, y: False) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_friedman_detects_a_consistent_ordering_with_hand_checked_ranks():
    rng = np.random.default_rng(0)
    scores = np.array([90.0, 85.0, 80.0, 75.0]) + rng.normal(0, 1.0, (8, 4))  # 8 blocks, 4 methods
    res = stats.friedman(scores)
    assert res["p"] < 1e-3 and res["statistic"] > 0
    assert res["average_ranks"] == pytest.approx(list(sps.rankdata(-scores, axis=1).mean(axis=0)))
    assert res["average_ranks"][0] < res["average_ranks"][-1]

    ties = stats.friedman([[90.0, 80.0, 80.0], [70.0, 75.0, 60.0]])
    assert ties["average_ranks"] == [1.5, 1.75, 2.75]  # by hand: (1, 2.5, 2.5) and (2, 1, 3)
    noise = stats.friedman(rng.normal(0, 1, (8, 4)))
    assert noise["p"] > 0.05
    assert stats.friedman([[1.0, 2.0], [2.0, 3.0]])["p"] is None  # 2 methods
    assert stats.friedman([[1.0, 2.0, 3.0]]) == {"statistic": None, "p": None, "average_ranks": [3.0, 2.0, 1.0]}


@pytest.mark.parametrize("k, q", [(2, 1.960), (3, 2.343), (5, 2.728), (10, 3.164)])
def test_nemenyi_q_matches_demsar_table(k, q):
    assert stats.nemenyi_q(k) == pytest.approx(q, abs=1e-3)


def test_nemenyi_cd_formula():
    # Demsar (2006) section 3.2.2: k=4 classifiers, N=14 data sets: q=2.569, CD=1.25
    assert stats.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    assert stats.nemenyi_cd(3, 30) == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 30)), abs=1e-3)
    assert stats.nemenyi_cd(5, 20) > stats.nemenyi_cd(5, 40)


def test_cliques_are_maximal_runs_within_cd():
    ranks = {"a": 1.0, "b": 1.5, "c": 2.2, "d": 2.9, "e": 5.0}
    assert stats.cliques(ranks, 1.0) == [["a", "b"], ["b", "c"], ["c", "d"]]
    assert stats.cliques(ranks, 5.0) == [["a", "b", "c", "d", "e"]]
    assert stats.cliques(ranks, 0.1) == []


def test_cd_diagram_writes_a_png_atomically(tmp_path):
    ranks = {f"method_{i:02d}+sparsifier": 1 + i * 16 / 16.5 for i in range(17)}
    path = tmp_path / "cd" / "diagram.png"
    out = stats.cd_diagram(ranks, stats.nemenyi_cd(17, 10), path, title="ResNet-56 on CIFAR-10")
    assert out == path
    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["diagram.png"]
    stats.cd_diagram({"only": 1.0}, None, path)  # one method, no CD: still a picture, replacing the first
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.read_bytes() != data
    assert [p.name for p in path.parent.iterdir()] == ["diagram.png"]


def test_kendall_interval_agreement_and_reversal():
    rng = np.random.default_rng(0)
    x = np.clip(np.linspace(0.9, 0.5, 6)[:, None] + rng.normal(0, 0.02, (6, 400)), 0, 1)  # 6 methods, 400 images
    same = stats.kendall_interval(x, x, n_resamples=199)
    assert same["tau"] == pytest.approx(1.0) and same["lo"] == pytest.approx(1.0)
    reversed_ = stats.kendall_interval(x, x[::-1], n_resamples=199)
    assert reversed_["tau"] == pytest.approx(-1.0) and reversed_["hi"] == pytest.approx(-1.0)

    close = np.clip(np.linspace(0.8, 0.78, 6)[:, None] + rng.normal(0, 0.3, (6, 400)), 0, 1)
    other = np.clip(np.linspace(0.8, 0.78, 6)[:, None] + rng.normal(0, 0.3, (6, 400)), 0, 1)
    res = stats.kendall_interval(close, other, n_resamples=199)
    assert res["tau"] == pytest.approx(sps.kendalltau(close.mean(1), other.mean(1)).statistic)
    assert res["lo"] <= res["tau"] <= res["hi"] and res["hi"] - res["lo"] > 0.2
