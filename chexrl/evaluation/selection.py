"""Which in-training checkpoint to keep, when to warn, and how to smooth a curve. Pure functions, no I/O.

An *evaluation record* is one line of `RUN_DIR/evals.jsonl`: {"step", "id", "ood", "id_name", "ood_name",
"warnings"}, where "id" and "ood" are /evaluate's metrics (`DatasetMetrics`, or its `as_dict()` as stored).
The functions here read only the macro-F1 of each side, and also accept a plain number in its place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from chexrl.core.metrics import DatasetMetrics
from chexrl.core.paired import (
    LEVEL,
    Interval,
    interval,
    outcomes_of,
    paired_differences,
    resample_counts,
    set_measures,
)
from chexrl.core.pass_at_k import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

# The selection policies, in the order reports list them, with what each one means.
POLICIES: dict[str, str] = {
    "best_id": "best in-distribution macro-F1 (the paper's 'Best F1-Score' row)",
    "final": "the last evaluated step (the paper's 'Maximum' row)",
    "best_ood": "best out-of-distribution macro-F1 (with several OOD sites, their mean)",
    "best_worst_case": "best min(in-distribution, out-of-distribution) macro-F1 (several sites: their mean)",
}


def macro_f1(side: DatasetMetrics | Mapping | float) -> float:
    """The macro-F1 of one side of a record: its metrics (`DatasetMetrics`, or a stored dict of that shape,
    of which only "macro" is read) or already a number."""
    if isinstance(side, DatasetMetrics):
        return side.macro.f1
    if isinstance(side, Mapping):
        return float(side["macro"]["f1"])
    return float(side)


def _scores(record: Mapping) -> tuple[float, float]:
    """(ID, OOD) macro-F1; a record of several OOD sites ("ood_sites") scores OOD as their mean."""
    sites = record.get("ood_sites")
    if sites:
        return macro_f1(record["id"]), sum(macro_f1(m) for m in sites.values()) / len(sites)
    return macro_f1(record["id"]), macro_f1(record["ood"])


# How a policy picks among evaluations whose scores differ by less than resampling noise.
TIE_BREAK = "the highest macro-F1 on the full set; equal values go to the earliest step"
# What each policy scores an evaluation by, from its (ID, OOD) macro-F1 (point or per resample).
POLICY_SCORES: dict[str, Callable] = {
    "best_id": lambda id_f1, ood_f1: id_f1,
    "best_ood": lambda id_f1, ood_f1: ood_f1,
    "best_worst_case": np.minimum,
}


def select_checkpoints(evals: Iterable[Mapping]) -> dict[str, dict]:
    """The step each policy of `POLICIES` picks: {policy: {"step", "id_macro_f1", "ood_macro_f1"}}.

    Ties go to the earliest step (the cheaper checkpoint, and the one closer to the starting policy);
    "final" is the highest step. The caller adds where the step's adapter lives ("checkpoint").
    When every record carries per-image answers ("per_image": {"id", "ood"}), each best-of policy also
    lists the steps it is tied with ("tied_with": those whose paired interval of pick - step holds 0, i.e.
    within resampling noise) and the rule that broke the tie ("tie_break"). No records give {}.

    >>> evals = [{"step": 0, "id": 0.30, "ood": 0.30}, {"step": 8, "id": 0.40, "ood": 0.20},
    ...          {"step": 16, "id": 0.40, "ood": 0.25}, {"step": 24, "id": 0.35, "ood": 0.33}]
    >>> {name: pick["step"] for name, pick in select_checkpoints(evals).items()}
    {'best_id': 8, 'final': 24, 'best_ood': 24, 'best_worst_case': 24}
    """
    ordered = sorted(evals, key=lambda e: int(e["step"]))
    if not ordered:
        return {}

    def best(score: Callable) -> Mapping:
        chosen = ordered[0]
        for record in ordered[1:]:
            if score(*_scores(record)) > score(*_scores(chosen)):  # strictly better: a tie keeps the earlier
                chosen = record
        return chosen

    picks = {name: best(score) for name, score in POLICY_SCORES.items()} | {"final": ordered[-1]}
    out = {}
    for name in POLICIES:
        id_f1, ood_f1 = _scores(picks[name])
        out[name] = {"step": int(picks[name]["step"]), "id_macro_f1": id_f1, "ood_macro_f1": ood_f1}
    resampled = resampled_scores(ordered)
    if resampled is not None:
        for name, score in POLICY_SCORES.items():
            tied = tied_steps(resampled, score, out[name]["step"])
            out[name]["tied_with"] = tied
            if tied:
                out[name]["tie_break"] = TIE_BREAK
    return out


def resampled_scores(evals: Sequence[Mapping], **bootstrap) -> dict[int, tuple] | None:
    """{step: ((id point, id per resample), (ood point, ood per resample))} of macro-F1, every step scored
    on the same resamples (ID images with the seed, OOD with seed + 1, chexrl.core.paired), or None when a
    record has no per-image answers."""
    if not evals or not all(e.get("per_image") for e in evals) or any(e.get("ood_sites") for e in evals):
        return None  # several OOD sites: their mean has no per-image resample here
    golds = {json.dumps([e["per_image"][side]["gold"] for side in ("id", "ood")]) for e in evals}
    if len(golds) != 1:  # not the same images at every step: nothing to pair
        return None
    b = {"n_resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED} | bootstrap
    first = evals[0]["per_image"]
    weights = {
        side: resample_counts(len(first[side]["gold"]), n_resamples=b["n_resamples"], seed=b["seed"] + k)
        for k, side in enumerate(("id", "ood"))
    }
    out = {}
    for e in evals:
        sides = []
        for side in ("id", "ood"):
            outcomes = outcomes_of(e["per_image"][side])
            sides.append(
                (set_measures(outcomes)["macro_f1"][0], set_measures(outcomes, weights[side])["macro_f1"])
            )
        out[int(e["step"])] = tuple(sides)
    return out


def tied_steps(resampled: Mapping[int, tuple], score: Callable, pick: int, level: float = LEVEL) -> list[int]:
    """The steps whose score is within resampling noise of the pick's: the paired interval of
    score(pick) - score(step) holds 0."""
    (pid, pid_r), (pood, pood_r) = resampled[pick]
    tied = []
    for step, ((sid, sid_r), (sood, sood_r)) in resampled.items():
        if step == pick:
            continue
        diff = score(pid_r, pood_r) - score(sid_r, sood_r)
        iv = interval(float(score(pid, pood) - score(sid, sood)), diff, level=level)
        if iv.low <= 0 <= iv.high:
            tied.append(step)
    return tied


def intervals_vs_start(start: Mapping, record: Mapping, **bootstrap) -> dict[str, dict] | None:
    """The paired intervals of record - start macro-F1, {"id", "ood"} -> {"delta", "low", "high"}, from
    the two evaluations' per-image answers (same images); None when either lacks them."""
    if not (start.get("per_image") and record.get("per_image")):
        return None
    out = {}
    for side in ("id", "ood"):
        a, b = outcomes_of(start["per_image"][side]), outcomes_of(record["per_image"][side])
        try:
            out[side] = paired_differences(a, b, **bootstrap)["macro_f1"].as_dict()
        except ValueError:  # other images than the start's (a resumed run with another eval set): no pairing
            return None
    return out


