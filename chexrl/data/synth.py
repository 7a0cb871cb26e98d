"""Synthetic chest X-ray data sets written in the exact file formats of MIMIC-CXR-JPG, CheXpert and NIH
ChestX-ray14, so the real loaders read them unchanged.

Labels come from a small generative model with realistic prevalence and co-occurrence (a latent "heart
failure" factor drives Cardiomegaly, Edema, Pleural Effusion and Enlarged Cardiomediastinum; a latent
"infection" factor drives Pneumonia, Consolidation, Lung Opacity and Atelectasis; Support Devices is
common). Every label is forced to appear at least once in each split of 26 or more images, so a
14-label macro-F1 is defined. Pictures come from render.py. Everything is a function of `seed`: image i
is drawn from `np.random.default_rng([seed, i])`.

`--shift site-b` emulates a second institution (see `SHIFTS` and docs/data.md): a different acquisition
look and a different reporting convention.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chexrl.core.label_mapping import chexpert_to_nih_names
from chexrl.core.schemas import CHEXPERT14, NO_FINDING
from chexrl.data import formats as F
from chexrl.data.render import Acquisition, acquire, render_frontal, render_lateral

PATHOLOGIES = tuple(lab for lab in CHEXPERT14 if lab != NO_FINDING)
STYLES = ("mimic", "chexpert", "nih")


@dataclass(frozen=True)
class Site:
    """An institution: how it acquires images and how it reports labels."""

    name: str
    acquisition: Acquisition = field(default_factory=Acquisition)
    uncertain_rate: float = 0.08  # share of positive findings written as -1.0 (drawn fainter)
    unreported: tuple[str, ...] = ()  # labels this site never writes (the sign is still drawn)
    renamed: dict[str, tuple[str, float]] = field(default_factory=dict)  # label -> (written as, prob)


_SITE_B_ACQ = Acquisition(
    gamma=0.7,
    contrast=0.75,
    noise=0.05,
    blur=1.2,
    border=(0.03, 0.08),
    rotation=6.0,
    scale=(0.9, 1.05),
    marker=True,
)
SHIFTS: dict[str, Site] = {
    "none": Site("none"),
    "site-b": Site(
        "site-b",
        acquisition=_SITE_B_ACQ,
        uncertain_rate=0.16,
        unreported=("Lung Opacity",),
        renamed={"Pneumonia": ("Consolidation", 0.5)},
    ),
    "site-b-inverted": Site(
        "site-b-inverted",
        acquisition=Acquisition(**{**_SITE_B_ACQ.__dict__, "invert": True}),
        uncertain_rate=0.16,
        unreported=("Lung Opacity",),
        renamed={"Pneumonia": ("Consolidation", 0.5)},
    ),
}


def get_site(shift: str | None) -> Site:
    try:
        return SHIFTS[shift or "none"]
    except KeyError:
        raise ValueError(f"unknown shift {shift!r}; expected one of {sorted(SHIFTS)}") from None


# ---------------------------------------------------------------- labels


def sample_findings(rng: np.random.Generator) -> set[str]:
    """One study's true findings (CheXpert names, plus NIH-only extras used by the NIH style)."""
    u = rng.uniform
    heart, infection = u() < 0.15, u() < 0.14
    devices = u() < 0.28
    p = {
        "Support Devices": 1.0 if devices else 0.0,
        "Cardiomegaly": 0.65 if heart else 0.08,
        "Edema": 0.55 if heart else 0.03,
        "Pleural Effusion": 0.55 if heart else 0.10,
        "Enlarged Cardiomediastinum": 0.25 if heart else 0.03,
        "Pneumonia": 0.50 if infection else 0.02,
        "Consolidation": 0.45 if infection else 0.03,
        "Lung Opacity": 0.70 if infection else 0.12,
        "Atelectasis": 0.40 if infection else 0.10,
        "Lung Lesion": 0.05,
        "Pneumothorax": 0.10 if devices else 0.03,
        "Pleural Other": 0.03,
        "Fracture": 0.04,
    }
    found = {lab for lab, prob in p.items() if u() < prob}
    if "Lung Lesion" in found:
        found.add("Mass" if u() < 0.5 else "Nodule")
    for extra, prob in (("Emphysema", 0.03), ("Fibrosis", 0.02), ("Hernia", 0.005)):
        if u() < prob:
            found.add(extra)
    return found


