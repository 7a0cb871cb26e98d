"""Synthetic data: exact file formats, determinism, the site-b shift, and a learnable visual signal."""

import csv
import gzip
import hashlib
import re
import zlib

import numpy as np
import pytest
from PIL import Image

from chexrl.data import formats as F
from chexrl.data.render import SIGNAL_BOXES, Acquisition, acquire, render_frontal
from chexrl.data.synth import PATHOLOGIES, SHIFTS, sample_findings, synthesize

LABEL_VALUES = {"1.0", "0.0", "-1.0", ""}


def _rows(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        return list(csv.reader(fh))


def test_mimic_files_exact(synth_mimic_dir):
    d = synth_mimic_dir
    labels = _rows(d / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert tuple(labels[0]) == F.MIMIC_LABEL_COLUMNS
    assert labels[0][:4] == ["subject_id", "study_id", "Atelectasis", "Cardiomegaly"]
    assert {v for r in labels[1:] for v in r[2:]} <= LABEL_VALUES
    assert tuple(_rows(d / "mimic-cxr-2.0.0-negbio.csv.gz")[0]) == F.MIMIC_LABEL_COLUMNS
    meta = _rows(d / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert meta[0] == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                       "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                       "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]  # fmt: skip
    split = _rows(d / "mimic-cxr-2.0.0-split.csv.gz")
    assert split[0] == ["dicom_id", "study_id", "subject_id", "split"]
    assert {r[3] for r in split[1:]} == {"train", "validate", "test"}
    for dicom, subject, study, *_ in meta[1:]:
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", dicom)
        assert re.fullmatch(r"1\d{7}", subject) and re.fullmatch(r"5\d{7}", study)
        img = d / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        assert img.is_file()
    assert {r[4] for r in meta[1:]} == {"PA", "AP", "LATERAL"}
    subject_split = {}
    for _, _, subject, s in split[1:]:
        assert subject_split.setdefault(subject, s) == s  # splits are patient-level


def test_chexpert_files_exact(synth_chexpert_dir):
    d = synth_chexpert_dir
    train, valid = _rows(d / "train.csv"), _rows(d / "valid.csv")
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
              "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
              "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]  # fmt: skip
    assert train[0] == header and valid[0] == header
    assert re.fullmatch(
        r"CheXpert-v1.0-small/train/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg", train[1][0]
    )
    assert train[1][0].startswith("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert valid[1][0].startswith("CheXpert-v1.0-small/valid/patient64541/")
    assert {v for r in train[1:] for v in r[5:]} <= LABEL_VALUES
    assert {v for r in valid[1:] for v in r[5:]} <= {"1.0", "0.0"}  # radiologist labels: no blanks, no -1
    assert {r[3] for r in train[1:]} == {"Frontal", "Lateral"}
    assert all((r[4] == "") == (r[3] == "Lateral") for r in train[1:])
    for r in train[1:] + valid[1:]:
        assert (d / r[0].split("/", 1)[1]).is_file()
    gt = _rows(d / "groundtruth.csv")
    assert tuple(gt[0]) == F.CHEXPERT_TEST_COLUMNS
    assert gt[1][0] == "test/patient64741/study1"
    assert {v for r in gt[1:] for v in r[1:]} <= {"0", "1"}


def test_nih_files_exact(synth_nih_dir):
    d = synth_nih_dir
    v2020 = (d / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    old = (d / "Data_Entry_2017.csv").read_text().splitlines()
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")  # fmt: skip
    assert v2020[0] == header and old[0] == header + ","
    assert all(line.endswith(",") for line in old) and [x[:-1] for x in old] == v2020
    names = set(F.NIH_FINDINGS)
    for line in v2020[1:]:
        index, labels, follow, pid, *_ = line.split(",")
        assert re.fullmatch(r"\d{8}_\d{3}\.png", index) and index == f"{int(pid):08d}_{int(follow):03d}.png"
        parts = labels.split("|")
        assert labels == "No Finding" or (set(parts) <= names and parts == sorted(parts))
        assert (d / "images" / index).is_file()
    train = set((d / "train_val_list.txt").read_text().split())
    test = set((d / "test_list.txt").read_text().split())
    assert train and test and not train & test and len(train | test) == len(v2020) - 1
    assert not {x[:8] for x in train} & {x[:8] for x in test}  # patient-disjoint, like the official lists


def _digest(d):
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(d).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic(tmp_path):
    a = synthesize("nih", tmp_path / "a", 12, seed=5, size=48)
    synthesize("nih", tmp_path / "b", 12, seed=5, size=48)
    synthesize("nih", tmp_path / "c", 12, seed=6, size=48)
    assert a["images"] == 12
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_prevalence_and_no_finding_share():
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng) for _ in range(4000)]
    rate = {lab: np.mean([lab in f for f in draws]) for lab in PATHOLOGIES}
    no_finding = np.mean([not (f & set(PATHOLOGIES)) for f in draws])
    assert 0.15 < no_finding < 0.35
    assert min(rate.values()) > 0.02  # every label appears
    top = sorted(rate, key=rate.get)[-3:]
    assert "Support Devices" in top and "Lung Opacity" in top
    both = np.mean([{"Edema", "Cardiomegaly"} <= f for f in draws])
    assert both > 2 * rate["Edema"] * rate["Cardiomegaly"]  # positively correlated


def _box_mean(img64: np.ndarray, box) -> float:
    x0, y0, x1, y1 = (round(v * 64) for v in box)
    return float(img64[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].mean())


@pytest.mark.parametrize("label", sorted(SIGNAL_BOXES))
def test_visual_signal_survives_64px(label):
    """Mean intensity in the label's box differs strongly with vs without the label, at 64x64."""
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    diffs = []
    for k in range(12):
        others = {lab for lab in sample_findings(rng) if lab != label}
        pair = []
        for labels in (others | {label}, others):
            r = np.random.default_rng([k, 7])
            img = acquire(render_frontal(frozenset(labels), r, 128), r, Acquisition())
            pair.append(np.asarray(img.resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255)
        diffs.append(abs(_box_mean(pair[0], SIGNAL_BOXES[label]) - _box_mean(pair[1], SIGNAL_BOXES[label])))
    assert np.mean(diffs) > 0.12, diffs


def test_shift_changes_acquisition_and_labels(tmp_path):
    a = synthesize("chexpert", tmp_path / "a", 150, seed=3, size=64)
    b = synthesize("chexpert", tmp_path / "b", 150, seed=3, size=64, shift="site-b")
    assert a["shift"] == "none" and b["shift"] == "site-b"
    rows_a, rows_b = _rows(tmp_path / "a" / "train.csv"), _rows(tmp_path / "b" / "train.csv")
    col = rows_a[0].index("Lung Opacity")
    assert any(r[col] == "1.0" for r in rows_a[1:]) and not any(r[col] in ("1.0", "-1.0") for r in rows_b[1:])
    img_a = np.asarray(Image.open(tmp_path / "a" / rows_a[1][0].split("/", 1)[1]), dtype=np.float32)
    img_b = np.asarray(Image.open(tmp_path / "b" / rows_b[1][0].split("/", 1)[1]), dtype=np.float32)
    assert img_b[:, :1].mean() < 5 and img_b[:1, :].mean() < 5  # black collimation border
    assert abs(img_a.std() - img_b.std()) > 3  # different contrast
    assert SHIFTS["site-b-inverted"].acquisition.invert
