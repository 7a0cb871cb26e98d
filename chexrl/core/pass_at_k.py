"""Acc@1 against Pass@K for multi-label answers: the estimators and their bootstrap intervals.

The second study behind chexrl ("When Does RL Help Medical VLMs?", arXiv 2603.01301) separates what a
model answers at its first try (Acc@1, greedy decoding) from what it can reach in K samples (Pass@K): RL
mostly sharpens answers the model already reaches sometimes. Per image this module scores

- the greedy answer: exact label-set match (0/1) and Jaccard with the gold set (Acc@1);
- n >= K sampled answers: the unbiased pass@k estimator of Chen et al. 2021 (any exact match among K of
  them) and best-of-K Jaccard (the expected maximum Jaccard over a uniformly random K-subset of the n);

and averages over images with a percentile bootstrap interval (resampling images, fixed seed). A completion
is scored as the evaluator scores it: parsed with chexrl.core.parsing against the test set's schema, an
invalid completion predicts nothing and scores 0 (as in the hard reward), gold labels outside the schema
are ignored (as in chexrl.core.metrics). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from chexrl.core.parsing import parse_completion
from chexrl.core.rewards import jaccard
from chexrl.core.schemas import LabelSchema

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
MEASURES = ("acc_at_1", "acc_at_1_jaccard", "pass_at_1", "pass_at_k", "pass_at_k_jaccard", "gap")


@dataclass(frozen=True)
class Outcome:
    """How one completion did against its image's gold labels."""

    exact: bool  # valid, and its label set is the gold set
    jaccard: float  # Jaccard(gold, predicted); 0 when invalid


def score_answer(text: str, gold: Iterable[str], schema: LabelSchema) -> Outcome:
    """Parse `text` against `schema` and compare it with `gold` (labels outside the schema ignored).

    >>> from chexrl.core.schemas import SCHEMAS
    >>> score_answer("<think>x</think><solution>Edema</solution>", ["Edema", "Cardiomegaly"],
    ...              SCHEMAS["chexpert14"])
    Outcome(exact=False, jaccard=0.5)
    """
    parsed = parse_completion(text, schema)
    if not parsed.valid:
        return Outcome(False, 0.0)
    gold_set = frozenset(label for label in gold if label in schema)
    return Outcome(parsed.label_set == gold_set, jaccard(gold_set, parsed.label_set))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of P(at least one of k samples is correct) from n >= k samples with c correct:
    1 - C(n-c, k) / C(n, k) (Chen et al. 2021), as a product so that large n does not overflow.

    >>> pass_at_k(4, 1, 2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(5, 3, 3)  # fewer than 3 wrong samples: every 3-subset holds a correct one
    1.0
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n correct samples, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def best_of_k(scores: Sequence[float], k: int) -> float:
    """The expected maximum of `k` scores drawn without replacement from `scores` (all K-subsets equally
    likely), the unbiased best-of-k estimate from n >= k samples; for 0/1 scores it is `pass_at_k`.

    With the scores sorted ascending, the i-th smallest (1-based) is the maximum of C(i-1, k-1) of the
    C(n, k) subsets.

    >>> round(best_of_k([0.0, 0.5, 1.0], 2), 6)  # subsets {0, .5}, {0, 1}, {.5, 1}: maxima .5, 1, 1
    0.833333
    """
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"best-of-k needs 1 <= k <= n, got k={k} with {n} scores")
    total = math.comb(n, k)
    ordered = sorted(scores)
    # exact integer weights, one division each: no overflow or cancellation at any n
    return sum(s * (math.comb(i - 1, k - 1) / total) for i, s in enumerate(ordered, start=1) if i >= k)


def bootstrap_interval(
    values: Sequence[float],
    *,
    level: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per image): `n_resamples` means of
    resamples drawn with replacement by ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``,
    and their (1 - level)/2 and (1 + level)/2 quantiles (numpy's default linear interpolation)."""
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must lie in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    low, high = np.quantile(x[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class ImageScores:
    """One image's numbers; the dataset's are their means."""

    acc_at_1: float  # greedy answer matches exactly (0 or 1)
    acc_at_1_jaccard: float  # greedy answer's Jaccard
    pass_at_1: float  # share of the n samples that match exactly (pass@1 at the sampling settings)
    pass_at_k: float  # unbiased pass@k, exact match
    pass_at_k_jaccard: float  # best-of-K Jaccard

    @property
    def gap(self) -> float:
        """Pass@K - Acc@1: what K samples reach that the first try misses (the paper's support gap)."""
        return self.pass_at_k - self.acc_at_1


def image_scores(greedy: Outcome, samples: Sequence[Outcome], k: int) -> ImageScores:
    """Score one image from its greedy answer and its n >= k sampled answers."""
    n = len(samples)
    if n < k:
        raise ValueError(f"Pass@{k} needs at least {k} sampled answers per image, got {n}")
    correct = sum(s.exact for s in samples)
    return ImageScores(
        acc_at_1=float(greedy.exact),
        acc_at_1_jaccard=greedy.jaccard,
        pass_at_1=correct / n,
        pass_at_k=pass_at_k(n, correct, k),
        pass_at_k_jaccard=best_of_k([s.jaccard for s in samples], k),
    )


def summarize(
    scores: Sequence[ImageScores],
    k: int,
    n_samples: int,
    *,
    level: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Every measure's mean over images with its bootstrap interval (the same seed for each, so the gap's
    interval resamples the same images as the two it subtracts):
    {"k", "n_samples", "n_images", "level", "acc_at_1": {"mean", "low", "high"}, ...} (MEASURES)."""
    if not scores:
        raise ValueError("Pass@K needs at least one image")
    out: dict = {"k": k, "n_samples": n_samples, "n_images": len(scores), "level": level}
    for name in MEASURES:
        values = [getattr(s, name) for s in scores]
        low, high = bootstrap_interval(values, level=level, n_resamples=n_resamples, seed=seed)
        out[name] = {"mean": float(np.mean(values)), "low": low, "high": high}
    return out


def pass_at_k_summary(
    greedy: Sequence[str],
    sampled: Sequence[Sequence[str]],
    golds: Sequence[Iterable[str]],
    schema: LabelSchema,
    k: int,
    **bootstrap,
) -> dict:
    """`summarize` from completion texts: each image's greedy completion, its n >= k sampled completions
    and its gold labels (`bootstrap`: level, n_resamples, seed)."""
    if not len(greedy) == len(sampled) == len(golds):
        raise ValueError(
            f"{len(greedy)} greedy answers, {len(sampled)} sets of samples and {len(golds)} gold label sets"
        )
    counts = {len(s) for s in sampled}
    if len(counts) > 1:
        raise ValueError(f"every image needs the same number of samples, got {sorted(counts)}")
    scores = [
        image_scores(score_answer(g, gold, schema), [score_answer(t, gold, schema) for t in texts], k)
        for g, texts, gold in zip(greedy, sampled, golds, strict=True)
    ]
    return summarize(scores, k, counts.pop() if counts else 0, **bootstrap)