def ensure_coverage(findings: list[set[str]], rng: np.random.Generator) -> None:
    """Give every pathology at least one positive in a group of 26+ studies (in place)."""
    if len(findings) < 2 * len(PATHOLOGIES):
        return
    for lab in PATHOLOGIES:
        if not any(lab in f for f in findings):
            chosen = findings[int(rng.integers(len(findings)))]
            chosen.add(lab)
            if lab == "Lung Lesion":
                chosen.add("Mass")


def reported(findings: set[str], site: Site, rng: np.random.Generator) -> dict[str, float]:
    """What the site's labeler writes for one study: label -> 1.0 / -1.0 (absent: not positive)."""
    out: dict[str, float] = {}
    for lab in PATHOLOGIES:
        if lab not in findings or lab in site.unreported:
            continue
        name = lab
        if lab in site.renamed and rng.uniform() < site.renamed[lab][1]:
            name = site.renamed[lab][0]
        value = -1.0 if rng.uniform() < site.uncertain_rate else 1.0
        out[name] = max(out.get(name, value), value)
    return out


def label_row(written: dict[str, float], rng: np.random.Generator, mention_rate: float = 0.15) -> dict:
    """CheXpert-labeler values for the 14 columns: 1.0 / -1.0 / 0.0 (negated mention) / NaN (blank).

    No Finding is 1.0 when no pathology other than Support Devices is positive or uncertain, else blank.
    """
    row = {lab: written.get(lab, 0.0 if rng.uniform() < mention_rate else np.nan) for lab in PATHOLOGIES}
    abnormal = any(v in (1.0, -1.0) for lab, v in written.items() if lab != "Support Devices")
    row[NO_FINDING] = np.nan if abnormal else 1.0
    return row


def _draw(findings: set[str], written: dict[str, float], rng, size: int, site: Site):
    strength = {lab: 0.6 for lab, v in written.items() if v == -1.0}
    return acquire(render_frontal(frozenset(findings), rng, size, strength), rng, site.acquisition)


# ---------------------------------------------------------------- writers


def _split_patients(n_patients: int, shares: tuple[float, ...], rng) -> list[int]:
    """Split index per patient, every split non-empty when there are enough patients."""
    order = rng.permutation(n_patients)
    bounds = np.floor(np.cumsum(shares)[:-1] * n_patients).astype(int)
    if n_patients >= len(shares):
        bounds = np.maximum(bounds, np.arange(1, len(shares)))
        bounds = np.minimum(bounds, n_patients - len(shares) + np.arange(1, len(shares)))
    split = np.zeros(n_patients, dtype=int)
    for k, b in enumerate(bounds):
        split[order[b:]] = k + 1
    return split.tolist()


def _studies(n: int, rng, lateral_rate: float) -> list[list[int]]:
    """Group n images into patients -> studies -> image counts (1 frontal + maybe 1 lateral)."""
    patients: list[list[int]] = []
    left = n
    while left > 0:
        studies = []
        for _ in range(int(rng.integers(1, 4))):
            k = min(left, 2 if rng.uniform() < lateral_rate else 1)
            if k <= 0:
                break
            studies.append(k)
            left -= k
        patients.append(studies)
    return patients


def _write_csv(df, path: Path, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", newline="") as fh:
            df.to_csv(fh, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def write_mimic(out: Path, n: int, seed: int, site: Site, size: int, gz: bool = True) -> dict:
    import pandas as pd

    rng = np.random.default_rng([seed, 0])
    patients = _studies(n, rng, lateral_rate=0.35)
    splits = _split_patients(len(patients), (0.80, 0.05, 0.15), rng)
    subject_ids = rng.choice(np.arange(10_000_000, 20_000_000), len(patients), replace=False)
    n_studies = sum(len(s) for s in patients)
    study_ids = rng.choice(np.arange(50_000_000, 60_000_000), n_studies, replace=False)
    findings = [sample_findings(rng) for _ in range(n_studies)]
    for k in range(3):
        ensure_coverage(
            [f for f, s in zip(findings, _per_study(patients, splits), strict=True) if s == k], rng
        )
    meta, split_rows, labels = [], [], []
    image_i = study_i = 0
    for p, studies in enumerate(patients):
        subject = int(subject_ids[p])
        for count in studies:
            study = int(study_ids[study_i])
            img_rng = np.random.default_rng([seed, 1, study_i])
            written = reported(findings[study_i], site, img_rng)
            labels.append({"subject_id": subject, "study_id": study, **label_row(written, img_rng)})
            ap = img_rng.uniform() < 0.45
            for v in range(count):
                view = "LATERAL" if v else ("AP" if ap else "PA")
                dicom = "-".join(f"{int(x):08x}" for x in img_rng.integers(0, 2**32, 5))
                pic = (
                    acquire(render_lateral(img_rng, size), img_rng, site.acquisition)
                    if v
                    else _draw(findings[study_i], written, img_rng, size, site)
                )
                dest = out / F.mimic_image_relpath(subject, study, dicom)
                dest.parent.mkdir(parents=True, exist_ok=True)
                pic.save(dest, quality=92)
                meta.append(_mimic_meta(dicom, subject, study, view, size, img_rng))
                split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                                   "split": F.MIMIC_SPLITS[splits[p]]})  # fmt: skip
                image_i += 1
            study_i += 1
    label_df = pd.DataFrame(labels, columns=list(F.MIMIC_LABEL_COLUMNS))
    _write_csv(label_df, out / F.MIMIC_CHEXPERT_CSV, gz)
    _write_csv(_negbio(label_df, rng), out / F.MIMIC_NEGBIO_CSV, gz)
    _write_csv(pd.DataFrame(meta, columns=list(F.MIMIC_METADATA_COLUMNS)), out / F.MIMIC_METADATA_CSV, gz)
    _write_csv(pd.DataFrame(split_rows, columns=list(F.MIMIC_SPLIT_COLUMNS)), out / F.MIMIC_SPLIT_CSV, gz)
    return {"images": image_i, "studies": n_studies, "patients": len(patients)}


