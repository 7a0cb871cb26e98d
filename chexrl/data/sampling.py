"""Seeded, patient-disjoint, label-stratified draws of the paper's budgets from a pool of samples.

The paper trains on 2,000 SFT and 1,000 RL samples and "reserved 10% of the data for validation" in SFT:
by default the 2,000 SFT images are 1,800 `sft` + 200 `sft_val`, and `rl` holds 1,000 (an `rl_val` share
is optional). No patient appears in two subsets.

Stratification is a greedy, group-aware variant of iterative stratification (Sechidis et al. 2011): each
subset wants `size * pool_rate(label)` positives of every label; labels are visited rarest first, and each
patient carrying the label (in a seeded random order) goes to the subset that still wants that label most,
until every subset's want is met. The rest of the pool is a bucket of its own with the same wants, so the
draw is a full partition; patients left over go where there is most room. When a patient
has more images than a subset has room for, only some of their images are used (the rest are unused, never
given to another subset), so subset sizes are exact.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from chexrl.core.samples import XraySample
from chexrl.data.loaders import load_dataset

SUBSETS = ("sft", "sft_val", "rl", "rl_val")


def budget_sizes(
    sft: int = 2000, rl: int = 1000, val_share: float = 0.1, rl_val_share: float = 0.0
) -> dict[str, int]:
    """Image counts per subset; validation shares are carved out of their stage's budget.

    >>> budget_sizes()
    {'sft': 1800, 'sft_val': 200, 'rl': 1000, 'rl_val': 0}
    """
    if not (0 <= val_share < 1 and 0 <= rl_val_share < 1) or sft < 0 or rl < 0:
        raise ValueError("budgets must be >= 0 and validation shares in [0, 1)")
    sft_val, rl_val = round(sft * val_share), round(rl * rl_val_share)
    return {"sft": sft - sft_val, "sft_val": sft_val, "rl": rl - rl_val, "rl_val": rl_val}


def _group(samples: list[XraySample], rng, max_per_patient: int | None):
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_patient[s.patient_id].append(i)
    patients = sorted(by_patient)
    order = rng.permutation(len(patients))
    groups = []
    for k in order:
        idx = by_patient[patients[k]]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        groups.append(idx[:max_per_patient] if max_per_patient else idx)
    return groups


def stratified_budget_split(
    samples: list[XraySample],
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    max_per_patient: int | None = None,
) -> dict[str, list[XraySample]]:
    """Split a pool into patient-disjoint subsets of exactly `sizes` images (default `budget_sizes()`)."""
    sizes = {k: v for k, v in (sizes or budget_sizes()).items() if v > 0}
    rng = np.random.default_rng(seed)
    groups = _group(samples, rng, max_per_patient)
    available = sum(len(g) for g in groups)
    if sum(sizes.values()) > available:
        raise ValueError(f"pool has {available} usable images for {sum(sizes.values())} requested {sizes}")
    labels = sorted({lab for s in samples for lab in s.labels})
    col = {lab: j for j, lab in enumerate(labels)}
    counts = np.zeros((len(groups), len(labels)))  # positives per patient group
    for g, idx in enumerate(groups):
        for i in idx:
            for lab in samples[i].labels:
                counts[g, col[lab]] += 1
    rate = counts.sum(0) / max(1, available)
    # The unused remainder is a bucket of its own, so this is a full partition (as iterative stratification
    # assumes) and the subsets are not filled by whichever patients carry the rarest labels.
    sizes = {**sizes, "_unused": available - sum(sizes.values())}
    names = list(sizes)
    unused = len(names) - 1
    want = np.array([[sizes[n] * r for r in rate] for n in names])  # (buckets, labels)
    room = np.array([sizes[n] for n in names], dtype=float)
    room[unused] = np.inf  # the remainder never splits a patient, so no image is wasted
    members: list[list[int]] = [[] for _ in names]  # group ids per bucket
    taken: list[list[int]] = [[] for _ in names]  # sample ids per bucket
    free = np.ones(len(groups), dtype=bool)

    def assign(g: int, s: int) -> None:
        idx = groups[g] if s == unused else groups[g][: int(room[s])]
        members[s].append(g)
        taken[s].extend(idx)
        room[s] -= len(idx)
        for i in idx:
            for lab in samples[i].labels:
                want[s, col[lab]] -= 1
        free[g] = False

    for j in np.argsort(counts.sum(0), kind="stable"):  # rarest label first
        for g in np.flatnonzero(free & (counts[:, j] > 0)):
            open_ = (room > 0) & (want[:, j] > 0)
            if not open_.any():
                break
            s = int(np.argmax(np.where(open_, want[:, j] + 1e-6 * np.minimum(room, 1e9), -np.inf)))
            assign(int(g), s)
    for g in np.flatnonzero(free):  # patients no label asked for
        assign(int(g), unused)
    spare = list(reversed(members[unused]))
    for s in range(unused):  # top up exactly from the remainder, last assigned first
        while room[s] > 0:
            assign(spare.pop(), s)
    return {n: [samples[i] for i in taken[s]] for s, n in enumerate(names) if s != unused}


def label_rates(samples: list[XraySample]) -> dict[str, float]:
    """Share of samples positive for each label."""
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        for lab in s.labels:
            out[lab] += 1 / max(1, len(samples))
    return dict(sorted(out.items()))


def save_samples(samples: list[XraySample], path: str | Path) -> None:
    """One JSON object per line (the `XraySample` fields)."""
    with open(path, "w") as fh:
        for s in samples:
            fh.write(json.dumps(asdict(s)) + "\n")


def load_samples(path: str | Path) -> list[XraySample]:
    out = []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                out.append(XraySample(**{**d, "labels": tuple(d["labels"])}))
    return out


# ---------------------------------------------------------------- the RL set of a run (grpo.data, grpo.limit)

SAMPLE_FILES = {"rl": "rl.jsonl", "sft": ("sft.jsonl", "sft_val.jsonl")}


def is_sample_source(source: str) -> bool:
    """A `chexrl data sample` output (its folder, or one of its .jsonl files) rather than a dataset spec."""
    path = Path(source).expanduser()
    return source.endswith(".jsonl") or (path.is_dir() and (path / SAMPLE_FILES["rl"]).is_file())


def load_pool(source: str) -> list[XraySample]:
    """The samples `grpo.data` names: a dataset spec (docs/data.md), a sample JSONL, or a `chexrl data
    sample` folder (its rl.jsonl)."""
    if not is_sample_source(source):
        return load_dataset(source)
    path = Path(source).expanduser()
    path = path / SAMPLE_FILES["rl"] if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"sample file {path} not found")
    return load_samples(path)


def _sft_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = [path / name for name in SAMPLE_FILES["sft"] if (path / name).is_file()]
        if not files:
            raise FileNotFoundError(
                f"{path} holds no {' or '.join(SAMPLE_FILES['sft'])} (a `chexrl data sample` output)"
            )
        return files
    if not path.is_file():
        raise FileNotFoundError(f"SFT set {path} not found")
    return [path]


def sft_patients(sources: list[str], pool: list[XraySample]) -> tuple[set[tuple[str, str]], int, int]:
    """(dataset, patient_id) of the SFT set named by `sources`, and how many records (all, matched).

    A source is a `chexrl data sample` folder (its sft.jsonl and sft_val.jsonl), a sample JSONL (records
    carry `patient_id`), or a trace JSONL (`chexrl traces ...`), whose records are matched to the pool's
    patients by sample id (dataset:study_id:image stem, so a moved data root still matches) or image path.
    """
    by_study = {(s.dataset, s.study_id): s.patient_id for s in pool}
    by_image = {s.image_path: (s.dataset, s.patient_id) for s in pool}
    patients: set[tuple[str, str]] = set()
    total = matched = 0
    for source in sources:
        for path in _sft_files(source):
            with open(path, encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError as err:
                        raise ValueError(f"{path}: line {line_no} is not JSON: {err}") from None
                    total += 1
                    key = _record_patient(rec, by_study, by_image)
                    if key is not None:
                        patients.add(key)
                        matched += 1
    return patients, total, matched


def _record_patient(rec: dict, by_study: dict, by_image: dict) -> tuple[str, str] | None:
    if "patient_id" in rec and "dataset" in rec:  # a sample record
        return str(rec["dataset"]), str(rec["patient_id"])
    dataset, _, rest = str(rec.get("sample_id", "")).partition(":")
    study = rest.rpartition(":")[0]
    if (dataset, study) in by_study:
        return dataset, by_study[(dataset, study)]
    return by_image.get(str(rec.get("image", "")))


def rl_samples(
    source: str,
    limit: int | None,
    seed: int,
    sft_sources: list[str] = (),
    log=print,
) -> list[XraySample]:
    """The RL set of a GRPO run: the pool `source` names, without the SFT set's patients, and with
    `limit` a seeded, label-stratified, patient-grouped draw of that many images (never the first N in
    file order: MIMIC's files are sorted by patient, so those would be a few hundred patients).

    A `chexrl data sample` folder as `source` is its own SFT reference (its sft*.jsonl files)."""
    pool = load_pool(source)
    sources = list(sft_sources)
    path = Path(source).expanduser()
    if path.is_dir() and is_sample_source(source) and str(path) not in sources:
        sources.append(str(path))
    if sources:
        excluded, total, matched = sft_patients(sources, pool)
        before = len(pool)
        pool = [s for s in pool if (s.dataset, s.patient_id) not in excluded]
        log(f"RL pool {source}: {before} images; {before - len(pool)} of them belong to the "
            f"{len(excluded)} patients of the SFT set ({matched} of its {total} records matched)")  # fmt: skip
        if total and not matched:
            log(f"warning: no record of the SFT set {sources} matched the RL pool's images or studies")
    elif limit:
        log("warning: no SFT set named (grpo.sft_data, sft.traces): the RL draw cannot be kept "
            "patient-disjoint from SFT")  # fmt: skip
    if not limit or limit >= len(pool):
        if limit:
            log(f"grpo.limit {limit} >= the {len(pool)} images left in the pool: using them all")
        return pool
    return stratified_budget_split(pool, {"rl": limit}, seed=seed)["rl"]
