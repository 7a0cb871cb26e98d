"""Paired bootstrap intervals for differences between two models evaluated on the same images. Pure: no I/O.

Two models scored on the same test set differ partly by skill and partly by which images the set happens
to hold; at 100 images one or two label hits move macro-F1 by several hundredths. A paired bootstrap
measures the second part: it draws `n_resamples` resamples of the images with replacement, scores *both*
models on each resample (the same images for both, so the shared difficulty of an image cancels), and
reports the difference on the full set with the (1 - level)/2 and (1 + level)/2 quantiles of the
resampled differences (percentile interval, numpy's default linear interpolation).

The resamples are those of chexrl.core.pass_at_k.bootstrap_interval: image indices drawn by
``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``, so a fixed seed gives the same
interval on every run and machine. A set's metrics on a resample are computed from label counts weighted by
how often each image was drawn, with the conventions of chexrl.core.metrics (a ratio with a zero
denominator is 0; macro averages run over every schema label).

The transfer gap, (OOD macro-F1 - ID macro-F1) / ID macro-F1, involves two test sets; its change between
two models resamples both sets, the ID set with `seed` and the OOD set with `seed + 1`, so the two draws
are independent of each other while each stays paired across the two models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from chexrl.core.parsing import parse_completion
from chexrl.core.pass_at_k import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from chexrl.core.schemas import LabelSchema, get_schema

LEVEL = 0.95
# The whole-set measures a comparison reports, besides the per-label F1 changes.
SET_MEASURES = ("macro_f1", "micro_f1", "fail_rate")
# How every interval of a results document is made (stored with it).
BOOTSTRAP = {"level": LEVEL, "n_resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED}


@dataclass(frozen=True)
class Interval:
    """A difference (b - a) on the full set and its bootstrap interval."""

    delta: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or below 0: the difference is larger than resampling noise."""
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        """E.g. "+0.022 [-0.010, +0.051]".

        >>> Interval(0.0224, -0.0101, 0.0512).text()
        '+0.022 [-0.010, +0.051]'
        """
        return f"{self.delta:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def as_dict(self) -> dict[str, float]:
        return {"delta": self.delta, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ImageOutcomes:
    """One model's answers on one test set, per image and schema label: true positive, false positive,
    false negative (0/1 arrays of shape (images, labels)) and whether the answer was invalid."""

    labels: tuple[str, ...]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    invalid: np.ndarray

    @property
    def n(self) -> int:
        return int(self.invalid.size)

    @classmethod
    def from_label_sets(
        cls,
        predictions: Sequence[Iterable[str]],
        golds: Sequence[Iterable[str]],
        schema: LabelSchema,
        invalid: Sequence[bool] | None = None,
    ) -> ImageOutcomes:
        """From predicted and gold label sets, one each per image (labels outside `schema` ignored on both
        sides, as chexrl.core.metrics.label_set_metrics does)."""
        if len(predictions) != len(golds):
            raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold label sets")
        labels = schema.labels
        pred = np.array([[label in set(p) for label in labels] for p in predictions], dtype=bool)
        gold = np.array([[label in set(g) for label in labels] for g in golds], dtype=bool)
        pred, gold = pred.reshape(len(golds), len(labels)), gold.reshape(len(golds), len(labels))
        bad = np.zeros(len(golds), dtype=bool) if invalid is None else np.asarray(invalid, dtype=bool)
        if bad.shape != (len(golds),):
            raise ValueError(f"{bad.size} invalid flags for {len(golds)} images")
        as_int = (pred & gold, pred & ~gold, ~pred & gold)
        return cls(labels, *(a.astype(np.int64) for a in as_int), bad)

    @classmethod
    def from_completions(
        cls, completions: Sequence[str], golds: Sequence[Iterable[str]], schema: LabelSchema
    ) -> ImageOutcomes:
        """Parse each completion with `schema` (chexrl.core.metrics.completion_metrics' way: an invalid
        completion predicts nothing)."""
        parsed = [parse_completion(text, schema) for text in completions]
        return cls.from_label_sets([p.labels for p in parsed], golds, schema, [not p.valid for p in parsed])


def per_image_answers(
    completions: Sequence[str], golds: Sequence[Iterable[str]], schema: LabelSchema
) -> dict:
    """What a paired comparison needs of one evaluation, JSON-ready: per image the gold labels, the labels
    parsed from the completion (in `schema`) and whether it was invalid, and the schema's name."""
    parsed = [parse_completion(text, schema) for text in completions]
    return {
        "schema": schema.name,
        "gold": [sorted(label for label in g if label in schema) for g in golds],
        "predicted": [sorted(p.labels) for p in parsed],
        "invalid": [not p.valid for p in parsed],
    }


def outcomes_of(per_image: Mapping, schema: LabelSchema | None = None) -> ImageOutcomes:
    """The ImageOutcomes of a stored `per_image_answers` record (its own schema unless `schema` is given)."""
    schema = schema or get_schema(per_image["schema"])
    return ImageOutcomes.from_label_sets(
        per_image["predicted"], per_image["gold"], schema, per_image["invalid"]
    )


def resample_counts(
    n: int, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
    """How often each of `n` images is drawn in each resample: shape (n_resamples, n), rows summing to n."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one image")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n), dtype=np.int64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1)
    return counts


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # 2PR/(P+R) with zero-division 0 is 2TP/(2TP+FP+FN): both are 0 exactly when TP is 0
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros(np.broadcast(tp, den).shape), where=den > 0)


def set_measures(outcomes: ImageOutcomes, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Macro-F1, micro-F1, fail rate (each of shape (resamples,)) and per-label F1 ("per_label", shape
    (resamples, labels)) on each resample of `weights` (resample_counts); `weights` None scores the full
    set once (shape (1,))."""
    w = np.ones((1, outcomes.n), dtype=np.int64) if weights is None else np.asarray(weights)
    if w.ndim != 2 or w.shape[1] != outcomes.n:
        raise ValueError(f"weights of shape {w.shape} do not fit {outcomes.n} images")
    tp, fp, fn = w @ outcomes.tp, w @ outcomes.fp, w @ outcomes.fn
    per_label = _f1(tp, fp, fn)
    micro = _f1(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
    fails = (w @ outcomes.invalid.astype(np.int64)) / w.sum(axis=1)
    return {"macro_f1": per_label.mean(axis=1), "micro_f1": micro, "fail_rate": fails, "per_label": per_label}


def interval(point: float, resampled: np.ndarray, *, level: float = LEVEL) -> Interval:
    """`point` with the percentile interval of `resampled` (resamples where the measure is undefined, NaN,
    are left out; none defined gives NaN bounds)."""
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must lie in (0, 1), got {level}")
    finite = resampled[np.isfinite(resampled)]
    if finite.size == 0:
        return Interval(float(point), float("nan"), float("nan"))
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(point), float(low), float(high))


def _check_paired(a: ImageOutcomes, b: ImageOutcomes) -> None:
    if a.labels != b.labels or a.n != b.n:
        raise ValueError(
            f"a paired comparison needs the same images and labels: {a.n} images x {len(a.labels)} labels "
            f"against {b.n} x {len(b.labels)}"
        )
    if not (np.array_equal(a.tp + a.fn, b.tp + b.fn)):
        raise ValueError("a paired comparison needs the same images: the two gold label tables differ")


def paired_differences(
    a: ImageOutcomes,
    b: ImageOutcomes,
    *,
    level: float = LEVEL,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """b - a on the same images for each of SET_MEASURES and each label's F1, with paired bootstrap
    intervals: {"macro_f1": Interval, "micro_f1": ..., "fail_rate": ..., "per_label": {label: Interval}}."""
    _check_paired(a, b)
    weights = resample_counts(a.n, n_resamples=n_resamples, seed=seed)
    full_a, full_b = set_measures(a), set_measures(b)
    res_a, res_b = set_measures(a, weights), set_measures(b, weights)
    out: dict = {
        key: interval(float(full_b[key][0] - full_a[key][0]), res_b[key] - res_a[key], level=level)
        for key in SET_MEASURES
    }
    diff, point = res_b["per_label"] - res_a["per_label"], full_b["per_label"][0] - full_a["per_label"][0]
    out["per_label"] = {
        label: interval(float(point[j]), diff[:, j], level=level) for j, label in enumerate(a.labels)
    }
    return out


def _gaps(id_f1: np.ndarray, ood_f1: np.ndarray) -> np.ndarray:
    """Relative transfer gap per resample; NaN where the ID macro-F1 is 0 (no gap is defined)."""
    return np.divide(ood_f1 - id_f1, id_f1, out=np.full(id_f1.shape, np.nan), where=id_f1 != 0)


def gap_change(
    a_id: ImageOutcomes,
    a_ood: ImageOutcomes,
    b_id: ImageOutcomes,
    b_ood: ImageOutcomes,
    *,
    level: float = LEVEL,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval | None:
    """Change of the transfer gap from model a to model b (gap_b - gap_a), resampling the ID set with
    `seed` and the OOD set with `seed + 1`; None when either model's gap is undefined on the full sets
    (ID macro-F1 0). Resamples where a gap is undefined are left out of the interval."""
    _check_paired(a_id, b_id)
    _check_paired(a_ood, b_ood)
    w_id = resample_counts(a_id.n, n_resamples=n_resamples, seed=seed)
    w_ood = resample_counts(a_ood.n, n_resamples=n_resamples, seed=seed + 1)

    def gaps(id_o: ImageOutcomes, ood_o: ImageOutcomes, wi, wo) -> np.ndarray:
        return _gaps(set_measures(id_o, wi)["macro_f1"], set_measures(ood_o, wo)["macro_f1"])

    point_a, point_b = gaps(a_id, a_ood, None, None)[0], gaps(b_id, b_ood, None, None)[0]
    if not (np.isfinite(point_a) and np.isfinite(point_b)):
        return None
    resampled = gaps(b_id, b_ood, w_id, w_ood) - gaps(a_id, a_ood, w_id, w_ood)
    return interval(float(point_b - point_a), resampled, level=level)
