"""Score one completion with the hard or nuanced reward: parse, measure, reward. Shared by the evaluator's
/score route and the trainer so both compute exactly the same number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from chexrl.core.config import RewardConfig
from chexrl.core.parsing import ParsedCompletion, parse_completion
from chexrl.core.rewards import PredictionWindow, Reward, completion_length, hard_reward, nuanced_reward
from chexrl.core.schemas import SCHEMAS, TRAINING_SCHEMA

RewardKind = Literal["hard", "nuanced"]


class ScoredCompletion(BaseModel):
    """One completion, scored: what the evaluator's `/score` returns per item and what the trainer reads
    (`reward` is the total, `components` its parts, `predicted` the parsed labels)."""

    model_config = ConfigDict(frozen=True)

    reward: float
    valid: bool
    predicted: list[str]
    components: dict[str, float]


@dataclass(frozen=True)
class Scoring:
    """How `score_completion` scored one completion, in process: the parse and the reward."""

    parsed: ParsedCompletion
    reward: Reward


def score_completion(
    text: str,
    gold: frozenset[str],
    kind: RewardKind,
    cfg: RewardConfig,
    window: PredictionWindow | None = None,
    num_tokens: int | None = None,
) -> Scoring:
    """Reward one completion. For the nuanced reward, `window` is read and then updated with this
    prediction, so call it in the run's order. Labels are always parsed against CheXpert's 14 (the
    paper filters predictions to them before scoring)."""
    parsed = parse_completion(text, SCHEMAS[TRAINING_SCHEMA])
    if kind == "hard":
        length = completion_length(text, num_tokens, cfg.hard.length_unit)
        return Scoring(parsed, hard_reward(parsed, gold, length, cfg.hard))
    if window is None:
        raise ValueError("the nuanced reward needs the run's prediction window")
    reward = nuanced_reward(parsed, gold, window, cfg.nuanced)
    if parsed.valid:
        window.push(parsed.labels)
    return Scoring(parsed, reward)
