"""Multi-label classification metrics over a schema: micro/macro P, R, F1, per-label table, fail rate.

Conventions follow scikit-learn's ``precision_recall_fscore_support`` with ``zero_division=0``: a ratio
whose denominator is 0 is 0, and macro averages are the unweighted mean over *all* schema labels,
including labels with no support.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

from chexrl.core.parsing import parse_completion
from chexrl.core.schemas import LabelSchema


class _Frozen(BaseModel):
    # Extra keys are ignored when reading a stored dict (an in-training record's metrics also carry "schema").
    model_config = ConfigDict(frozen=True)


class PRF(_Frozen):
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return self.model_dump()


class LabelScore(PRF):
    support: int  # gold positives
    predicted: int  # predicted positives

    def as_dict(self) -> dict[str, float | int]:
        return self.model_dump()


class DatasetMetrics(_Frozen):
    """The metrics of one model on one data set: what the evaluator's `/evaluate` returns (its response
    model) and what evaluation results store (`as_dict()`: the same keys and values)."""

    n: int
    fail_rate: float
    micro: PRF
    macro: PRF
    per_label: dict[str, LabelScore]

    def as_dict(self) -> dict:
        return self.model_dump()


class EvaluationRecord(_Frozen):
    """One evaluation: a model (with a prompt) on a data set, and its metrics. An entry of a results
    document (`{"model", "prompt", "dataset", "metrics"}`) read with attributes."""

    model: str
    prompt: str
    dataset: str
    metrics: DatasetMetrics


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _prf(tp: int, fp: int, fn: int) -> PRF:
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return PRF(precision=p, recall=r, f1=_ratio(2 * p * r, p + r))


def label_set_metrics(
    predictions: Sequence[Iterable[str]],
    golds: Sequence[Iterable[str]],
    schema: LabelSchema,
    invalid: Sequence[bool] | None = None,
) -> DatasetMetrics:
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
            precision=s.precision,
            recall=s.recall,
            f1=s.f1,
            support=tp[label] + fn[label],
            predicted=tp[label] + fp[label],
        )
    micro = _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    k = len(schema.labels)
    macro = PRF(
        precision=sum(s.precision for s in per_label.values()) / k,
        recall=sum(s.recall for s in per_label.values()) / k,
        f1=sum(s.f1 for s in per_label.values()) / k,
    )
    n = len(golds)
    fails = sum(bool(x) for x in invalid) if invalid is not None else 0
    return DatasetMetrics(n=n, fail_rate=_ratio(fails, n), micro=micro, macro=macro, per_label=per_label)


def completion_metrics(
    completions: Sequence[str], golds: Sequence[Iterable[str]], schema: LabelSchema
) -> DatasetMetrics:
    """Parse each completion with `schema` and score it; invalid completions predict nothing."""
    parsed = [parse_completion(text, schema) for text in completions]
    return label_set_metrics([p.labels for p in parsed], golds, schema, invalid=[not p.valid for p in parsed])
