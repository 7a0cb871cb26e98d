"""Synthetic external test sites in their public file forms: NIH's expert relabels, VinDr-CXR (Kaggle
train.csv) and PadChest, so chexrl.data.loaders_external reads them unchanged.

Findings and pictures come from chexrl.data.synth (the same generative model and signs), so a model
trained on synthetic MIMIC/CheXpert has something to transfer. What differs is how each site reports:

* nih-expert: adjudicated truth (no labeler noise) for its four findings; `Set Id` val / test by patient.
* vindr: three readers per image (drawn from R1..R17), each marking a true finding with probability 0.8
  and adding a false one with probability 0.05; a reader who marks nothing writes "No finding". So 2-1
  splits among readers happen, as in the real file.
* padchest: the first term of each label's PadChest vocabulary, a few terms outside the 14 ("aortic
  elongation", "scoliosis", "chronic changes"), "normal" for studies with no pathology; half the rows
  RNN_model-labelled and a quarter lateral, both filtered out by the loader's defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexrl.core.site_labels import (
    NIH_EXPERT_TO_CHEXPERT,
    PADCHEST_TO_CHEXPERT,
    VINDR_CLASSES,
    VINDR_TO_CHEXPERT,
)
from chexrl.data import formats as F
from chexrl.data.render import acquire, render_lateral
from chexrl.data.synth import (
    _NIH_SIZES,
    STYLES,
    Site,
    _draw,
    _split_patients,
    _studies,
    ensure_coverage,
    get_site,
    nih_finding_labels,
    reported,
    sample_findings,
    synthesize,
)

# CheXpert name -> the VinDr class a reader marks (the inverse of VINDR_TO_CHEXPERT), plus the synthetic
# findings with a VinDr class outside the schema.
_TO_VINDR = {v: k for k, v in VINDR_TO_CHEXPERT.items() if v is not None and v != "No Finding"}
_TO_VINDR |= {"Enlarged Cardiomediastinum": "Aortic enlargement", "Fibrosis": "Pulmonary fibrosis"}
# CheXpert name -> the first PadChest term that maps to it.
_TO_PADCHEST: dict[str, str] = {}
for _term, _labels in PADCHEST_TO_CHEXPERT.items():
    if len(_labels) == 1:
        _TO_PADCHEST.setdefault(_labels[0], _term)
_PADCHEST_EXTRAS = ("aortic elongation", "scoliosis", "chronic changes")


def _findings(n: int, rng, splits_of_images: list[int], n_splits: int) -> list[set[str]]:
    findings = [sample_findings(rng) for _ in range(n)]
    for k in range(n_splits):
        ensure_coverage([f for f, s in zip(findings, splits_of_images, strict=True) if s == k], rng)
    return findings


def write_nih_expert(out: Path, n: int, seed: int, site: Site, size: int) -> dict:
    """images/<Image Index> and google2019_nih-chest-xray-labels.csv (NIH columns + four findings + Set Id)."""
    import pandas as pd

    rng = np.random.default_rng([seed, 0])
    patients = _studies(n, rng, lateral_rate=0.0)
    splits = _split_patients(len(patients), (0.55, 0.45), rng)
    per_image = [splits[p] for p, studies in enumerate(patients) for _ in studies]
    findings = _findings(n, rng, per_image, 2)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, i = [], 0
    for p, studies in enumerate(patients):
        age, gender = int(rng.integers(1, 95)), ("F" if rng.uniform() < 0.44 else "M")
        for follow_up in range(len(studies)):
            img_rng = np.random.default_rng([seed, 1, i])
            written = reported(findings[i], site, img_rng)
            index = f"{p + 1:08d}_{follow_up:03d}.png"
            _draw(findings[i], written, img_rng, size, site).save(out / "images" / index)
            w, h = _NIH_SIZES[int(img_rng.integers(len(_NIH_SIZES)))]
            expert = ["YES" if lab in findings[i] else "NO" for lab in NIH_EXPERT_TO_CHEXPERT.values()]
            view = "AP" if img_rng.uniform() < 0.7 else "PA"
            rows.append([index, nih_finding_labels(findings[i], written), follow_up, p + 1, age + follow_up,
                         gender, view, w, h, 0.168, 0.168, *expert, F.NIH_EXPERT_SPLITS[splits[p]]])  # fmt: skip
            i += 1
    pd.DataFrame(rows, columns=F.NIH_EXPERT_HEADER.split(",")).to_csv(out / F.NIH_EXPERT_CSV, index=False)
    return {"images": n, "studies": n, "patients": len(patients)}


def _vindr_rows(image_id: str, truth: set[str], rng) -> list[list]:
    """One image's rows: three readers, each marking true findings (0.8) and a false one (0.05)."""
    readers = rng.choice(np.arange(1, 18), 3, replace=False)
    classes = [c for c in VINDR_CLASSES if c != "No finding"]
    rows = []
    for r in readers:
        marked = {_TO_VINDR[lab] for lab in truth if lab in _TO_VINDR and rng.uniform() < 0.8}
        if rng.uniform() < 0.05:
            marked.add(classes[int(rng.integers(len(classes)))])
        for c in sorted(marked):
            x0, y0 = (int(v) for v in rng.integers(100, 1500, 2))
            rows.append([image_id, c, VINDR_CLASSES.index(c), f"R{r}", x0, y0, x0 + 300, y0 + 250])
        if not marked:
            rows.append([image_id, "No finding", 14, f"R{r}", None, None, None, None])
    return rows


