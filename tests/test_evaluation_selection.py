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


# ------------------------------------------------------------------- ties and the stop rule (per image)

OOD_GOLD = [["Atelectasis"] if i % 2 else ["Pneumothorax"] for i in range(20)]
ID_GOLD = [["Edema"]] * 20


def _answers(gold, right: int, schema: str) -> dict:
    preds = [list(g) if i < right else [] for i, g in enumerate(gold)]
    return {"schema": schema, "gold": gold, "predicted": preds, "invalid": [False] * len(gold)}


def _per_image_record(step: int, id_right: int, ood_right: int) -> dict:
    """An evaluation record as the training loop writes it: metrics and the per-image answers they come from."""
    from chexrl.core.metrics import label_set_metrics
    from chexrl.core.schemas import get_schema

    per_image = {
        "id": _answers(ID_GOLD, id_right, "chexpert14"),
        "ood": _answers(OOD_GOLD, ood_right, "nih9"),
    }
    metrics = {
        side: label_set_metrics(a["predicted"], a["gold"], get_schema(a["schema"])).as_dict()
        for side, a in per_image.items()
    }
    return {"step": step, **metrics, "id_name": "cx", "ood_name": "nih", "per_image": per_image}


def test_picks_within_noise_are_reported_as_ties_with_the_rule():
    from chexrl.evaluation.selection import TIE_BREAK

    # OOD: step 8 answers 15 of 20, step 16 answers 14 (one image apart: within noise), step 0 answers 2
    evals = [_per_image_record(0, 10, 2), _per_image_record(8, 12, 15), _per_image_record(16, 12, 14)]
    picks = select_checkpoints(evals)
    assert picks["best_ood"]["step"] == 8
    assert picks["best_ood"]["tied_with"] == [16] and picks["best_ood"]["tie_break"] == TIE_BREAK
    # ID: steps 8 and 16 answer the same images (an exact tie: the earliest step is kept)
    assert picks["best_id"]["step"] == 8 and 16 in picks["best_id"]["tied_with"]
    assert "tied_with" not in picks["final"]
    # a clear winner has no ties
    clear = select_checkpoints([_per_image_record(0, 0, 0), _per_image_record(8, 20, 20)])
    assert clear["best_ood"]["tied_with"] == [] and "tie_break" not in clear["best_ood"]
    # without per-image answers, or on other images at some step, nothing is claimed about ties
    assert "tied_with" not in select_checkpoints([_record(0, 0.3, 0.3)])["best_ood"]
    other = _per_image_record(24, 12, 14)
    other["per_image"]["ood"]["gold"] = other["per_image"]["ood"]["gold"][::-1]
    assert "tied_with" not in select_checkpoints([*evals, other])["best_ood"]


def test_selection_table_states_the_ties():
    from chexrl.evaluation.render import markdown_table
    from chexrl.evaluation.tables import selection_table

    evals = [_per_image_record(0, 10, 2), _per_image_record(8, 12, 15), _per_image_record(16, 12, 14)]
    md = markdown_table(selection_table(select_checkpoints(evals)))
    assert "tie with step 16; broken by the highest macro-F1 on the full set" in md


def test_intervals_vs_start_are_the_paired_differences():
    from chexrl.core.paired import outcomes_of, paired_differences
    from chexrl.evaluation.selection import intervals_vs_start

    start, cur = _per_image_record(0, 10, 18), _per_image_record(8, 12, 4)
    ivs = intervals_vs_start(start, cur)
    expected = paired_differences(
        outcomes_of(start["per_image"]["ood"]), outcomes_of(cur["per_image"]["ood"])
    )
    assert ivs["ood"] == expected["macro_f1"].as_dict() and ivs["ood"]["high"] < 0
    assert intervals_vs_start(_record(0, 0.3, 0.3), cur) is None
    fewer = _per_image_record(8, 12, 4)
    fewer["per_image"]["ood"] = {
        k: v[:10] if isinstance(v, list) else v for k, v in fewer["per_image"]["ood"].items()
    }
    assert intervals_vs_start(start, fewer) is None  # other images: no pairing


def _with_drop(step: int, high: float) -> dict:
    return _record(step, 0.3, 0.2) | {
        "vs_start": {"id": None, "ood": {"delta": high - 0.05, "low": high - 0.1, "high": high}}
    }


def test_stop_rule_counts_drops_in_a_row_beyond_the_margin():
    from chexrl.evaluation.selection import ood_drop_streak, stop_reason

    evals = [
        _record(0, 0.3, 0.3),
        _with_drop(2, -0.06),
        _with_drop(4, -0.01),
        _with_drop(6, -0.04),
        _with_drop(8, -0.03),
    ]
    assert ood_drop_streak(evals, 0.02) == 2  # steps 6 and 8; step 4 (-0.01) does not clear -0.02
    assert ood_drop_streak(evals, 0.0) == 4
    assert ood_drop_streak(evals, 0.05) == 0  # step 8's interval reaches -0.03, above -0.05
    assert stop_reason(evals, 0.05, 1) is None  # a margin that must not trigger
    reason = stop_reason(evals, 0.02, 2)  # a margin that must trigger
    assert reason and "2 evaluations in a row" in reason and "step 8" in reason and "-0.020" in reason
    assert stop_reason(evals, 0.02, 3) is None
    # a record without an interval (no per-image answers) ends the run of drops
    assert ood_drop_streak([*evals, _record(10, 0.3, 0.1)], 0.0) == 0
    with pytest.raises(ValueError, match="at least 1"):
        stop_reason(evals, 0.02, 0)


def test_tradeoff_finding_quotes_its_evidence():
    from chexrl.evaluation.selection import tradeoff_finding

    start, grpo = _record(0, 0.282, 0.299), _record(24, 0.304, 0.243) | {"n_ood": 100}
    ivs = {
        "id": {"delta": 0.022, "low": -0.010, "high": 0.051},
        "ood": {"delta": -0.056, "low": -0.081, "high": 0.012},
    }
    note = tradeoff_finding(start, grpo, 0.05, intervals=ivs)
    assert not note.warning
    assert "ID macro-F1 (cx) +0.022 [-0.010, +0.051]" in note.text
    assert "OOD macro-F1 (nih) -0.056 [-0.081, +0.012] (0.299 -> 0.243, n=100)" in note.text
    assert "within resampling noise at n=100 images" in note.text
    ivs["ood"] = {"delta": -0.056, "low": -0.09, "high": -0.02}
    warning = tradeoff_finding(start, grpo, 0.05, intervals=ivs)
    assert warning.warning and "interval excludes 0" in warning.text
    assert tradeoff_finding(start, grpo, 0.06, intervals=ivs) is None  # the drop is within the margin


def test_the_in_training_table_shows_each_step_against_the_start():
    from chexrl.evaluation.render import markdown_table
    from chexrl.evaluation.selection import intervals_vs_start
    from chexrl.evaluation.tables import evals_table

    start, cur = _per_image_record(0, 10, 18), _per_image_record(8, 12, 4)
    cur["vs_start"] = intervals_vs_start(start, cur)
    md = markdown_table(evals_table([start, cur]))
    ood = cur["vs_start"]["ood"]
    assert f"| {ood['delta']:+.3f} [{ood['low']:+.3f}, {ood['high']:+.3f}] |" in md
    assert "| OOD macro-F1 vs start [95%] |" in md
