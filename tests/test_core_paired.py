"""Paired bootstrap intervals (chexrl.core.paired) against hand computations and a brute-force bootstrap
built on chexrl.core.metrics."""

import numpy as np
import pytest

from chexrl.core.metrics import label_set_metrics
from chexrl.core.paired import (
    ImageOutcomes,
    Interval,
    gap_change,
    paired_differences,
    resample_counts,
    set_measures,
)
from chexrl.core.schemas import SCHEMAS

CX = SCHEMAS["chexpert14"]
NIH = SCHEMAS["nih9"]

GOLD = [["Edema"], ["Cardiomegaly", "Edema"], ["No Finding"], ["Atelectasis"], ["Edema"], ["No Finding"]]
MODEL_A = [["Edema"], ["Edema"], ["Edema"], ["Atelectasis"], [], ["No Finding"]]
MODEL_B = [["Edema"], ["Cardiomegaly", "Edema"], ["No Finding"], ["Atelectasis"], ["Edema"], ["Edema"]]
INVALID_A = [False, False, False, False, True, False]


def outcomes(preds, golds=GOLD, schema=CX, invalid=None) -> ImageOutcomes:
    return ImageOutcomes.from_label_sets(preds, golds, schema, invalid)


def brute_force(preds_a, preds_b, golds, schema, invalid_a, invalid_b, n_resamples, seed, key):
    """Resample the images with the same index draws and score each resample with label_set_metrics."""
    n = len(golds)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    diffs = []
    for row in idx:
        ma = label_set_metrics(
            [preds_a[i] for i in row], [golds[i] for i in row], schema, [invalid_a[i] for i in row]
        )
        mb = label_set_metrics(
            [preds_b[i] for i in row], [golds[i] for i in row], schema, [invalid_b[i] for i in row]
        )
        diffs.append(key(mb) - key(ma))
    return np.quantile(diffs, [0.025, 0.975])


def test_full_set_measures_are_label_set_metrics():
    m = label_set_metrics(MODEL_A, GOLD, CX, INVALID_A)
    s = set_measures(outcomes(MODEL_A, invalid=INVALID_A))
    assert s["macro_f1"][0] == pytest.approx(m.macro.f1)
    assert s["micro_f1"][0] == pytest.approx(m.micro.f1)
    assert s["fail_rate"][0] == pytest.approx(m.fail_rate) == pytest.approx(1 / 6)
    assert s["per_label"][0].tolist() == pytest.approx([m.per_label[x].f1 for x in CX.labels])


def test_identical_models_give_zero_and_a_zero_interval():
    d = paired_differences(outcomes(MODEL_A), outcomes(MODEL_A))
    for key in ("macro_f1", "micro_f1", "fail_rate"):
        assert d[key] == Interval(0.0, 0.0, 0.0)
        assert not d[key].excludes_zero
    assert all(iv == Interval(0.0, 0.0, 0.0) for iv in d["per_label"].values())


def test_matches_a_brute_force_bootstrap():
    invalid_b = [False] * 5 + [True]
    a, b = outcomes(MODEL_A, invalid=INVALID_A), outcomes(MODEL_B, invalid=invalid_b)
    d = paired_differences(a, b, n_resamples=200, seed=7)
    args = (MODEL_A, MODEL_B, GOLD, CX, INVALID_A, invalid_b, 200, 7)
    for key, get in (
        ("macro_f1", lambda m: m.macro.f1),
        ("micro_f1", lambda m: m.micro.f1),
        ("fail_rate", lambda m: m.fail_rate),
    ):
        low, high = brute_force(*args, get)
        assert (d[key].low, d[key].high) == pytest.approx((low, high))
    low, high = brute_force(*args, lambda m: m.per_label["Edema"].f1)
    assert (d["per_label"]["Edema"].low, d["per_label"]["Edema"].high) == pytest.approx((low, high))
    full_a, full_b = (
        label_set_metrics(MODEL_A, GOLD, CX, INVALID_A),
        label_set_metrics(MODEL_B, GOLD, CX, invalid_b),
    )
    assert d["macro_f1"].delta == pytest.approx(full_b.macro.f1 - full_a.macro.f1)
    assert d["fail_rate"].delta == pytest.approx(0.0)


