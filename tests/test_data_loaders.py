"""Loaders for the real formats, the dataset spec, and `data stats` (chexrl/data/loaders.py, stats.py)."""

import gzip
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from chexrl.data.loaders import DataFormatError, DatasetSpec, load_dataset, read_mimic_frame
from chexrl.data.stats import dataset_stats
from chexrl.data.synth import synth_tables

NIH_SAMPLES = Path("/work/shared/data/nih-samples")
CX_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
             "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
             "Fracture,Support Devices")  # fmt: skip
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")  # fmt: skip


def _cx_row(path, view="Frontal", appa="PA", **labels):
    order = CX_HEADER.split(",")[5:]
    return ",".join(
        [path, "Female", "60", view, appa if view == "Frontal" else ""] + [labels.get(k, "") for k in order]
    )


@pytest.fixture
def handmade_chexpert(tmp_path):
    p = "CheXpert-v1.0-small/train/patient0000{}/study1/view{}.jpg"
    rows = [
        _cx_row(p.format(1, "1_frontal"), **{"Cardiomegaly": "1.0", "Edema": "-1.0", "No Finding": ""}),
        _cx_row(p.format(1, "2_lateral"), view="Lateral", **{"Cardiomegaly": "1.0"}),
        _cx_row(p.format(2, "1_frontal"), **{"No Finding": "1.0", "Support Devices": "1.0", "Edema": "0.0"}),
        _cx_row(p.format(3, "1_frontal"), appa="AP", **{"Pneumonia": "-1.0"}),
        _cx_row(p.format(4, "1_frontal"), **{"No Finding": "1.0"}),
    ]
    (tmp_path / "train.csv").write_text("\n".join([CX_HEADER, *rows]) + "\n")
    return tmp_path


def test_uncertainty_policies_and_no_finding(handmade_chexpert):
    root = handmade_chexpert
    zeros = load_dataset(f"chexpert:{root}:train")
    # No Finding as the file writes it (with Support Devices); the uncertain-only patient00003 is dropped
    assert [s.labels for s in zeros] == [
        ("Cardiomegaly",),
        ("No Finding", "Support Devices"),
        ("No Finding",),
    ]
    ones = load_dataset(f"chexpert:{root}:train?uncertain=U-Ones")
    assert [s.labels for s in ones][:3] == [
        ("Cardiomegaly", "Edema"),
        ("No Finding", "Support Devices"),
        ("Pneumonia",),
    ]
    ignore = load_dataset(f"chexpert:{root}:train?uncertain=ignore")
    assert [s.patient_id for s in ignore] == ["patient00002", "patient00004"]
    s = zeros[0]
    assert (s.patient_id, s.study_id, s.split, s.view, s.dataset, s.schema) == (
        "patient00001", "patient00001/study1", "train", "PA", "chexpert", "chexpert14")  # fmt: skip
    assert s.image_path == str(root / "train/patient00001/study1/view1_frontal.jpg")  # prefix resolved
    assert len(load_dataset(f"chexpert:{root}:train?frontal=false")) == 4
    assert load_dataset(f"chexpert:{root}:train:nih9")[1].labels == (
        "No Finding",
    )  # Support Devices not in nih9


def test_stats_json_on_handmade_csv(handmade_chexpert):
    st = dataset_stats(f"chexpert:{handmade_chexpert}")
    assert (st["images"], st["patients"], st["studies"], st["splits"], st["dropped"]) == (
        3,
        3,
        3,
        {"train": 3},
        1,
    )
    assert st["dropped_by"] == {"uncertain_only": 1} and st["rows"]["uncertain_only"] == 1
    expected = dict.fromkeys(st["labels"], 0) | {"Cardiomegaly": 1, "Support Devices": 1, "No Finding": 2}
    assert st["labels"] == expected
    assert st["uncertain_counts"]["Edema"] == 1 and st["uncertain_counts"]["Pneumonia"] == 1
    assert dataset_stats(f"chexpert:{handmade_chexpert}?uncertain=ignore")["dropped"] == 2