def _per_study(patients: list[list[int]], splits: list[int]) -> list[int]:
    return [splits[p] for p, studies in enumerate(patients) for _ in studies]


def _mimic_meta(dicom: str, subject: int, study: int, view: str, size: int, rng) -> dict:
    desc = "CHEST (PORTABLE AP)" if view == "AP" else "CHEST (PA AND LAT)"
    code = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}[view]
    date = f"{int(rng.integers(2110, 2210))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    time = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}.{int(rng.integers(0, 1000)):03d}"
    return {
        "dicom_id": dicom,
        "subject_id": subject,
        "study_id": study,
        "PerformedProcedureStepDescription": desc,
        "ViewPosition": view,
        "Rows": size,
        "Columns": size,
        "StudyDate": int(date),
        "StudyTime": float(time),
        "ProcedureCodeSequence_CodeMeaning": desc,
        "ViewCodeSequence_CodeMeaning": code,
        "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if view == "AP" else "Erect",
    }


def _negbio(label_df, rng):
    """NegBio's file: same studies, its own disagreements (some uncertain calls resolved, a few flipped)."""
    neg = label_df.copy()
    for lab in PATHOLOGIES:
        col = neg[lab].to_numpy(copy=True)
        flip = rng.uniform(size=len(col)) < 0.5
        col[(col == -1.0) & flip] = 1.0
        neg[lab] = col
    return neg


def _chexpert_split_site(site: Site, split: str) -> Site:
    # valid.csv and the test ground truth are radiologist-labelled: no uncertain values.
    return site if split == "train" else Site(site.name, site.acquisition, 0.0, site.unreported, site.renamed)


def write_chexpert(out: Path, n: int, seed: int, site: Site, size: int) -> dict:
    import pandas as pd

    rng = np.random.default_rng([seed, 0])
    patients = _studies(n, rng, lateral_rate=0.3)
    splits = _split_patients(len(patients), (0.80, 0.10, 0.10), rng)
    findings = [sample_findings(rng) for _ in range(sum(len(s) for s in patients))]
    per_study = _per_study(patients, splits)
    for k in range(3):
        ensure_coverage([f for f, s in zip(findings, per_study, strict=True) if s == k], rng)
    rows: dict[str, list] = {"train": [], "valid": [], "test": []}
    first = {"train": 1, "valid": F.CHEXPERT_FIRST_VALID_PATIENT, "test": F.CHEXPERT_FIRST_TEST_PATIENT}
    study_i = 0
    for p, studies in enumerate(patients):
        split = ("train", "valid", "test")[splits[p]]
        patient = f"patient{first[split]:05d}"
        first[split] += 1
        sex, age = ("Female" if rng.uniform() < 0.45 else "Male"), int(rng.integers(18, 91))
        for s_no, count in enumerate(studies, start=1):
            img_rng = np.random.default_rng([seed, 1, study_i])
            written = reported(findings[study_i], _chexpert_split_site(site, split), img_rng)
            values = label_row(written, img_rng, mention_rate=0.15 if split == "train" else 1.0)
            study_dir = f"{split}/{patient}/study{s_no}"
            ap = "AP" if img_rng.uniform() < 0.6 else "PA"
            if split == "test":
                rows["test"].append({"Study": study_dir, **{k: int(v == 1.0) for k, v in values.items()}})
            for v in range(count):
                name = f"view{v + 1}_{'lateral' if v else 'frontal'}.jpg"
                pic = (
                    acquire(render_lateral(img_rng, size), img_rng, site.acquisition)
                    if v
                    else _draw(findings[study_i], written, img_rng, size, site)
                )
                (out / study_dir).mkdir(parents=True, exist_ok=True)
                pic.save(out / study_dir / name, quality=92)
                if split != "test":
                    path = f"{F.CHEXPERT_SMALL_PREFIX}/{study_dir}/{name}"
                    base = {"Path": path, "Sex": sex, "Age": age, "Frontal/Lateral": "Lateral" if v else "Frontal",
                            "AP/PA": "" if v else ap}  # fmt: skip
                    if split == "valid":
                        values = {k: (1.0 if val == 1.0 else 0.0) for k, val in values.items()}
                    rows[split].append({**base, **values})
            study_i += 1
    _write_csv(pd.DataFrame(rows["train"], columns=list(F.CHEXPERT_COLUMNS)), out / "train.csv")
    _write_csv(pd.DataFrame(rows["valid"], columns=list(F.CHEXPERT_COLUMNS)), out / "valid.csv")
    _write_csv(pd.DataFrame(rows["test"], columns=list(F.CHEXPERT_TEST_COLUMNS)), out / F.CHEXPERT_TEST_CSV)
    return {"images": n, "studies": study_i, "patients": len(patients)}


