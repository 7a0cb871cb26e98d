"""Metrics: hand-computed cases and a two-way check against scikit-learn."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import precision_recall_fscore_support

from chexrl.core.metrics import completion_metrics, label_set_metrics
from chexrl.core.parsing import format_completion
from chexrl.core.schemas import CHEXPERT14, NIH9, SCHEMAS

CX = SCHEMAS["chexpert14"]


def test_hand_computed_small_case():
    completions = [
        format_completion("a", ["Edema", "Cardiomegaly"]),  # gold Edema -> tp Edema, fp Cardiomegaly
        format_completion("b", ["Edema"]),  # gold Edema, Pneumonia -> tp Edema, fn Pneumonia
        "not a valid completion",  # gold Cardiomegaly -> fn Cardiomegaly
    ]
    golds = [["Edema"], ["Edema", "Pneumonia"], ["Cardiomegaly"]]
    m = completion_metrics(completions, golds, CX)
    assert m.n == 3 and m.fail_rate == pytest.approx(1 / 3)
    # micro: tp=2, fp=1, fn=2
    assert m.micro.precision == pytest.approx(2 / 3)
    assert m.micro.recall == pytest.approx(2 / 4)
    assert m.micro.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m.per_label["Edema"].f1 == 1.0 and m.per_label["Edema"].support == 2
    assert m.per_label["Cardiomegaly"].precision == 0.0 and m.per_label["Cardiomegaly"].support == 1
    assert m.per_label["Pneumonia"].recall == 0.0
    # macro over all 14 labels: only Edema has F1 1, the rest 0
    assert m.macro.f1 == pytest.approx(1 / 14)


def test_labels_outside_the_schema_are_ignored():
    m = label_set_metrics([["Support Devices", "Edema"]], [["Edema"]], SCHEMAS["nih9"])
    assert m.micro.precision == 1.0
    assert set(m.per_label) == set(NIH9)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        label_set_metrics([[], []], [[]], CX)


def _indicator(sets, labels):
    return np.array([[lab in s for lab in labels] for s in sets], dtype=int)


label_sets = st.lists(st.sampled_from(CHEXPERT14), unique=True, max_size=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(label_sets, label_sets), min_size=1, max_size=30))
def test_agrees_with_scikit_learn(pairs):
    preds = [p for p, _ in pairs]
    golds = [g for _, g in pairs]
    m = label_set_metrics(preds, golds, CX)
    y_true, y_pred = _indicator(golds, CHEXPERT14), _indicator(preds, CHEXPERT14)
    for avg, ours in (("micro", m.micro), ("macro", m.macro)):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx((p, r, f))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    for i, label in enumerate(CHEXPERT14):
        score = m.per_label[label]
        assert (score.precision, score.recall, score.f1, score.support) == pytest.approx(
            (p[i], r[i], f[i], s[i])
        )
