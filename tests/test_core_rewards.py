"""The hard and nuanced rewards against hand-computed values, and their invariants."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chexrl.core.config import HardRewardConfig, NuancedRewardConfig, RewardConfig
from chexrl.core.parsing import format_completion, parse_completion
from chexrl.core.rewards import PredictionWindow, hard_reward, jaccard, nuanced_reward
from chexrl.core.schemas import CHEXPERT14, SCHEMAS
from chexrl.core.scoring import score_completion

CX = SCHEMAS["chexpert14"]


def parsed(labels_text: str, think: str = "reasoning"):
    return parse_completion(f"<think>{think}</think><solution>{labels_text}</solution>", CX)


def test_jaccard_by_hand():
    assert jaccard(frozenset({"A", "B", "C"}), frozenset({"B", "C", "D"})) == pytest.approx(2 / 4)
    assert jaccard(frozenset(), frozenset()) == 1.0
    assert jaccard(frozenset({"A"}), frozenset()) == 0.0


def test_hard_reward_equation_3():
    cfg = HardRewardConfig(lambda_len=0.2, min_length=250)
    p = parsed("Edema, Cardiomegaly")
    gold = frozenset({"Edema", "Pleural Effusion"})
    long = hard_reward(p, gold, length=250, cfg=cfg)
    assert long.total == pytest.approx(1 / 3)
    assert long.components == {"jaccard": pytest.approx(1 / 3), "length_penalty": 0.0}
    short = hard_reward(p, gold, length=249, cfg=cfg)
    assert short.total == pytest.approx(1 / 3 - 0.2)
    invalid = hard_reward(parse_completion("<solution>Edema</solution>", CX), gold, length=999, cfg=cfg)
    assert invalid.total == 0.0


def test_length_units():
    text = format_completion("word " * 60, ["Edema"])
    cfg = RewardConfig(hard=HardRewardConfig(length_unit="words", min_length=50))
    assert score_completion(text, frozenset({"Edema"}), "hard", cfg).reward.total == 1.0
    cfg = RewardConfig(hard=HardRewardConfig(length_unit="tokens", min_length=50))
    assert score_completion(
        text, frozenset({"Edema"}), "hard", cfg, num_tokens=10
    ).reward.total == pytest.approx(0.9)
    with pytest.raises(ValueError, match="num_tokens"):
        score_completion(text, frozenset({"Edema"}), "hard", cfg)


def test_nuanced_exact_match_by_hand():
    cfg = NuancedRewardConfig()
    r = nuanced_reward(
        parsed("Edema, Cardiomegaly"), frozenset({"Edema", "Cardiomegaly"}), PredictionWindow(), cfg
    )
    # +100 match, +30 * 2/2 recall, +20 * 2/2 precision, nothing else
    assert r.total == pytest.approx(150.0)
    assert r.components["match"] == 100.0
    assert r.total == pytest.approx(sum(r.components.values()))


def test_nuanced_partial_and_frequency_weighted_false_positives():
    cfg = NuancedRewardConfig()
    gold = frozenset({"Edema", "Pneumonia"})
    # one correct of 2 gold; 1 correct of 3 predicted; FPs: No Finding (freq .33 = peak), Fracture (.02)
    r = nuanced_reward(parsed("Edema, No Finding, Fracture"), gold, PredictionWindow(), cfg)
    fp_no_finding = 5.0 + 15.0 * 0.33 / 0.33
    fp_fracture = 5.0 + 15.0 * 0.02 / 0.33
    expected = 30 * 1 / 2 + 20 * 1 / 3 - fp_no_finding - fp_fracture
    assert r.total == pytest.approx(expected)
    assert r.components["false_positive"] == pytest.approx(-(fp_no_finding + fp_fracture))
    # a frequent label costs more than a rare one
    common = nuanced_reward(parsed("Edema, Support Devices"), gold, PredictionWindow(), cfg)
    rare = nuanced_reward(parsed("Edema, Pleural Other"), gold, PredictionWindow(), cfg)
    assert common.total < rare.total


def test_nuanced_format_penalties():
    cfg = NuancedRewardConfig()
    p = parse_completion("hi <think>t</think><solution>Edema, Edema, Infiltration</solution>", CX)
    r = nuanced_reward(p, frozenset({"Edema"}), PredictionWindow(), cfg)
    assert r.components["invalid_label"] == -100.0
    assert r.components["duplicate_label"] == -25.0
    assert r.components["outside_text"] == -10.0
    assert r.total == pytest.approx(100 + 30 + 20 - 100 - 25 - 10)
    bad = nuanced_reward(parse_completion("Edema", CX), frozenset({"Edema"}), PredictionWindow(), cfg)
    assert bad.total == -100.0 and bad.components["invalid_format"] == -100.0


def test_window_collapse_penalties():
    cfg = NuancedRewardConfig(window_size=10, collapse_min_window=5, collapse_dominance=0.7)
    window = PredictionWindow(size=10)
    gold = frozenset({"No Finding"})
    for _ in range(4):
        window.push(["No Finding"])
    # 4 < min window: no collapse penalty yet
    assert nuanced_reward(parsed("No Finding"), gold, window, cfg).components["mode_collapse"] == 0.0
    window.push(["No Finding"])
    r = nuanced_reward(parsed("No Finding"), gold, window, cfg)
    assert r.components["repetition"] == -30.0 and r.components["mode_collapse"] == -50.0
    # a label that is not dominant is not penalised
    r2 = nuanced_reward(parsed("Edema"), frozenset({"Edema"}), window, cfg)
    assert r2.components["repetition"] == 0.0 and r2.components["mode_collapse"] == 0.0
    # diluting the window below 70% lifts the penalty: 5 of 10 = 50%
    for _ in range(5):
        window.push(["Edema"])
    assert window.share("No Finding") == pytest.approx(0.5)
    assert nuanced_reward(parsed("No Finding"), gold, window, cfg).components["mode_collapse"] == 0.0


def test_window_is_bounded_and_counts_stay_in_step():
    window = PredictionWindow(size=3)
    for labels in (["A"], ["A", "B"], ["B"], ["C"], ["C"]):
        window.push(labels)
    assert window.to_list() == [["B"], ["C"], ["C"]]
    assert window.share("A") == 0 and window.share("C") == pytest.approx(2 / 3)
    again = PredictionWindow.from_list(3, window.to_list())
    assert again.to_list() == window.to_list() and again.counts == window.counts


def test_score_completion_pushes_valid_predictions_only():
    cfg = RewardConfig()
    window = PredictionWindow(size=100)
    score_completion(format_completion("t", ["Edema"]), frozenset({"Edema"}), "nuanced", cfg, window)
    score_completion("garbage", frozenset({"Edema"}), "nuanced", cfg, window)
    assert window.to_list() == [["Edema"]]


def test_unknown_frequency_labels_are_rejected():
    with pytest.raises(ValueError, match="outside CheXpert"):
        NuancedRewardConfig(label_frequencies={"Infiltration": 0.1})
    with pytest.raises(ValueError, match="extra"):
        HardRewardConfig(lamda_len=0.1)


label_sets = st.frozensets(st.sampled_from(CHEXPERT14), max_size=6)


@given(gold=label_sets, pred=label_sets)
def test_reward_invariants(gold, pred):
    p = parsed(", ".join(sorted(pred)))
    h = hard_reward(p, gold, length=1000, cfg=HardRewardConfig())
    assert 0.0 <= h.total <= 1.0
    assert (h.total == 1.0) == (gold == pred)
    n = nuanced_reward(p, gold, PredictionWindow(), NuancedRewardConfig())
    assert n.total == pytest.approx(sum(n.components.values()))
    assert n.total <= 150.0
    assert (n.components["match"] == 100.0) == (gold == pred)
    if gold == pred:
        assert n.total == pytest.approx(150.0 if gold else 100.0)