_NIH_SIZES = ((2500, 2048), (2992, 2991), (3056, 2544), (2682, 2749), (2021, 2021))


def nih_finding_labels(findings: set[str], written: dict[str, float]) -> str:
    """The NIH `Finding Labels` cell: alphabetical NIH names joined by `|`, or "No Finding"."""
    lesion = "Nodule" if "Nodule" in findings else "Mass"
    names = set(chexpert_to_nih_names(written, lesion))
    if "Lung Opacity" in findings:
        names.add("Infiltration")  # NIH has no Lung Opacity; radiologists call the haze an infiltrate
    names |= findings & {"Emphysema", "Fibrosis", "Hernia"}
    return "|".join(sorted(names)) if names else "No Finding"


def write_nih(out: Path, n: int, seed: int, site: Site, size: int) -> dict:
    import pandas as pd

    rng = np.random.default_rng([seed, 0])
    patients = _studies(n, rng, lateral_rate=0.0)
    splits = _split_patients(len(patients), (0.8, 0.2), rng)
    findings = [sample_findings(rng) for _ in range(n)]
    per_image = _per_study(patients, splits)
    for k in range(2):
        ensure_coverage([f for f, s in zip(findings, per_image, strict=True) if s == k], rng)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, lists = [], {0: [], 1: []}
    i = 0
    for p, studies in enumerate(patients):
        age, gender = int(rng.integers(1, 95)), ("F" if rng.uniform() < 0.44 else "M")
        for follow_up in range(len(studies)):
            img_rng = np.random.default_rng([seed, 1, i])
            written = reported(findings[i], site, img_rng)
            index = f"{p + 1:08d}_{follow_up:03d}.png"
            pic = _draw(findings[i], written, img_rng, size, site)
            if img_rng.uniform() < 0.02:  # a few real NIH PNGs are RGBA
                pic = pic.convert("RGBA")
            pic.save(out / "images" / index)
            w, h = _NIH_SIZES[int(img_rng.integers(len(_NIH_SIZES)))]
            spacing = float(img_rng.choice([0.143, 0.168, 0.139]))
            view = "AP" if img_rng.uniform() < 0.4 else "PA"
            rows.append([index, nih_finding_labels(findings[i], written), follow_up, p + 1, age + follow_up,
                         gender, view, w, h, spacing, spacing])  # fmt: skip
            lists[splits[p]].append(index)
            i += 1
    df = pd.DataFrame(rows, columns=list(F.NIH_COLUMNS))
    df.to_csv(out / F.NIH_TABLE_V2020, index=False)
    text = df.to_csv(index=False, lineterminator="\n")
    (out / F.NIH_TABLE_2017).write_text("".join(line + ",\n" for line in text.splitlines()))
    (out / F.NIH_TRAIN_VAL_LIST).write_text("".join(f"{x}\n" for x in sorted(lists[0])))
    (out / F.NIH_TEST_LIST).write_text("".join(f"{x}\n" for x in sorted(lists[1])))
    return {"images": n, "studies": n, "patients": len(patients)}


