"""The Acc@1 / Pass@K estimators (chexrl.core.pass_at_k) against hand-computed cases and brute force."""

import itertools
import math

import numpy as np
import pytest

from chexrl.core.parsing import format_completion
from chexrl.core.pass_at_k import (
    MEASURES,
    Outcome,
    best_of_k,
    bootstrap_interval,
    image_scores,
    pass_at_k,
    pass_at_k_summary,
    score_answer,
)
from chexrl.core.schemas import SCHEMAS

CX = SCHEMAS["chexpert14"]


def answer(*labels: str) -> str:
    return format_completion("reasoning", list(labels))


# ------------------------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
        (4, 1, 1, 1 / 4),  # pass@1 is the share correct
        (6, 0, 3, 0.0),  # nothing correct
        (6, 4, 3, 1.0),  # 2 wrong samples cannot fill a 3-subset
        (3, 1, 3, 1.0),  # n = k: "any of the n"
        (1000, 1, 10, 10 / 1000),  # 1 - C(999,10)/C(1000,10) = 1 - 990/1000; C(1000,10) ~ 2.6e23
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_share_of_k_subsets_with_a_correct_sample():
    """The definition it estimates, enumerated: every k-subset of the n samples equally likely."""
    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                share = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(
    ("n", "c", "k", "word"), [(3, 1, 4, "k <= n"), (3, 1, 0, "k <= n"), (3, 4, 2, "c <= n")]
)
def test_pass_at_k_rejects_impossible_counts(n, c, k, word):
    with pytest.raises(ValueError, match=word):
        pass_at_k(n, c, k)


# ------------------------------------------------------------------------------------------ best-of-k


def test_best_of_k_hand_computed():
    # 2-subsets of {0, .5, 1}: maxima .5, 1, 1
    assert best_of_k([1.0, 0.0, 0.5], 2) == pytest.approx(2.5 / 3)
    assert best_of_k([1.0, 0.0, 0.5], 1) == pytest.approx(0.5)  # the mean
    assert best_of_k([1.0, 0.0, 0.5], 3) == 1.0  # the maximum
    # 2-subsets of {.2, .2, .6, 0}: maxima .2 .6 .2 .6 .2 .6 -> 2.4 / 6
    assert best_of_k([0.2, 0.2, 0.6, 0.0], 2) == pytest.approx(0.4)


def test_best_of_k_is_the_mean_maximum_over_k_subsets_and_pass_at_k_on_0_1_scores():
    rng = np.random.default_rng(1)
    for n in range(1, 7):
        scores = rng.random(n).round(2).tolist()
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(scores, k))
            assert best_of_k(scores, k) == pytest.approx(sum(map(max, subsets)) / len(subsets))
        binary = [float(x > 0.5) for x in scores]
        for k in range(1, n + 1):
            assert best_of_k(binary, k) == pytest.approx(pass_at_k(n, int(sum(binary)), k))


def test_best_of_k_needs_k_scores():
    with pytest.raises(ValueError, match="1 <= k <= n, got k=3 with 2 scores"):
        best_of_k([0.1, 0.2], 3)


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_on_a_fixed_seed():
    """default_rng(0).integers(0, 3, (4, 3)) draws the rows [2 1 1], [0 0 0], [0 0 0], [2 1 2] of the values
    [0, 1, 2]: resample means 4/3, 0, 0, 5/3, sorted 0, 0, 4/3, 5/3. Linear-interpolation quantiles at
    positions 0.025 * 3 = 0.075 (between 0 and 0: 0) and 0.975 * 3 = 2.925 (4/3 + 0.925 * 1/3)."""
    low, high = bootstrap_interval([0.0, 1.0, 2.0], n_resamples=4, seed=0)
    assert low == 0.0
    assert high == pytest.approx((4 + 0.925) / 3, abs=1e-12)
    # the same seed, the same interval; another seed, another draw
    assert bootstrap_interval([0.0, 1.0, 2.0], n_resamples=4, seed=0) == (low, high)
    assert bootstrap_interval([0.0, 1.0, 2.0], n_resamples=4, seed=1) != (low, high)


def test_bootstrap_interval_of_two_values_and_of_constants():
    # resampled means of [0, 1] are 0, .5, 1 with probability 1/4, 1/2, 1/4: both tails hold the extremes
    assert bootstrap_interval([0.0, 1.0], n_resamples=2000, seed=3) == (0.0, 1.0)
    assert bootstrap_interval([0.25] * 7) == (0.25, 0.25)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(5)
    small, large = rng.random(20), rng.random(2000)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5  # ~ 1/sqrt(100) of the width
    # the normal approximation of a mean's 95% interval, for scale: 1.96 standard errors either side
    se = large.std(ddof=1) / math.sqrt(large.size)
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * se, rel=0.15)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"level": 1.0}, "level"), ({"n_resamples": 0}, "n_resamples"), ({}, "at least one value")],
)
def test_bootstrap_interval_rejects_bad_input(kwargs, word):
    values = [] if not kwargs else [0.5]
    with pytest.raises(ValueError, match=word):
        bootstrap_interval(values, **kwargs)