def test_a_hand_computed_shift():
    # 10 images with gold Edema; a gets 5 right, b all 10: per-image micro-F1 shift is sure, the
    # interval of micro-F1 b - a is (1 - F1_a) on every resample where a is not all wrong or right
    golds = [["Edema"]] * 10
    a = outcomes([["Edema"]] * 5 + [[]] * 5, golds)
    b = outcomes([["Edema"]] * 10, golds)
    d = paired_differences(a, b, n_resamples=300)
    # F1_a = 2*5 / (2*5 + 0 + 5) = 2/3
    assert d["micro_f1"].delta == pytest.approx(1 - 2 / 3)
    assert d["micro_f1"].excludes_zero and d["micro_f1"].low > 0
    assert d["macro_f1"].delta == pytest.approx((1 - 2 / 3) / 14)  # one label of 14 moves
    # b - a is never negative on any resample: b is right wherever a is
    assert d["per_label"]["Edema"].low >= 0
    # reversing the pair mirrors the interval
    r = paired_differences(b, a, n_resamples=300)
    assert (r["micro_f1"].low, r["micro_f1"].high) == pytest.approx((-d["micro_f1"].high, -d["micro_f1"].low))


def test_seed_determinism_and_seed_matters():
    a, b = outcomes(MODEL_A), outcomes(MODEL_B)
    assert paired_differences(a, b, seed=3) == paired_differences(a, b, seed=3)
    assert paired_differences(a, b, seed=3)["macro_f1"] != paired_differences(a, b, seed=4)["macro_f1"]


def test_resample_counts_match_index_draws():
    counts = resample_counts(5, n_resamples=4, seed=1)
    idx = np.random.default_rng(1).integers(0, 5, size=(4, 5))
    assert counts.tolist() == [np.bincount(row, minlength=5).tolist() for row in idx]
    assert (counts.sum(axis=1) == 5).all()


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same images"):
        paired_differences(outcomes(MODEL_A), outcomes(MODEL_A[:5], GOLD[:5]))
    other_gold = [["Edema"]] * 6
    with pytest.raises(ValueError, match="gold label tables differ"):
        paired_differences(outcomes(MODEL_A), outcomes(MODEL_A, other_gold))


def test_gap_change_by_hand_and_brute_force():
    ood_gold = [["Edema"], ["Cardiomegaly"], ["No Finding"], ["Atelectasis"]]
    a_id, b_id = outcomes(MODEL_A, schema=NIH), outcomes(MODEL_B, schema=NIH)
    a_ood = outcomes([["Edema"], ["Cardiomegaly"], ["No Finding"], []], ood_gold, NIH)
    b_ood = outcomes([["Edema"], [], ["No Finding"], []], ood_gold, NIH)
    iv = gap_change(a_id, a_ood, b_id, b_ood, n_resamples=100, seed=2)

    def gap(pid, pood, wid=None, wood=None):
        m_id = set_measures(pid, wid)["macro_f1"]
        m_ood = set_measures(pood, wood)["macro_f1"]
        return (m_ood - m_id) / m_id

    assert iv.delta == pytest.approx(float(gap(b_id, b_ood)[0] - gap(a_id, a_ood)[0]))
    # brute force: ID resampled with the seed, OOD with seed + 1, one resample at a time
    diffs = []
    w_id, w_ood = resample_counts(6, n_resamples=100, seed=2), resample_counts(4, n_resamples=100, seed=3)
    for r in range(100):
        wi, wo = w_id[r : r + 1], w_ood[r : r + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = gap(b_id, b_ood, wi, wo)[0] - gap(a_id, a_ood, wi, wo)[0]
        if np.isfinite(d):
            diffs.append(d)
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))


def test_gap_change_is_none_without_an_id_score():
    golds = [["Edema"]] * 3
    zero = outcomes([[]] * 3, golds)
    assert gap_change(zero, zero, zero, zero) is None


def test_interval_text_and_zero():
    assert Interval(-0.036, -0.081, 0.012).text() == "-0.036 [-0.081, +0.012]"
    assert not Interval(-0.036, -0.081, 0.012).excludes_zero
    assert Interval(-0.05, -0.09, -0.01).excludes_zero