def synthesize(
    style: str, out: str | Path, n: int, seed: int = 0, shift: str | None = None, size: int = 128
) -> dict:
    """Write a synthetic data set of `n` images in `style`'s format under `out`; returns a summary."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    if n < 1 or size < 32:
        raise ValueError("need n >= 1 and size >= 32")
    site = get_site(shift)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(seed)  # nothing here uses `random`, but keep third-party code deterministic too
    writer = {"mimic": write_mimic, "chexpert": write_chexpert, "nih": write_nih}[style]
    summary = writer(out, n, seed, site, size)
    return {"style": style, "out": str(out), "seed": seed, "shift": site.name, "size": size, **summary}


def synth_tables(style: str, out: str | Path, n: int, seed: int = 0) -> Path:
    """Label tables only (no images), vectorised: full-size CheXpert train.csv (223,414 rows) or NIH
    tables (112,120 rows) in seconds, to benchmark the loaders and `data stats` at real scale."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    patient = np.sort(rng.integers(1, max(2, n // 3.5), n))
    if style == "chexpert":
        study = rng.integers(1, 6, n)
        lateral = rng.uniform(size=n) < 0.17
        pid = pd.Series(patient).map("{:05d}".format)
        view = np.where(lateral, "view2_lateral.jpg", "view1_frontal.jpg")
        df = pd.DataFrame({
            "Path": f"{F.CHEXPERT_SMALL_PREFIX}/train/patient" + pid + "/study" + pd.Series(study).astype(str) + "/" + view,
            "Sex": np.where(rng.uniform(size=n) < 0.4, "Female", "Male"),
            "Age": rng.integers(18, 91, n),
            "Frontal/Lateral": np.where(lateral, "Lateral", "Frontal"),
            "AP/PA": np.where(lateral, "", np.where(rng.uniform(size=n) < 0.8, "AP", "PA")),
        })  # fmt: skip
        prev = {"Support Devices": 0.5, "Lung Opacity": 0.47, "Pleural Effusion": 0.38, "Edema": 0.23}
        for lab in F.CHEXPERT_LABEL_ORDER[1:]:
            u = rng.uniform(size=n)
            p = prev.get(lab, 0.08)
            df[lab] = np.where(u < p, 1.0, np.where(u < p + 0.05, -1.0, np.where(u < p + 0.2, 0.0, np.nan)))
        # As the CheXpert labeler writes it: 1.0 when no pathology is positive or uncertain (Support
        # Devices may co-occur), else blank. The loaders read this column as written.
        pathology = df[[lab for lab in F.CHEXPERT_LABEL_ORDER[1:] if lab != "Support Devices"]].to_numpy()
        df.insert(5, "No Finding", np.where(((pathology == 1) | (pathology == -1)).any(axis=1), np.nan, 1.0))
        path = out / "train.csv"
        df.to_csv(path, index=False)
        return path
    if style == "nih":
        finds = np.array(["No Finding", "Infiltration", "Effusion", "Atelectasis", "Mass|Nodule", "Cardiomegaly|Effusion",
                          "Effusion|Infiltration", "Pleural_Thickening", "Pneumothorax", "Edema|Pneumonia", "Hernia"])  # fmt: skip
        weights = np.array([0.54, 0.1, 0.07, 0.06, 0.04, 0.05, 0.04, 0.03, 0.03, 0.03, 0.01])
        follow = pd.Series(patient).groupby(patient).cumcount().to_numpy()
        index = (
            pd.Series(patient).map("{:08d}".format) + "_" + pd.Series(follow).map("{:03d}".format) + ".png"
        )
        df = pd.DataFrame(dict(zip(F.NIH_COLUMNS, [
            index, rng.choice(finds, n, p=weights / weights.sum()), follow, patient, rng.integers(1, 95, n),
            np.where(rng.uniform(size=n) < 0.44, "F", "M"), np.where(rng.uniform(size=n) < 0.4, "AP", "PA"),
            np.full(n, 2500), np.full(n, 2048), np.full(n, 0.168), np.full(n, 0.168)], strict=True)))  # fmt: skip
        df.to_csv(out / F.NIH_TABLE_V2020, index=False)
        test = df["Patient ID"] % 5 == 0
        (out / F.NIH_TEST_LIST).write_text("\n".join(df.loc[test, "Image Index"]) + "\n")
        (out / F.NIH_TRAIN_VAL_LIST).write_text("\n".join(df.loc[~test, "Image Index"]) + "\n")
        return out / F.NIH_TABLE_V2020
    raise ValueError(f"synth_tables supports chexpert and nih, not {style!r}")
