"""Multi-label classification metrics over a schema: micro/macro P, R, F1, per-label table, fail rate.

Conventions follow scikit-learn's ``precision_recall_fscore_support`` with ``zero_division=0``: a ratio
whose denominator is 0 is 0, and macro averages are the unweighted mean over *all* schema labels,
including labels with no support.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chexrl.core.parsing import parse_completion
from chexrl.core.schemas import LabelSchema


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass(frozen=True)
class LabelScore:
    precision: float
    recall: float
    f1: float
    support: int  # gold positives
    predicted: int  # predicted positives

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
            "predicted": self.predicted,
        }


@dataclass(frozen=True)
class Metrics:
    n: int
    fail_rate: float
    micro: PRF
    macro: PRF
    per_label: dict[str, LabelScore]

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "fail_rate": self.fail_rate,
            "micro": self.micro.as_dict(),
            "macro": self.macro.as_dict(),
            "per_label": {k: v.as_dict() for k, v in self.per_label.items()},
        }


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _prf(tp: int, fp: int, fn: int) -> PRF:
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return PRF(p, r, _ratio(2 * p * r, p + r))


def label_set_metrics(
    predictions: Sequence[Iterable[str]],
    golds: Sequence[Iterable[str]],
    schema: LabelSchema,
    invalid: Sequence[bool] | None = None,
) -> Metrics:
    """Metrics from predicted and gold label sets. Labels outside `schema` are ignored on both sides."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold label sets")
    tp = dict.fromkeys(schema.labels, 0)
    fp = dict.fromkeys(schema.labels, 0)
    fn = dict.fromkeys(schema.labels, 0)
    for pred, gold in zip(predictions, golds, strict=True):
        pred_set = {label for label in pred if label in schema}
        gold_set = {label for label in gold if label in schema}
        for label in pred_set & gold_set:
            tp[label] += 1
        for label in pred_set - gold_set:
            fp[label] += 1
        for label in gold_set - pred_set:
            fn[label] += 1
    per_label = {}
    for label in schema.labels:
        s = _prf(tp[label], fp[label], fn[label])
        per_label[label] = LabelScore(
            s.precision, s.recall, s.f1, tp[label] + fn[label], tp[label] + fp[label]
        )
    micro = _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    k = len(schema.labels)
    macro = PRF(
        sum(s.precision for s in per_label.values()) / k,
        sum(s.recall for s in per_label.values()) / k,
        sum(s.f1 for s in per_label.values()) / k,
    )
    n = len(golds)
    fails = sum(bool(x) for x in invalid) if invalid is not None else 0
    return Metrics(n=n, fail_rate=_ratio(fails, n), micro=micro, macro=macro, per_label=per_label)


def completion_metrics(
    completions: Sequence[str], golds: Sequence[Iterable[str]], schema: LabelSchema
) -> Metrics:
    """Parse each completion with `schema` and score it; invalid completions predict nothing."""
    parsed = [parse_completion(text, schema) for text in completions]
    return label_set_metrics([p.labels for p in parsed], golds, schema, invalid=[not p.valid for p in parsed])
