"""The demo's summary arithmetic (pure): which steps the first and last GRPO reward figures average."""

import pytest

from chexrl.demo import reward_first_last, steps_per_pass, transfer_gap


def _history(rewards):
    return [{"reward/total": r} for r in rewards]


def test_whole_passes_compare_the_first_and_the_last_pass():
    # 3 passes of 2 steps, then half a pass: the trailing partial pass is left out
    rewards = [0.1, 0.3, 0.5, 0.5, 0.6, 0.8, 0.9]
    out = reward_first_last(_history(rewards), steps_per_pass=2)
    assert out["grpo_reward_basis"] == "pass" and out["grpo_reward_window"] == 2
    assert out["grpo_reward_first"] == pytest.approx(0.2)
    assert out["grpo_reward_last"] == pytest.approx(0.7)
    assert out["grpo_reward_per_step"] == rewards


def test_quarters_when_the_run_makes_fewer_than_two_passes():
    rewards = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]
    out = reward_first_last(_history(rewards), steps_per_pass=5)
    assert out["grpo_reward_basis"] == "quarter" and out["grpo_reward_window"] == 2
    assert out["grpo_reward_first"] == pytest.approx(0.1)
    assert out["grpo_reward_last"] == pytest.approx(1.3)
    single = reward_first_last(_history([0.3, 0.7]))
    assert (single["grpo_reward_first"], single["grpo_reward_last"], single["grpo_reward_window"]) == (
        0.3,
        0.7,
        1,
    )


def test_steps_per_pass_only_when_passes_line_up_with_steps():
    assert steps_per_pass(64, 8) == 8
    assert steps_per_pass(100, 8) is None


def test_transfer_gap_is_the_relative_change_from_id_to_ood():
    assert transfer_gap(0.4, 0.3) == pytest.approx(-0.25)
    assert transfer_gap(0.0, 0.3) is None