def ood_drop_streak(evals: Sequence[Mapping], margin: float) -> int:
    """How many evaluations in a row, ending with the latest, have an OOD macro-F1 below the start's
    beyond noise and margin: their stored interval against the start ("vs_start", intervals_vs_start)
    lies wholly below -margin. The start itself and a record without an interval end the streak."""
    streak = 0
    for e in sorted(evals, key=lambda e: int(e["step"]), reverse=True):
        iv = (e.get("vs_start") or {}).get("ood")
        if int(e["step"]) == 0 or iv is None or not iv["high"] < -margin:
            break
        streak += 1
    return streak


def stop_reason(evals: Sequence[Mapping], margin: float, evaluations: int) -> str | None:
    """Why GRPO should stop now (grpo.stop_when_ood_drops), or None: the last `evaluations` evaluations
    all dropped out of distribution (ood_drop_streak)."""
    if evaluations < 1:
        raise ValueError(f"evaluations must be at least 1, got {evaluations}")
    streak = ood_drop_streak(evals, margin)
    if streak < evaluations:
        return None
    last = max(evals, key=lambda e: int(e["step"]))
    iv = Interval(**last["vs_start"]["ood"])
    return (
        f"out-of-distribution macro-F1 fell below the start's for {streak} evaluations in a row (step "
        f"{last['step']}: {iv.text()} against the start, 95% paired interval below -{margin:.3f}): "
        "grpo.stop_when_ood_drops stopped the run and kept its best-OOD checkpoint as the final adapter"
    )


