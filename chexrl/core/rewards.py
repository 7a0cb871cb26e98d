"""The paper's two reward functions, as pure functions of (parsed completion, gold labels).

Both return a `Reward`: the total and its named components, signed so that ``total == sum(components)``.
The nuanced reward also needs the recent predictions of the same training run (its anti-collapse window);
`PredictionWindow` holds them, and the caller decides where that state lives (the evaluator persists it
per run, the trainer checkpoints it).

Where the paper gives a number it is the default; where it gives none, the default is chexrl's choice and
says so in the config field's description (chexrl/core/config.py).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from chexrl.core.config import HardRewardConfig, NuancedRewardConfig
from chexrl.core.parsing import ParsedCompletion


@dataclass(frozen=True)
class Reward:
    total: float
    components: dict[str, float]


def jaccard(gold: frozenset[str], predicted: frozenset[str]) -> float:
    """|Y ∩ Ŷ| / |Y ∪ Ŷ|, with J(∅, ∅) = 1 (nothing to find, nothing claimed).

    >>> jaccard(frozenset({"Edema", "Cardiomegaly"}), frozenset({"Edema"}))
    0.5
    """
    union = gold | predicted
    return 1.0 if not union else len(gold & predicted) / len(union)


def completion_length(text: str, num_tokens: int | None, unit: str) -> int:
    """Length of a completion in the configured unit ('chars', 'words' or 'tokens')."""
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(text.split())
    if num_tokens is None:
        raise ValueError("length_unit is 'tokens' but the item carries no num_tokens")
    return num_tokens


def hard_reward(
    parsed: ParsedCompletion,
    gold: frozenset[str],
    length: int,
    cfg: HardRewardConfig,
) -> Reward:
    """Equation 3 of the paper: Jaccard(Y, Ŷ), minus lambda_len when the completion is short; 0 if invalid.

    >>> from chexrl.core.parsing import parse_completion
    >>> from chexrl.core.schemas import SCHEMAS
    >>> p = parse_completion("<think>x</think><solution>Edema</solution>", SCHEMAS["chexpert14"])
    >>> hard_reward(p, frozenset({"Edema"}), length=300, cfg=HardRewardConfig()).total
    1.0
    """
    if not parsed.valid:
        return Reward(0.0, {"jaccard": 0.0, "length_penalty": 0.0})
    score = jaccard(gold, parsed.label_set)
    penalty = -cfg.lambda_len if length < cfg.min_length else 0.0
    return Reward(score + penalty, {"jaccard": score, "length_penalty": penalty})


@dataclass
class PredictionWindow:
    """The last `size` predicted label sets of one training run, with per-label counts kept in step."""

    size: int = 100
    items: deque[frozenset[str]] = field(default_factory=deque)
    counts: Counter[str] = field(default_factory=Counter)

    def push(self, labels: Iterable[str]) -> None:
        labels = frozenset(labels)
        self.items.append(labels)
        self.counts.update(labels)
        while len(self.items) > self.size:
            self.counts.subtract(self.items.popleft())

    def share(self, label: str) -> float:
        """Fraction of the window's predictions that contain `label` (0 when empty)."""
        return self.counts[label] / len(self.items) if self.items else 0.0

    def to_list(self) -> list[list[str]]:
        return [sorted(s) for s in self.items]

    @classmethod
    def from_list(cls, size: int, items: Sequence[Sequence[str]]) -> PredictionWindow:
        window = cls(size=size)
        for labels in items[-size:]:
            window.push(labels)
        return window


def nuanced_reward(
    parsed: ParsedCompletion,
    gold: frozenset[str],
    window: PredictionWindow,
    cfg: NuancedRewardConfig,
) -> Reward:
    """Equation 4 of the paper: r_match + r_partial - r_FP - r_collapse - r_format.

    Reads `window` (the run's earlier predictions) but does not change it: the caller pushes
    ``parsed.labels`` afterwards, so a batch is scored in request order.
    """
    c: dict[str, float] = dict.fromkeys(
        (
            "match",
            "partial_recall",
            "partial_precision",
            "false_positive",
            "repetition",
            "mode_collapse",
            "invalid_label",
            "duplicate_label",
            "outside_text",
            "invalid_format",
        ),
        0.0,
    )
    if not parsed.valid:
        c["invalid_format"] = -cfg.invalid_format_penalty
        return Reward(sum(c.values()), c)

    predicted = parsed.label_set
    correct = len(gold & predicted)
    if predicted == gold:
        c["match"] = cfg.exact_match_reward
    if gold:
        c["partial_recall"] = cfg.recall_weight * correct / len(gold)
    if predicted:
        c["partial_precision"] = cfg.precision_weight * correct / len(predicted)

    peak = max(cfg.label_frequencies.values(), default=0.0) or 1.0
    c["false_positive"] = 0.0 - sum(
        cfg.fp_base_penalty + cfg.fp_frequency_penalty * cfg.label_frequencies.get(label, 0.0) / peak
        for label in predicted - gold
    )

    if len(window.items) >= cfg.collapse_min_window:
        dominant = [label for label in predicted if window.share(label) > cfg.collapse_dominance]
        c["repetition"] = -cfg.repetition_penalty * len(dominant)
        c["mode_collapse"] = -cfg.mode_collapse_penalty if dominant else 0.0

    c["invalid_label"] = -cfg.invalid_label_penalty * len(parsed.unknown) if parsed.unknown else 0.0
    c["duplicate_label"] = -cfg.duplicate_label_penalty * len(parsed.duplicates) if parsed.duplicates else 0.0
    c["outside_text"] = -cfg.outside_text_penalty if parsed.outside_text else 0.0
    return Reward(sum(c.values()), c)