def write_vindr(out: Path, n: int, seed: int, site: Site, size: int) -> dict:
    """train/<image_id>.png and train.csv (one row per reader and finding, "No finding" rows unboxed)."""
    import pandas as pd

    rng = np.random.default_rng([seed, 0])
    findings = _findings(n, rng, [0] * n, 1)
    (out / F.VINDR_IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img_rng = np.random.default_rng([seed, 1, i])
        image_id = "".join(f"{int(x):08x}" for x in img_rng.integers(0, 2**32, 4))
        written = {lab: 1.0 for lab in findings[i]}  # readers see the film, not a labeler's report
        _draw(findings[i], written, img_rng, size, site).save(out / F.VINDR_IMAGE_DIR / f"{image_id}.png")
        rows += _vindr_rows(image_id, findings[i], img_rng)
    pd.DataFrame(rows, columns=list(F.VINDR_COLUMNS)).to_csv(out / F.VINDR_CSV, index=False)
    return {"images": n, "studies": n, "patients": n}


def _padchest_terms(truth: set[str], rng) -> list[str]:
    terms = [_TO_PADCHEST[lab] for lab in sorted(truth) if lab in _TO_PADCHEST]
    if not any(t for t in terms if PADCHEST_TO_CHEXPERT[t] != ("Support Devices",)):
        terms.insert(0, "normal")
    if rng.uniform() < 0.2:
        terms.append(_PADCHEST_EXTRAS[int(rng.integers(len(_PADCHEST_EXTRAS)))])
    return terms


def _padchest_row(i: int, truth: set[str], projection: str, rng) -> dict:
    study, patient = f"{int(rng.integers(0, 2**62)):x}", f"{int(rng.integers(0, 2**62)):x}"
    return {
        "ImageID": f"{study}_{i:05d}.png", "ImageDir": i % 50, "StudyDate_DICOM": 20090101 + i % 300,
        "StudyID": study, "PatientID": patient, "PatientBirth": 1930 + int(rng.integers(0, 70)),
        "PatientSex_DICOM": "F" if rng.uniform() < 0.5 else "M", "ViewPosition_DICOM": projection,
        "Projection": projection, "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No",
        "Modality_DICOM": "CR", "ReportID": i, "MethodLabel": "Physician" if rng.uniform() < 0.5 else "RNN_model",
        "Labels": repr(_padchest_terms(truth, rng)), "Localizations": "[]", "LabelsLocalizationsBySentence": "[]",
        "labelCUIS": "[]", "LocalizationsCUIS": "[]",
    }  # fmt: skip


def write_padchest(out: Path, n: int, seed: int, site: Site, size: int) -> dict:
    """<ImageDir>/<ImageID> images and the PadChest table (one row per image)."""
    import pandas as pd

    rng = np.random.default_rng([seed, 0])
    findings = _findings(n, rng, [0] * n, 1)
    projections = ("PA", "AP", "AP_horizontal", "L")
    rows = []
    for i in range(n):
        img_rng = np.random.default_rng([seed, 1, i])
        projection = projections[int(img_rng.choice(4, p=(0.55, 0.1, 0.1, 0.25)))]
        row = _padchest_row(i, findings[i], projection, img_rng)
        lateral = projection == "L"
        pic = (
            acquire(render_lateral(img_rng, size), img_rng, site.acquisition)
            if lateral
            else _draw(findings[i], {lab: 1.0 for lab in findings[i]}, img_rng, size, site)
        )
        (out / str(row["ImageDir"])).mkdir(parents=True, exist_ok=True)
        pic.save(out / str(row["ImageDir"]) / row["ImageID"])
        rows.append(row)
    pd.DataFrame(rows, columns=list(F.PADCHEST_COLUMNS)).to_csv(out / F.PADCHEST_CSV, index=False)
    return {"images": n, "studies": n, "patients": n}


EXTERNAL_WRITERS = {"nih-expert": write_nih_expert, "vindr": write_vindr, "padchest": write_padchest}
ALL_STYLES = (*STYLES, *EXTERNAL_WRITERS)


def synthesize_any(
    style: str, out: str | Path, n: int, seed: int = 0, shift: str | None = None, size: int = 128
) -> dict:
    """`chexrl.data.synth.synthesize` for every style, the external sites' included (`chexrl synth-data`)."""
    if style in STYLES:
        return synthesize(style, out, n, seed=seed, shift=shift, size=size)
    if style not in EXTERNAL_WRITERS:
        raise ValueError(f"unknown style {style!r}; expected one of {ALL_STYLES}")
    if n < 1 or size < 32:
        raise ValueError("need n >= 1 and size >= 32")
    site = get_site(shift)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = EXTERNAL_WRITERS[style](out, n, seed, site, size)
    return {"style": style, "out": str(out), "seed": seed, "shift": site.name, "size": size, **summary}
