"""Data: No Finding as the labeler writes it, uncertain-only rows, out-of-schema rows of MIMIC/CheXpert,
unknown spec options and label values (chexrl/data/loaders.py, stats.py)."""

import gzip
import json

import pytest
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.data.loaders import DataFormatError, DatasetSpec, load_dataset
from chexrl.data.stats import dataset_stats

CX_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
             "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
             "Fracture,Support Devices")  # fmt: skip
LABELS = CX_HEADER.split(",")[5:]


def _write(root, rows: list[dict], name="train.csv"):
    lines = [CX_HEADER]
    for i, labels in enumerate(rows, start=1):
        path = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
        lines.append(",".join([path, "Female", "60", "Frontal", "PA"] + [labels.get(k, "") for k in LABELS]))
    (root / name).write_text("\n".join(lines) + "\n")
    return root


# One row per case; the comment is what the CheXpert labeler's file means.
ROWS = [
    {
        "No Finding": "1.0",
        "Support Devices": "1.0",
    },  # 1 normal study with a line: No Finding + Support Devices
    {"Edema": "-1.0", "Pneumonia": "0.0"},  # 2 uncertain-only: the report calls it possibly abnormal
    {"Lung Opacity": "1.0"},  # 3 abnormal, but Lung Opacity is not in nih9
    {"No Finding": "1.0"},  # 4 normal
    {},  # 5 nothing written at all: derived by the labeler's rule -> No Finding
    {"No Finding": "1.0", "Edema": "1.0"},  # 6 contradicts itself: the pathology wins
    {"Cardiomegaly": "1.0", "Edema": "-1.0"},  # 7 ordinary abnormal row
    {"No Finding": "0.0"},  # 8 explicitly not normal, nothing of the 14: outside the schema
]


@pytest.fixture
def cx(tmp_path):
    return _write(tmp_path, ROWS)


def _by_patient(spec):
    return {int(s.patient_id[-5:]): s.labels for s in load_dataset(spec)}


def test_no_finding_is_read_from_the_file_not_derived(cx):
    got = _by_patient(f"chexpert:{cx}")
    assert got == {
        1: ("No Finding", "Support Devices"),
        3: ("Lung Opacity",),
        4: ("No Finding",),
        5: ("No Finding",),
        6: ("Edema",),
        7: ("Cardiomegaly",),
    }
    st = dataset_stats(f"chexpert:{cx}")
    assert st["labels"]["No Finding"] == 3 and st["labels"]["Support Devices"] == 1
    assert st["rows"] == {
        "no_finding_in_file": 2,  # rows 1 and 4 (row 6 is overruled)
        "no_finding_derived": 1,
        "no_finding_conflicts": 1,
        "uncertain_only": 1,
        "out_of_schema": 1,
    }
    assert st["dropped"] == 2 and st["dropped_by"] == {"uncertain_only": 1, "out_of_schema": 1}


def test_data_stats_no_finding_matches_the_file_column(tmp_path):
    """On a labeler-consistent file, `data stats` counts exactly the file's No Finding = 1.0 cells."""
    import pandas as pd

    from chexrl.data.synth import synth_tables

    synth_tables("chexpert", tmp_path, 5_000, seed=3)
    df = pd.read_csv(tmp_path / "train.csv")
    st = dataset_stats(f"chexpert:{tmp_path}:train?frontal=false")
    assert st["labels"]["No Finding"] == int((df["No Finding"] == 1.0).sum()) > 0
    for lab in LABELS[1:]:  # every other label too (U-Zeros: the 1.0 cells of the rows kept)
        kept = df[(df[LABELS[1:]] == 1.0).any(axis=1) | (df["No Finding"] == 1.0)]
        assert st["labels"][lab] == int((kept[lab] == 1.0).sum()), lab


def test_uncertain_only_rows_have_an_explicit_policy(cx):
    assert 2 not in _by_patient(f"chexpert:{cx}")  # default: drop
    assert _by_patient(f"chexpert:{cx}?uncertain_only=no_finding")[2] == ("No Finding",)
    assert _by_patient(f"chexpert:{cx}?uncertain=ones")[2] == (
        "Edema",
    )  # U-Ones: not uncertain-only any more
    st = dataset_stats(f"chexpert:{cx}?uncertain_only=no_finding")
    assert st["rows"]["uncertain_only"] == 1 and "uncertain_only" not in st["dropped_by"]
    assert st["uncertain_only"] == "no_finding"
    out = CliRunner().invoke(app, ["data", "stats", "--style", "chexpert", "--root", str(cx)])
    assert out.exit_code == 0, out.output
    assert "uncertain_only 1" in out.output and "uncertain-only 1" in out.output