# ------------------------------------------------------------------------------ answers and images


def test_score_answer_parses_like_the_evaluator():
    gold = ["Edema", "Cardiomegaly"]
    assert score_answer(answer("cardiomegaly", "EDEMA"), gold, CX) == Outcome(True, 1.0)
    assert score_answer(answer("Edema"), gold, CX) == Outcome(False, 0.5)
    assert score_answer(answer("Edema", "Pneumonia", "Cardiomegaly"), gold, CX) == Outcome(False, 2 / 3)
    # no <think> block: invalid, predicts nothing, scores 0 even where the labels would match
    assert score_answer("<solution>Edema, Cardiomegaly</solution>", gold, CX) == Outcome(False, 0.0)
    # gold labels outside the test set's schema are ignored, as chexrl.core.metrics ignores them
    assert score_answer(answer("Effusion"), ["Effusion", "Support Devices"], SCHEMAS["nih9"]) == Outcome(
        True, 1.0
    )


def test_image_scores_hand_computed():
    wrong, half, right = Outcome(False, 0.0), Outcome(False, 0.5), Outcome(True, 1.0)
    s = image_scores(half, [wrong, right, half, wrong, half], k=2)
    assert s.acc_at_1 == 0.0 and s.acc_at_1_jaccard == 0.5
    assert s.pass_at_1 == pytest.approx(1 / 5)
    assert s.pass_at_k == pytest.approx(1 - math.comb(4, 2) / math.comb(5, 2))  # 0.4
    # sorted 0, 0, .5, .5, 1: the i-th smallest is the max of C(i-1, 1) of the 10 pairs
    assert s.pass_at_k_jaccard == pytest.approx((2 * 0.5 + 3 * 0.5 + 4 * 1.0) / 10)
    assert s.gap == pytest.approx(0.4)
    with pytest.raises(ValueError, match="Pass@3 needs at least 3 sampled answers per image, got 2"):
        image_scores(half, [wrong, right], k=3)


def test_pass_at_k_summary_from_texts():
    """Two images. Image A: greedy right, samples right/wrong/wrong. Image B: greedy wrong, samples
    half/right/invalid. K = 2 from n = 3."""
    gold = [["Edema"], ["Edema", "Pneumonia"]]
    greedy = [answer("Edema"), answer("Pneumonia", "Cardiomegaly")]
    sampled = [
        [answer("Edema"), answer("Atelectasis"), answer("No Finding")],
        [answer("Pneumonia"), answer("Pneumonia", "Edema"), "no tags at all"],
    ]
    out = pass_at_k_summary(greedy, sampled, gold, CX, 2, n_resamples=200, seed=0)
    assert (out["k"], out["n_samples"], out["n_images"], out["level"]) == (2, 3, 2, 0.95)
    assert set(MEASURES) <= set(out)
    expected = {
        "acc_at_1": (1 + 0) / 2,
        "acc_at_1_jaccard": (1 + 1 / 3) / 2,  # B's greedy: {Pneumonia, Cardiomegaly} vs {Edema, Pneumonia}
        "pass_at_1": (1 / 3 + 1 / 3) / 2,
        "pass_at_k": (2 / 3 + 2 / 3) / 2,  # 1 - C(2,2)/C(3,2) on each
        # A: sorted 0, 0, 1 -> (0*0 + 1*0 + 2*1)/3; B: sorted 0, .5, 1 -> (1*.5 + 2*1)/3
        "pass_at_k_jaccard": (2 / 3 + 2.5 / 3) / 2,
        "gap": ((2 / 3 - 1) + (2 / 3 - 0)) / 2,
    }
    for name, mean in expected.items():
        m = out[name]
        assert m["mean"] == pytest.approx(mean), name
        assert m["low"] <= m["mean"] <= m["high"], name
        assert (m["low"], m["high"]) == bootstrap_interval(
            [getattr(s, name) for s in _scores(greedy, sampled, gold)], n_resamples=200, seed=0
        )


def _scores(greedy, sampled, gold):
    return [
        image_scores(score_answer(g, y, CX), [score_answer(t, y, CX) for t in texts], 2)
        for g, texts, y in zip(greedy, sampled, gold, strict=True)
    ]


def test_pass_at_k_summary_rejects_mismatched_input():
    with pytest.raises(ValueError, match="2 greedy answers, 1 sets of samples and 2 gold"):
        pass_at_k_summary(["a", "b"], [["x"]], [["Edema"], ["Edema"]], CX, 1)
    with pytest.raises(ValueError, match=r"the same number of samples, got \[1, 2\]"):
        pass_at_k_summary(["a", "b"], [["x"], ["x", "y"]], [["Edema"], ["Edema"]], CX, 1)
    with pytest.raises(ValueError, match="at least one image"):
        pass_at_k_summary([], [], [], CX, 1)
