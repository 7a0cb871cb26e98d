"""NIH -> CheXpert mapping, out-of-schema and uncertainty policies (chexrl/core/label_mapping.py)."""

import math

import pytest

from chexrl.core.label_mapping import (
    NIH14,
    NIH_TO_CHEXPERT,
    map_nih_findings,
    normalize_uncertain_policy,
    order_labels,
    resolve_uncertain,
)


def test_mass_and_nodule_become_one_lung_lesion():
    assert map_nih_findings("Mass|Nodule", "nih9") == ("Lung Lesion",)
    assert map_nih_findings("Nodule", "nih10") == ("Lung Lesion",)


def test_effusion_only_in_nih10_and_chexpert14():
    assert map_nih_findings("Effusion|Atelectasis", "nih9") == ("Atelectasis",)
    assert map_nih_findings("Effusion|Atelectasis", "nih10") == ("Atelectasis", "Pleural Effusion")
    assert map_nih_findings("Effusion", "chexpert14") == ("Pleural Effusion",)
    assert map_nih_findings("Effusion", "nih9") is None  # only out-of-schema findings -> default drop


def test_exact_names_no_substring_matching():
    assert map_nih_findings("Pleural_Thickening", "nih9") == ("Pleural Other",)
    for trap in ("Thickening", "Pleural", "Mass Effect", "pneumonia", "Pleural Thickening"):
        with pytest.raises(ValueError, match="unknown NIH finding"):
            map_nih_findings(trap, "nih9")


def test_out_of_schema_policies():
    assert map_nih_findings("Infiltration", "nih9") is None
    assert map_nih_findings("Infiltration|Emphysema", "nih9", "no_finding") == ("No Finding",)
    assert map_nih_findings("Infiltration", "nih9", "keep_empty") == ()
    assert map_nih_findings("Infiltration|Edema", "nih9") == ("Edema",)  # mixed: keep what maps
    with pytest.raises(ValueError):
        map_nih_findings("Infiltration", "nih9", "whatever")


def test_no_finding_and_whitespace():
    assert map_nih_findings("No Finding", "nih10") == ("No Finding",)
    assert map_nih_findings(" Hernia | Pneumothorax ", "nih9") == ("Pneumothorax",)


def test_all_14_nih_findings_covered():
    assert set(NIH_TO_CHEXPERT) == set(NIH14) and len(NIH14) == 14
    unmapped = {k for k, v in NIH_TO_CHEXPERT.items() if v is None}
    assert unmapped == {"Infiltration", "Emphysema", "Fibrosis", "Hernia"}


@pytest.mark.parametrize(
    ("policy", "expected"), [("zeros", False), ("U-Ones", True), ("u-ignore", None), ("ones", True)]
)
def test_uncertain_policies(policy, expected):
    assert resolve_uncertain(-1.0, policy) is expected
    assert resolve_uncertain(1.0, policy) is True
    assert resolve_uncertain(0.0, policy) is False
    assert resolve_uncertain(math.nan, policy) is False


def test_bad_policy_and_order():
    with pytest.raises(ValueError):
        normalize_uncertain_policy("u-maybe")
    assert order_labels(["Support Devices", "No Finding", "Atelectasis"], "chexpert14") == (
        "Atelectasis",
        "Support Devices",
    )
    assert order_labels(["Support Devices"], "nih9") == ("No Finding",)  # not in the schema
