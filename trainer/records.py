"""The record one GRPO step is made of: a `CompletionRecord` per sampled completion and a `Group` per
prompt (the completions GRPO compares with each other).

A record is filled as the step goes: generation writes the prompt, the image, the completion's tokens and
the sampling policy's log-probs; the evaluator's `/score` answer adds the reward and its components; the
group's mean then gives each record its advantage. Everything downstream reads the same records: the
zero-signal filter keeps or drops whole groups (`Group.has_signal`), the learner's batch is built from the
kept groups, and the completion log rows and reward metrics are read from every group drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chexrl.core.scoring import ScoredCompletion
from trainer.grpo import TrainingExample


@dataclass
class CompletionRecord:
    """One sampled completion of one RL image, and what the step learns about it."""

    sample: int  # index of the RL sample (image and gold labels) in the run's RL set
    prompt_text: str  # the prompt as the model's chat template rendered it
    image: bytes  # the encoded image file the prompt carried
    labels: tuple[str, ...]  # gold labels
    text: str  # the completion
    token_ids: list[int]
    sampling_logprobs: list[float]  # per token, as the rollout engine sampled it
    truncated: bool  # cut off at max_tokens (vLLM finish_reason "length")
    scored: ScoredCompletion | None = None  # the evaluator's answer: reward, validity, components
    advantage: float | None = None  # reward - its group's mean (Dr. GRPO: no division by the std)

    @property
    def reward(self) -> float:
        if self.scored is None:
            raise ValueError(f"completion of sample {self.sample} has not been scored")
        return self.scored.reward

    def score_item(self) -> dict:
        """The record as an item of a `/score` request."""
        return {"completion": self.text, "labels": list(self.labels), "num_tokens": len(self.token_ids)}

    def training_example(self) -> TrainingExample:
        """What the learner needs of the record (it computes the advantages itself, from the rewards)."""
        return TrainingExample(
            self.prompt_text, self.image, self.token_ids, self.sampling_logprobs, truncated=self.truncated
        )

    def log_row(self) -> dict:
        """The record's completions.jsonl row."""
        assert self.scored is not None
        return {
            "sample": self.sample,
            "completion": self.text,
            "labels": list(self.labels),
            "reward": self.scored.reward,
            "components": self.scored.components,
            "valid": self.scored.valid,
            "truncated": self.truncated,
            "advantage": self.advantage,
        }


@dataclass
class Group:
    """The completions of one prompt: GRPO's unit of comparison, kept or dropped whole."""

    sample: int
    records: list[CompletionRecord] = field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.records]

    @property
    def has_signal(self) -> bool:
        """A group teaches something only if its rewards differ (else every advantage is zero)."""
        return len(set(self.rewards)) > 1

    def set_scores(self, scored: list[ScoredCompletion]) -> None:
        """Complete the records with the evaluator's answers (in record order) and their advantages."""
        if len(scored) != len(self.records):
            raise ValueError(f"{len(scored)} scores for a group of {len(self.records)} completions")
        for record, answer in zip(self.records, scored, strict=True):
            record.scored = answer
        mean = sum(self.rewards) / len(self.records)
        for record in self.records:
            record.advantage = record.reward - mean


def records_of(groups: list[Group]) -> list[CompletionRecord]:
    """The groups' records, prompt-major (a group's completions contiguous, as the learner expects)."""
    return [r for g in groups for r in g.records]


def set_scores(groups: list[Group], scored: list[ScoredCompletion]) -> None:
    """Hand each group its slice of one `/score` answer over `records_of(groups)`."""
    start = 0
    for group in groups:
        group.set_scores(scored[start : start + len(group.records)])
        start += len(group.records)
    if start != len(scored):
        raise ValueError(f"{len(scored)} scores for {start} completions")


def reward_metrics(groups: list[Group]) -> dict[str, float]:
    """The step's reward, validity, length and zero-signal figures over every completion drawn."""
    records = records_of(groups)
    n = len(records)
    out = {
        # groups whose samples all scored the same: zero advantages, nothing to learn from (TRL's
        # frac_reward_zero_std); a high share says the reward cannot tell this policy's samples apart
        "advantage/zero_std_fraction": sum(not g.has_signal for g in groups) / len(groups),
        "reward/total": sum(r.reward for r in records) / n,
        "reward/valid_fraction": sum(r.scored.valid for r in records) / n,
        "completion/length": sum(len(r.token_ids) for r in records) / n,
        "completion/truncated_fraction": sum(r.truncated for r in records) / n,
    }
    for key in records[0].scored.components:
        out[f"reward/{key}"] = sum(r.scored.components[key] for r in records) / n
    return out
