"""The external test sites (chexrl/data/loaders_external.py, core/site_labels.py, data/synth_external.py):
hand-counted files in the real formats, with each format's edge cases, and the synthetic writers."""

import json
import os

import pytest
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.core.site_labels import PADCHEST_TO_CHEXPERT, padchest_labels, parse_padchest_terms
from chexrl.data.loaders import DataFormatError, load_dataset
from chexrl.data.stats import dataset_stats
from chexrl.data.synth_external import synthesize_any

# The header of google2019_nih-chest-xray-labels.csv as TorchXRayVision ships it; rows in its form.
EXPERT_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,Pneumothorax,Airspace opacity,"
    "Nodule or mass,Set Id"
)
EXPERT_ROWS = [
    "00000013_008.png,No Finding,8,13,60,M,AP,3056,2544,0.139,0.139,NO,NO,YES,NO,test",
    "00000013_026.png,Cardiomegaly|Emphysema,26,13,57,M,AP,2500,2048,0.168,0.168,NO,YES,NO,NO,test",
    "00000032_002.png,No Finding,2,32,55,F,AP,2500,2048,0.168,0.168,YES,NO,YES,YES,val",
    "00000040_000.png,Effusion,0,40,70,F,PA,2500,2048,0.168,0.168,NO,NO,NO,NO,val",
    "00000041_001.png,Mass,1,41,64,M,PA,2500,2048,0.168,0.168,NO,NO,YES,YES,val",
]
# Kaggle train.csv. img_a: Cardiomegaly 2-0 (agreed), Pleural effusion 1 reader (a 2-1 split: not agreed).
# img_b: 2 readers "No finding", 1 reader Nodule/Mass. img_c: Aortic enlargement agreed (outside the
# schema). img_d: R1 drew two Nodule/Mass boxes (one vote), nothing agreed.
VINDR_ROWS = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
img_a,Cardiomegaly,3,R8,691.0,1375.0,1653.0,1831.0
img_a,Cardiomegaly,3,R9,700.0,1380.0,1650.0,1830.0
img_a,Pleural effusion,10,R10,100.0,100.0,200.0,200.0
img_a,Aortic enlargement,0,R10,1000.0,700.0,1200.0,900.0
img_b,No finding,14,R1,,,,
img_b,No finding,14,R2,,,,
img_b,Nodule/Mass,8,R3,10,10,50,50
img_c,Aortic enlargement,0,R1,1,1,2,2
img_c,Aortic enlargement,0,R2,1,1,2,2
img_c,No finding,14,R3,,,,
img_d,Nodule/Mass,8,R1,1,1,2,2
img_d,Nodule/Mass,8,R1,5,5,9,9
img_d,No finding,14,R2,,,,
img_d,Pneumothorax,12,R3,1,1,2,2
"""
# PadChest (the columns the loader reads, plus one it does not). a: 'normal' next to a finding. b: a lateral.
# c: normal with a device and an unmapped term. d: RNN-labelled. e: unmapped terms only. f: a term with two
# labels and an empty string. g: AP_horizontal, a blank Labels cell.
PADCHEST_ROWS = """ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,Projection,MethodLabel,Labels
a.png,0,20140101,s1,p1,PA,Physician,"['normal', 'cardiomegaly']"
b.png,0,20140101,s1,p1,L,Physician,['normal']
c.png,1,20140102,s2,p2,AP_horizontal,Physician,"['normal', 'pacemaker', 'scoliosis']"
d.png,1,20140103,s3,p3,PA,RNN_model,['pneumonia']
e.png,2,20140104,s4,p4,AP,Physician,"['aortic elongation', ' kyphosis']"
f.png,2,20140105,s5,p5,PA,Physician,"['hydropneumothorax', '']"
g.png,3,20140106,s6,p6,AP_horizontal,Physician,
"""


@pytest.fixture
def expert_dir(tmp_path):
    (tmp_path / "google2019_nih-chest-xray-labels.csv").write_text(
        "\n".join([EXPERT_HEADER, *EXPERT_ROWS]) + "\n"
    )
    return tmp_path


def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path


def _labels(samples):
    return {s.study_id: s.labels for s in samples}


def test_nih_expert_labels_splits_and_schema(expert_dir):
    samples = load_dataset(f"nih-expert:{expert_dir}")
    assert _labels(samples) == {
        "00000013_008": ("Lung Opacity",),
        "00000013_026": ("Pneumothorax",),
        "00000032_002": ("Fracture", "Lung Lesion", "Lung Opacity"),
        "00000040_000": (),  # four NOs: no label, and not No Finding (the effusion is not among the four)
        "00000041_001": ("Lung Lesion", "Lung Opacity"),
    }
    assert {s.schema for s in samples} == {"nih-expert4"}
    assert samples[0].image_path == str(expert_dir / "images" / "00000013_008.png")
    assert [s.study_id for s in load_dataset(f"nih-expert:{expert_dir}:validation")] == [
        "00000032_002",
        "00000040_000",
        "00000041_001",
    ]
    with pytest.raises(ValueError, match=r"schema chexpert14 has labels nih-expert says nothing about"):
        load_dataset(f"nih-expert:{expert_dir}:chexpert14")


def test_nih_expert_stats_cli_prints_yes_counts(expert_dir):
    res = CliRunner().invoke(
        app, ["data", "stats", "--style", "nih-expert", "--root", str(expert_dir), "--json"]
    )
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    # YES rows per finding, counted by hand from EXPERT_ROWS
    assert st["site_labels"] == {"Fracture": 1, "Pneumothorax": 1, "Airspace opacity": 3, "Nodule or mass": 2}
    assert st["labels"] == {"Fracture": 1, "Lung Lesion": 2, "Lung Opacity": 3, "Pneumothorax": 1}
    assert st["images"] == 5 and st["splits"] == {"test": 2, "val": 3} and st["rows"]["all_no"] == 1


def test_nih_expert_bad_value_names_line_and_column(tmp_path):
    rows = [*EXPERT_ROWS[:2], EXPERT_ROWS[2].replace("YES,NO,YES,YES", "YES,MAYBE,YES,YES")]
    _write(tmp_path, "google2019_nih-chest-xray-labels.csv", "\n".join([EXPERT_HEADER, *rows]) + "\n")
    with pytest.raises(
        DataFormatError, match=r"line 4, column 'Pneumothorax': value 'MAYBE' is not YES or NO"
    ):
        load_dataset(f"nih-expert:{tmp_path}")


def test_vindr_majority_and_policies(tmp_path):
    root = _write(tmp_path, "train.csv", VINDR_ROWS)
    assert _labels(load_dataset(f"vindr:{root}")) == {"img_a": ("Cardiomegaly",), "img_b": ("No Finding",)}
    st = dataset_stats(f"vindr:{root}")
    assert st["dropped_by"] == {"out_of_schema": 1, "no_agreement": 1}
    assert st["site_labels"]["Aortic enlargement"] == 1 and st["site_labels"]["Pleural effusion"] == 0
    assert (
        st["marked_by_any_reader"]["Pleural effusion"] == 1 and st["marked_by_any_reader"]["Nodule/Mass"] == 2
    )
    kept = _labels(load_dataset(f"vindr:{root}?out_of_schema=keep_empty"))
    assert kept["img_c"] == () and kept["img_d"] == ()
    # one reader is enough: a marked class overrules another reader's "No finding"
    any_reader = _labels(load_dataset(f"vindr:{root}?min_readers=1"))
    assert any_reader["img_a"] == ("Cardiomegaly", "Pleural Effusion")
    assert any_reader["img_b"] == ("Lung Lesion",) and any_reader["img_d"] == ("Lung Lesion", "Pneumothorax")
    assert "img_c" not in any_reader  # Aortic enlargement only: outside the schema, dropped


def test_vindr_errors(tmp_path):
    root = _write(tmp_path, "train.csv", VINDR_ROWS.replace("img_b,Nodule/Mass", "img_b,Nodule"))
    with pytest.raises(
        DataFormatError, match=r"line 8, column 'class_name': 'Nodule' is not a VinDr-CXR class"
    ):
        load_dataset(f"vindr:{root}")
    with pytest.raises(ValueError, match=r"bad value '4' for option 'min_readers'"):
        load_dataset(f"vindr:{root}?min_readers=4")
    root = _write(tmp_path, "train.csv", VINDR_ROWS)
    with pytest.raises(ValueError, match=r"schema chexpert14 has labels vindr says nothing about: \['Edema'"):
        load_dataset(f"vindr:{root}:chexpert14")


def test_padchest_physician_frontal_and_mapping(tmp_path):
    root = _write(tmp_path, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", PADCHEST_ROWS)
    samples = load_dataset(f"padchest:{root}")
    assert {s.image_path.rsplit("/", 2)[-2] + "/" + s.image_path.rsplit("/", 1)[-1] for s in samples} == {
        "0/a.png",
        "1/c.png",
        "2/f.png",
    }
    assert {s.image_path.rsplit("/", 1)[-1]: s.labels for s in samples} == {
        "a.png": ("Cardiomegaly",),  # 'normal' next to a finding: the finding wins
        "c.png": ("No Finding", "Support Devices"),
        "f.png": ("Pleural Effusion", "Pneumothorax"),
    }
    st = dataset_stats(f"padchest:{root}")
    assert st["filtered"] == {"rows": 7, "not_physician": 1, "not_frontal": 1}
    assert st["rows"] == {"out_of_schema": 1, "no_terms": 1, "normal_conflicts": 1}
    assert st["dropped_by"] == {"out_of_schema": 1, "no_terms": 1}
    assert st["unmapped_terms"] == {"scoliosis": 1, "aortic elongation": 1, "kyphosis": 1}
    everything = load_dataset(f"padchest:{root}?method=all&frontal=false&out_of_schema=no_finding")
    assert len(everything) == 7
    assert {s.view for s in everything} == {"PA", "L", "AP", "AP_horizontal"}


def test_padchest_bad_labels_cell(tmp_path):
    root = _write(tmp_path, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
                  PADCHEST_ROWS.replace("['pneumonia']", "[pneumonia"))  # fmt: skip
    with pytest.raises(DataFormatError, match=r"line 5, column 'Labels': Labels cell '\[pneumonia'"):
        load_dataset(f"padchest:{root}?method=all")


def test_padchest_term_table():
    assert parse_padchest_terms("['Normal', ' pleural  effusion']") == ("normal", "pleural effusion")
    assert parse_padchest_terms("[\"nodule\", 'it\\'s']") == ("nodule", "it's")  # not the fast path
    assert padchest_labels(["pacemaker"]) == (("Support Devices",), "finding")  # not called normal
    assert padchest_labels([]) == ((), "no_terms")
    assert padchest_labels(["normal", "cardiomegaly"], "nih9") == (("Cardiomegaly",), "conflict")
    assert all(t == t.strip().casefold() for t in PADCHEST_TO_CHEXPERT)


@pytest.mark.parametrize("style", ["nih-expert", "vindr", "padchest"])
def test_synthetic_sites_load(tmp_path, style):
    summary = synthesize_any(style, tmp_path, 40, seed=5, shift="site-b", size=32)
    assert summary["images"] == 40
    samples = load_dataset(f"{style}:{tmp_path}")
    assert samples and all(s.dataset == style for s in samples)
    assert all(os.path.isfile(s.image_path) for s in samples)
    st = dataset_stats(f"{style}:{tmp_path}")
    assert sum(st["labels"].values()) > 0
    again = tmp_path / "again"
    synthesize_any(style, again, 40, seed=5, shift="site-b", size=32)
    name = {"nih-expert": "google2019_nih-chest-xray-labels.csv", "vindr": "train.csv"}.get(
        style, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    )
    assert (again / name).read_bytes() == (tmp_path / name).read_bytes()  # same seed, same file