def _label(record: Mapping) -> str:
    if "name" in record:
        return str(record["name"])
    return f"step {record['step']}" if "step" in record else "?"


def tradeoff_warning(prev: Mapping, cur: Mapping, margin: float, *, relative: bool = False) -> str | None:
    """The paper's benchmark-versus-transfer trade-off between two evaluation records, or None.

    Warns when in-distribution macro-F1 rose (any amount) from `prev` to `cur` while out-of-distribution
    macro-F1 fell by more than `margin`: an absolute drop in macro-F1 points by default
    (`prev_ood - cur_ood > margin`), or a relative one with `relative=True`
    (`(prev_ood - cur_ood) / prev_ood > margin`; nothing can fall from 0). Absolute is the default because
    the small evaluation sets used during training make relative changes of a low macro-F1 jumpy.
    A record names itself by "name", else by "step"; "id_name"/"ood_name" name its test sets.

    >>> tradeoff_warning({"step": 0, "id": 0.282, "ood": 0.299}, {"step": 24, "id": 0.346, "ood": 0.243},
    ...                  0.05) is not None
    True
    >>> tradeoff_warning({"step": 0, "id": 0.282, "ood": 0.299}, {"step": 24, "id": 0.346, "ood": 0.27},
    ...                  0.05) is None
    True
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    (id_prev, ood_prev), (id_cur, ood_cur) = _scores(prev), _scores(cur)
    drop = ood_prev - ood_cur
    if relative:
        drop = drop / ood_prev if ood_prev > 0 else 0.0
    if not (id_cur > id_prev and drop > margin):
        return None
    id_name = cur.get("id_name") or prev.get("id_name") or "in-distribution set"
    ood_name = cur.get("ood_name") or prev.get("ood_name") or "out-of-distribution set"
    threshold = f"{margin:.0%} (relative)" if relative else f"{margin:.3f} (absolute)"
    return (
        f"{_label(prev)} -> {_label(cur)}: in-distribution macro-F1 rose {id_prev:.3f} -> {id_cur:.3f} "
        f"({_pct(id_cur, id_prev)}, {id_name}) while out-of-distribution macro-F1 fell "
        f"{ood_prev:.3f} -> {ood_cur:.3f} ({_pct(ood_cur, ood_prev)}, {ood_name}), more than the margin "
        f"{threshold}: the paper's benchmark-versus-transfer trade-off"
    )


@dataclass(frozen=True)
class Finding:
    """A trade-off seen between two evaluations: a warning when its evidence excludes noise, else a note."""

    warning: bool
    text: str


def _side_text(name: str, before: float, after: float, iv: Mapping | None, n: int | None) -> str:
    if iv is None:
        return f"{name} {after - before:+.3f} ({before:.3f} -> {after:.3f})"
    images = f", n={n}" if n else ""
    return f"{name} {Interval(**iv).text()} ({before:.3f} -> {after:.3f}{images})"


def tradeoff_finding(
    prev: Mapping,
    cur: Mapping,
    margin: float,
    *,
    relative: bool = False,
    intervals: Mapping[str, Mapping | None] | None = None,
) -> Finding | None:
    """The trade-off of `tradeoff_warning` (ID macro-F1 up, OOD macro-F1 down by more than `margin`), with
    its evidence: `intervals` {"id", "ood"} are the paired bootstrap intervals of cur - prev macro-F1
    ({"delta", "low", "high"}, chexrl.core.paired). A warning only when the OOD interval lies below 0;
    otherwise (or with no interval) a note that the drop is within resampling noise at n images.
    Records may carry "n_id" / "n_ood" (images per set) for the text.

    >>> ivs = {"id": {"delta": 0.022, "low": -0.010, "high": 0.051},
    ...        "ood": {"delta": -0.056, "low": -0.081, "high": 0.012}}
    >>> tradeoff_finding({"step": 0, "id": 0.282, "ood": 0.299}, {"step": 24, "id": 0.304, "ood": 0.243},
    ...                  0.05, intervals=ivs).warning
    False
    """
    if tradeoff_warning(prev, cur, margin, relative=relative) is None:
        return None
    (id_prev, ood_prev), (id_cur, ood_cur) = _scores(prev), _scores(cur)
    ivs = intervals or {}
    ood_iv = ivs.get("ood")
    id_name = cur.get("id_name") or prev.get("id_name") or "in-distribution set"
    ood_name = cur.get("ood_name") or prev.get("ood_name") or "out-of-distribution set"
    evidence = (
        f"{_label(prev)} -> {_label(cur)}: "
        + _side_text(f"ID macro-F1 ({id_name})", id_prev, id_cur, ivs.get("id"), cur.get("n_id"))
        + ", "
        + _side_text(f"OOD macro-F1 ({ood_name})", ood_prev, ood_cur, ood_iv, cur.get("n_ood"))
    )
    threshold = f"{margin:.0%} (relative)" if relative else f"{margin:.3f} (absolute)"
    if ood_iv is not None and ood_iv["high"] < 0:
        return Finding(
            True,
            f"{evidence}. OOD fell by more than the margin {threshold} and its 95% paired "
            "interval excludes 0: the paper's benchmark-versus-transfer trade-off.",
        )
    why = (
        f"its 95% paired interval includes 0: the drop is within resampling noise at n={cur.get('n_ood') or '?'} images"
        if ood_iv is not None
        else "no per-image answers to tell it from resampling noise"
    )
    return Finding(False, f"{evidence}. OOD fell by more than the margin {threshold}, but {why}.")


def _pct(new: float, old: float) -> str:
    return f"{(new - old) / old:+.1%}" if old else f"{new - old:+.3f}"


def ema(values: Iterable[float | None], smoothing: float = 0.95, *, debias: bool = True) -> list[float]:
    """Exponential moving average, as TensorBoard's scalar smoothing (the paper's figures: 0.95).

    `debias=True` (default) is TensorBoard's current smoother: `last = w * last + (1 - w) * x` started from
    0 and divided by `1 - w**n` (n = finite points so far), so the first points are not pulled toward 0.
    `debias=False` is the plain EMA seeded with the first value. Both give a constant series back
    unchanged. A missing or non-finite value is passed through as NaN and does not move the average.

    >>> ema([1.0, 0.0], 0.5)
    [1.0, 0.3333333333333333]
    >>> ema([1.0, 0.0], 0.5, debias=False)
    [1.0, 0.5]
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out: list[float] = []
    last, n = 0.0, 0
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(math.nan)
            continue
        if not debias and n == 0:
            last = float(value)
        else:
            last = smoothing * last + (1 - smoothing) * float(value)
        n += 1
        out.append(last / (1 - smoothing**n) if debias else last)
    return out
