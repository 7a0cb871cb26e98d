"""Checkpoint selection, the trade-off warning and EMA smoothing, against hand-computed numbers."""

import math

import pytest

from chexrl.evaluation.selection import POLICIES, ema, select_checkpoints, tradeoff_warning


def _metrics(macro_f1: float) -> dict:
    """A minimal /evaluate-shaped metrics dict (only macro-F1 matters here)."""
    return {
        "n": 10,
        "fail_rate": 0.0,
        "micro": {"f1": 0.0},
        "macro": {"precision": 0, "recall": 0, "f1": macro_f1},
    }


def _record(step: int, id_f1: float, ood_f1: float) -> dict:
    return {"step": step, "id": _metrics(id_f1), "ood": _metrics(ood_f1), "id_name": "cx", "ood_name": "nih"}


def test_each_policy_picks_its_step():
    evals = [
        _record(0, 0.282, 0.299),  # the SFT start: best OOD
        _record(8, 0.346, 0.243),  # best ID (the paper's ChexReason)
        _record(16, 0.300, 0.290),  # best worst case: min 0.290
        _record(24, 0.320, 0.250),  # final
    ]
    picks = select_checkpoints(list(reversed(evals)))  # order of the input does not matter
    assert list(picks) == list(POLICIES)
    assert {name: p["step"] for name, p in picks.items()} == {
        "best_id": 8,
        "final": 24,
        "best_ood": 0,
        "best_worst_case": 16,
    }
    assert picks["best_id"] == {"step": 8, "id_macro_f1": 0.346, "ood_macro_f1": 0.243}


def test_ties_go_to_the_earliest_step():
    evals = [_record(10, 0.4, 0.2), _record(5, 0.4, 0.2), _record(20, 0.4, 0.2)]
    picks = select_checkpoints(evals)
    assert [picks[name]["step"] for name in ("best_id", "best_ood", "best_worst_case")] == [5, 5, 5]
    assert picks["final"]["step"] == 20


def test_worst_case_is_the_min_of_the_two_sides():
    # step 1: min(0.9, 0.1) = 0.1; step 2: min(0.3, 0.3) = 0.3 -> step 2, though step 1 has the higher mean
    picks = select_checkpoints([_record(1, 0.9, 0.1), _record(2, 0.3, 0.3)])
    assert picks["best_worst_case"]["step"] == 2


def test_no_evaluations_select_nothing_and_plain_numbers_work():
    assert select_checkpoints([]) == {}
    assert select_checkpoints([{"step": 3, "id": 0.5, "ood": 0.25}])["final"] == {
        "step": 3,
        "id_macro_f1": 0.5,
        "ood_macro_f1": 0.25,
    }


def test_warning_on_the_papers_tradeoff_absolute_margin():
    start, grpo = _record(0, 0.282, 0.299), _record(24, 0.346, 0.243)
    text = tradeoff_warning(start, grpo, 0.05)  # OOD drop 0.056 > 0.05
    assert text is not None
    assert "step 0 -> step 24" in text and "0.282 -> 0.346" in text and "0.299 -> 0.243" in text
    assert "+22.7%" in text and "-18.7%" in text and "cx" in text and "nih" in text
    assert tradeoff_warning(start, grpo, 0.06) is None  # the drop 0.056 is within 0.06


def test_warning_relative_margin():
    start, grpo = _record(0, 0.282, 0.299), _record(24, 0.346, 0.243)
    # relative drop (0.299 - 0.243) / 0.299 = 0.1873
    assert tradeoff_warning(start, grpo, 0.18, relative=True) is not None
    assert tradeoff_warning(start, grpo, 0.19, relative=True) is None
    assert "18%" in tradeoff_warning(start, grpo, 0.18, relative=True)
    # nothing falls from 0
    assert tradeoff_warning(_record(0, 0.1, 0.0), _record(1, 0.5, 0.0), 0.0, relative=True) is None


def test_no_warning_without_an_id_gain_or_with_an_ood_gain():
    assert tradeoff_warning(_record(0, 0.3, 0.3), _record(1, 0.3, 0.1), 0.05) is None  # ID flat
    assert tradeoff_warning(_record(0, 0.3, 0.3), _record(1, 0.2, 0.1), 0.05) is None  # ID fell too
    assert tradeoff_warning(_record(0, 0.3, 0.3), _record(1, 0.5, 0.4), 0.05) is None  # both rose
    # exactly at the margin is not more than the margin
    assert tradeoff_warning({"id": 0.25, "ood": 0.5}, {"id": 0.5, "ood": 0.25}, 0.25) is None
    with pytest.raises(ValueError, match="margin"):
        tradeoff_warning(_record(0, 0.3, 0.3), _record(1, 0.5, 0.1), -0.1)


def test_named_records_use_their_names():
    text = tradeoff_warning(
        {"name": "sft", "id": 0.2, "ood": 0.4}, {"name": "grpo", "id": 0.3, "ood": 0.2}, 0.05
    )
    assert text.startswith("sft -> grpo:")


def test_ema_debiased_matches_tensorboard_by_hand():
    # w = 0.95: last1 = 0.05 * 1 = 0.05, /(1 - 0.95) = 1.0
    #           last2 = 0.95 * 0.05 + 0.05 * 0 = 0.0475, /(1 - 0.9025) = 0.0475 / 0.0975 = 0.48718
    #           last3 = 0.95 * 0.0475 + 0.05 * 1 = 0.095125, /(1 - 0.857375) = 0.66696
    out = ema([1.0, 0.0, 1.0], 0.95)
    assert out == pytest.approx([1.0, 0.0475 / 0.0975, 0.095125 / 0.142625])


def test_ema_plain_is_seeded_with_the_first_value():
    # 2, then 0.5 * 2 + 0.5 * 4 = 3, then 0.5 * 3 + 0.5 * 0 = 1.5
    assert ema([2.0, 4.0, 0.0], 0.5, debias=False) == [2.0, 3.0, 1.5]


def test_ema_constant_series_is_unchanged_and_missing_points_pass_through():
    assert ema([0.7] * 5, 0.95) == pytest.approx([0.7] * 5)
    out = ema([1.0, None, float("nan"), 0.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and math.isnan(out[2])
    assert out[3] == pytest.approx(0.25 / 0.75)  # as if the missing points were not there
    assert ema([], 0.9) == []
    assert ema([3.0, 5.0], 0.0) == [3.0, 5.0]  # no smoothing
    with pytest.raises(ValueError, match="smoothing"):
        ema([1.0], 1.0)