def test_chexpert_and_mimic_on_nih9_apply_the_out_of_schema_policy(cx, synth_mimic_dir):
    got = _by_patient(f"chexpert:{cx}:nih9")
    assert 3 not in got  # only Lung Opacity: abnormal, not "No Finding"
    assert got[1] == ("No Finding",) and got[7] == ("Cardiomegaly",)
    assert _by_patient(f"chexpert:{cx}:nih9?out_of_schema=no_finding")[3] == ("No Finding",)
    assert _by_patient(f"chexpert:{cx}:nih9?out_of_schema=keep_empty")[3] == ()
    # MIMIC: no abnormal study becomes No Finding in nih9
    import pandas as pd

    file = pd.read_csv(synth_mimic_dir / "mimic-cxr-2.0.0-chexpert.csv.gz").set_index("study_id")
    samples = load_dataset(f"mimic:{synth_mimic_dir}:nih9")
    normal = [s for s in samples if s.labels == ("No Finding",)]
    assert normal and all(file.loc[int(s.study_id), "No Finding"] == 1.0 for s in normal)
    st = dataset_stats(f"mimic:{synth_mimic_dir}:nih9")
    assert st["dropped_by"]["out_of_schema"] == st["rows"]["out_of_schema"] > 0


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("chexpert:{d}?uncertian=ones", "unknown option 'uncertian' for chexpert"),
        ("chexpert:{d}?uncertain=twos", "bad value 'twos' for option 'uncertain'"),
        ("chexpert:{d}?frontal=flase", "bad value 'flase' for option 'frontal'"),
        ("chexpert:{d}?uncertain_only=ones", "bad value 'ones' for option 'uncertain_only'"),
        ("chexpert:{d}?labeler=negbio", "unknown option 'labeler' for chexpert"),
        ("nih:{d}?uncertain=ones", "unknown option 'uncertain' for nih"),
        ("mimic:{d}?table=2017", "unknown option 'table' for mimic"),
        ("chexpert:{d}?frontal", "option 'frontal' is not key=value"),
    ],
)
def test_unknown_options_and_values_are_rejected(cx, spec, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(spec.format(d=cx))


def test_unknown_override_and_cli_option_are_rejected(cx):
    with pytest.raises(ValueError, match="unknown option 'uncertian'"):
        load_dataset(f"chexpert:{cx}", uncertian="ones")
    with pytest.raises(ValueError, match="unknown option 'uncertian'"):
        dataset_stats(DatasetSpec("chexpert", str(cx), options={"uncertian": "ones"}))
    res = CliRunner().invoke(app, ["data", "stats", "--spec", f"chexpert:{cx}?uncertian=ones"])
    assert res.exit_code == 2 and "uncertian" in res.output


def test_label_value_outside_the_labeler_set_names_file_line_and_column(tmp_path):
    rows = [{"No Finding": "1.0"}, {"Edema": "1.0"}, {"Edema": "2.0", "Cardiomegaly": "1.0"}]
    _write(tmp_path, rows)
    with pytest.raises(DataFormatError) as err:
        load_dataset(f"chexpert:{tmp_path}")
    msg = str(err.value)
    assert "train.csv" in msg and "line 4" in msg and "column 'Edema'" in msg and "2.0" in msg
    _write(tmp_path, [{"Edema": "1.0"}, {"Pneumonia": "yes"}])
    with pytest.raises(
        DataFormatError, match=r"train\.csv: line 3 \(data row 2\), column 'Pneumonia'.*'yes'"
    ):
        dataset_stats(f"chexpert:{tmp_path}")
    for value in ("1.0", "0.0", "-1.0", "", "1", "-1"):  # every value the labeler writes is accepted
        _write(tmp_path, [{"Edema": value, "Cardiomegaly": "1.0"}])
        assert len(load_dataset(f"chexpert:{tmp_path}")) == 1


def test_mimic_label_value_error_names_the_gzipped_file(synth_mimic_dir, tmp_path):
    for f in synth_mimic_dir.glob("*.csv.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    path = tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    cells = lines[5].split(",")
    cells[2 + 3] = "3.0"  # the 4th label column (Edema)
    lines[5] = ",".join(cells)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(
        DataFormatError, match=r"chexpert\.csv\.gz: line 6 \(data row 5\), column 'Edema'.*3\.0"
    ):
        load_dataset(f"mimic:{tmp_path}")
    assert json.loads(json.dumps(lines[0].split(",")[2 + 3])) == "Edema"