def test_stats_cli_json(handmade_chexpert):
    from typer.testing import CliRunner

    from chexrl.cli import app

    res = CliRunner().invoke(
        app, ["data", "stats", "--style", "chexpert", "--root", str(handmade_chexpert), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["labels"]["No Finding"] == 2


def _nih_table(root: Path, rows: list[str], trailing: bool = False, name="Data_Entry_2017_v2020.csv"):
    lines = [NIH_HEADER, *rows]
    (root / name).write_text("".join(line + ("," if trailing else "") + "\n" for line in lines))


def test_nih_mapping_policies_and_2017_table(tmp_path):
    rows = [
        "00000001_000.png,Mass|Nodule,0,1,58,M,PA,2682,2749,0.143,0.143",
        "00000001_001.png,Effusion|Pleural_Thickening,1,1,58,M,PA,2894,2729,0.143,0.143",
        "00000002_000.png,Infiltration,0,2,81,F,AP,2500,2048,0.168,0.168",
        "00000003_000.png,No Finding,0,3,40,F,PA,2500,2048,0.168,0.168",
    ]
    _nih_table(tmp_path, rows, trailing=True, name="Data_Entry_2017.csv")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    got = {s.study_id: s.labels for s in load_dataset(f"nih:{tmp_path}")}
    assert got == {
        "00000001_000": ("Lung Lesion",),
        "00000001_001": ("Pleural Other",),
        "00000003_000": ("No Finding",),
    }
    got10 = {s.study_id: s.labels for s in load_dataset(f"nih:{tmp_path}:nih10?out_of_schema=no_finding")}
    assert got10["00000001_001"] == ("Pleural Effusion", "Pleural Other")
    assert got10["00000002_000"] == ("No Finding",)
    keep = load_dataset(f"nih:{tmp_path}:test?out_of_schema=keep_empty")
    assert [(s.study_id, s.labels, s.split, s.patient_id, s.view) for s in keep] == [
        ("00000002_000", (), "test", "2", "AP"), ("00000003_000", ("No Finding",), "test", "3", "PA")]  # fmt: skip
    st = dataset_stats(f"nih:{tmp_path}")
    assert (
        st["dropped"] == 1
        and st["nih_findings"]["Infiltration"] == 1
        and st["splits"] == {"test": 1, "train_val": 2}
    )


def test_nih_unknown_finding_is_a_format_error(tmp_path):
    _nih_table(tmp_path, ["00000001_000.png,Thickening,0,1,58,M,PA,2682,2749,0.143,0.143"])
    with pytest.raises(DataFormatError, match="Thickening"):
        load_dataset(f"nih:{tmp_path}")


def test_real_nih_samples_load(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("00000001_000.png", "00027426_000.png"):
        shutil.copy(NIH_SAMPLES / name, tmp_path / "images" / name)
    _nih_table(tmp_path, ["00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
                          "00027426_000.png,No Finding,0,27426,51,M,PA,2992,2991,0.143,0.143"])  # fmt: skip
    samples = load_dataset(f"nih:{tmp_path}:nih10")
    assert [s.labels for s in samples] == [("Cardiomegaly",), ("No Finding",)]
    assert all(Path(s.image_path).is_file() for s in samples) and samples[1].patient_id == "27426"


def test_mimic_round_trip_frontal_and_join(synth_mimic_dir, tmp_path):
    d = synth_mimic_dir
    labels = pd.read_csv(d / "mimic-cxr-2.0.0-chexpert.csv.gz").set_index(["subject_id", "study_id"])
    meta = pd.read_csv(d / "mimic-cxr-2.0.0-metadata.csv.gz")
    samples = load_dataset(f"mimic:{d}")
    frontal = meta[meta["ViewPosition"].isin(["PA", "AP"])].join(labels, on=["subject_id", "study_id"])
    uncertain_only = ~(frontal[list(labels.columns)] == 1.0).any(axis=1)  # synth writes no other empty rows
    assert len(samples) == (~uncertain_only).sum() and uncertain_only.sum() > 0
    assert {s.view for s in samples} <= {"PA", "AP"}
    assert len(load_dataset(f"mimic:{d}?frontal=false&uncertain_only=no_finding")) == len(meta)
    for s in samples:
        assert Path(s.image_path).is_file()
        row = labels.loc[(int(s.patient_id), int(s.study_id))]
        assert s.labels == tuple(k for k, v in row.items() if v == 1.0)  # No Finding as written
    assert {s.split for s in load_dataset(f"mimic:{d}:val")} == {"validate"}
    negbio = load_dataset(f"mimic:{d}?labeler=negbio")
    assert len(negbio) >= len(samples) and negbio != samples  # NegBio resolves some uncertain calls
    # Uncompressed copies of the files load the same.
    plain = tmp_path / "plain"
    plain.mkdir()
    for gz in d.glob("*.csv.gz"):
        (plain / gz.name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
    (plain / "files").symlink_to(d / "files")
    assert [s.labels for s in load_dataset(f"mimic:{plain}")] == [s.labels for s in samples]


def test_chexpert_round_trip_all_splits(synth_chexpert_dir):
    d = synth_chexpert_dir
    samples = load_dataset(f"chexpert:{d}")
    assert {s.split for s in samples} == {"train", "valid", "test"}
    assert all(Path(s.image_path).is_file() for s in samples)
    gt = pd.read_csv(d / "groundtruth.csv").set_index("Study")
    test = [s for s in samples if s.split == "test"]
    assert len(test) == len(gt)
    for s in test:
        row = gt.loc[f"test/{s.study_id}"]
        assert s.labels == tuple(k for k, v in row.items() if v == 1)


def test_shifted_nih_loads(synth_nih_shift_dir):
    samples = load_dataset(f"nih:{synth_nih_shift_dir}:nih10")
    assert samples and all(Path(s.image_path).is_file() for s in samples)


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="bad dataset spec"):
        DatasetSpec.parse("openi:/x")
    with pytest.raises(DataFormatError, match="not found"):
        read_mimic_frame(tmp_path)
    with pytest.raises(DataFormatError, match=r"no train\.csv"):
        load_dataset(f"chexpert:{tmp_path}")
    assert DatasetSpec.parse("mimic:/d:train+validate").splits == ("train", "validate")


def test_full_size_tables_stats_in_seconds(tmp_path):
    synth_tables("chexpert", tmp_path / "cx", 223_414, seed=0)
    synth_tables("nih", tmp_path / "nih", 112_120, seed=0)
    for spec, rows in ((f"chexpert:{tmp_path / 'cx'}:train?frontal=false", 223_414), (f"nih:{tmp_path / 'nih'}:nih10?out_of_schema=keep_empty", 112_120)):  # fmt: skip
        t0 = time.perf_counter()
        st = dataset_stats(spec)
        assert st["images"] + st["dropped"] == rows
        assert time.perf_counter() - t0 < 15  # about 1.5 s each on 2 shared cores
