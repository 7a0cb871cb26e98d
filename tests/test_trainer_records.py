"""The record one GRPO step is made of: filled by generation, completed by /score, read by the filter,
the learner's batch, the completion log and the reward metrics."""

from __future__ import annotations

import pytest

from chexrl.core.scoring import ScoredCompletion
from trainer.filtering import collect_groups
from trainer.records import CompletionRecord, Group, records_of, reward_metrics, set_scores


def _record(sample: int, text: str, *, truncated: bool = False) -> CompletionRecord:
    return CompletionRecord(sample, "prompt", b"png", ("Edema",), text, [1, 2, 3], [-0.5] * 3, truncated)


def _scored(reward: float, valid: bool = True) -> ScoredCompletion:
    return ScoredCompletion(reward=reward, valid=valid, predicted=["Edema"], components={"jaccard": reward})


def test_scores_complete_the_records_and_give_each_its_advantage():
    groups = [Group(0, [_record(0, "a"), _record(0, "b")]), Group(3, [_record(3, "c"), _record(3, "d")])]
    assert [r.score_item()["completion"] for r in records_of(groups)] == ["a", "b", "c", "d"]
    set_scores(groups, [_scored(1.0), _scored(0.0), _scored(0.5), _scored(0.5)])
    assert groups[0].rewards == [1.0, 0.0] and groups[0].has_signal
    assert [r.advantage for r in groups[0].records] == [0.5, -0.5]  # Dr. GRPO: reward - group mean
    assert not groups[1].has_signal and [r.advantage for r in groups[1].records] == [0.0, 0.0]
    row = groups[0].records[0].log_row()
    assert row == {
        "sample": 0, "completion": "a", "labels": ["Edema"], "reward": 1.0, "components": {"jaccard": 1.0},
        "valid": True, "truncated": False, "advantage": 0.5,
    }  # fmt: skip
    example = groups[1].records[1].training_example()
    assert (example.completion_ids, example.engine_logprobs, example.image) == ([1, 2, 3], [-0.5] * 3, b"png")


def test_a_score_answer_of_the_wrong_length_is_refused():
    groups = [Group(0, [_record(0, "a"), _record(0, "b")])]
    with pytest.raises(ValueError, match="1 scores for a group of 2"):
        set_scores(groups, [_scored(1.0)])
    with pytest.raises(ValueError, match="3 scores for 2 completions"):
        set_scores(groups, [_scored(1.0)] * 3)
    with pytest.raises(ValueError, match="has not been scored"):
        _ = Group(1, [_record(1, "x")]).rewards


def test_reward_metrics_read_every_record():
    groups = [Group(0, [_record(0, "a", truncated=True), _record(0, "b")]), Group(1, [_record(1, "c")])]
    set_scores(groups, [_scored(1.0), _scored(0.0, valid=False), _scored(0.25)])
    metrics = reward_metrics(groups)
    assert metrics["reward/total"] == pytest.approx(1.25 / 3)
    assert metrics["reward/valid_fraction"] == pytest.approx(2 / 3)
    assert metrics["completion/truncated_fraction"] == pytest.approx(1 / 3)
    assert metrics["advantage/zero_std_fraction"] == pytest.approx(1 / 2)
    assert metrics["reward/jaccard"] == pytest.approx(1.25 / 3) and metrics["completion/length"] == 3


def test_the_filter_keeps_and_drops_whole_groups():
    rewards = {0: [0.5, 0.5], 1: [0.0, 1.0], 2: [1.0, 1.0], 3: [0.2, 0.4]}

    def draw(batch: int) -> list[Group]:
        return [Group(i, [_record(i, f"{i}{j}") for j in range(2)]) for i in (2 * batch, 2 * batch + 1)]

    def score(groups: list[Group]) -> None:
        set_scores(groups, [_scored(r) for g in groups for r in rewards[g.sample]])

    batch = collect_groups(draw, score, wanted=2, max_resample_batches=3)
    assert [g.sample for g in batch.drawn] == [0, 1, 2, 3] and [g.sample for g in batch.train] == [1, 3]
    assert batch.metrics == {
        "filter/resample_batches": 1.0,
        "filter/kept_groups": 2.0,
        "filter/skipped_update": 0.0,
    }
    off = collect_groups(draw, score, wanted=2, max_resample_batches=None)
    assert [g.sample for g in off.train] == [0, 1] and off.metrics == {}
