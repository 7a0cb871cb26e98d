"""The completion parser: validity, label matching, unknown and duplicate reporting."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chexrl.core.parsing import format_completion, parse_completion, split_labels
from chexrl.core.schemas import CHEXPERT14, NIH9, NIH10, SCHEMAS

CX = SCHEMAS["chexpert14"]


def test_schemas_have_the_papers_labels():
    assert len(CHEXPERT14) == 14 and len(set(CHEXPERT14)) == 14
    assert NIH9 == (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Lung Lesion",
        "No Finding",
        "Pleural Other",
        "Pneumonia",
        "Pneumothorax",
    )
    assert set(NIH10) == set(NIH9) | {"Pleural Effusion"}
    assert set(NIH10) <= set(CHEXPERT14)


def test_valid_completion_with_all_separators_and_case():
    text = "<think>Big heart.</think>\n<solution>cardiomegaly;  PLEURAL effusion\nSupport Devices, edema</solution>"
    p = parse_completion(text, CX)
    assert p.valid and p.error is None
    assert p.labels == ("Cardiomegaly", "Pleural Effusion", "Support Devices", "Edema")
    assert p.think == "Big heart."
    assert p.unknown == () and p.duplicates == () and p.outside_text == ""


def test_unknown_and_duplicate_labels_are_reported_not_kept():
    p = parse_completion("<think>t</think><solution>Edema, Infiltration, edema, EDEMA, Mass</solution>", CX)
    assert p.valid
    assert p.labels == ("Edema",)
    assert p.unknown == ("Infiltration", "Mass")
    assert p.duplicates == ("Edema", "Edema")


def test_schema_filtering_for_nih():
    p = parse_completion(
        "<think>t</think><solution>Support Devices, Pneumothorax</solution>", SCHEMAS["nih9"]
    )
    assert p.labels == ("Pneumothorax",)
    assert p.unknown == ("Support Devices",)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("no tags at all", "expected exactly one <think> block, found 0"),
        (
            "<think>a</think><think>b</think><solution>Edema</solution>",
            "expected exactly one <think> block, found 2",
        ),
        (
            "<think>a</think><solution>Edema</solution><solution>x</solution>",
            "expected exactly one <solution> block, found 2",
        ),
        (
            "<solution>Edema</solution><think>a</think>",
            "expected <think>...</think> followed by <solution>...</solution>",
        ),
        (
            "<think>a<solution>Edema</solution></think>",
            "expected <think>...</think> followed by <solution>...</solution>",
        ),
        (
            "<think>a</think><solution>Edema",
            "expected exactly one <solution> block, found 1 <solution> and 0 </solution>",
        ),
    ],
)
def test_invalid_completions_predict_nothing(text, error):
    p = parse_completion(text, CX)
    assert not p.valid
    assert p.error == error
    assert p.labels == () and p.label_set == frozenset()


def test_outside_text_is_reported_but_valid():
    p = parse_completion("Sure! <think>t</think> and <solution>Edema</solution> bye", CX)
    assert p.valid and p.outside_text == "Sure! and bye"


def test_bullets_and_full_stops():
    assert split_labels("- Edema.\n* Cardiomegaly\n1. Fracture\n2) Pneumonia") == [
        "Edema",
        "Cardiomegaly",
        "Fracture",
        "Pneumonia",
    ]


@given(
    labels=st.lists(st.sampled_from(CHEXPERT14), unique=True, max_size=14),
    think=st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=200),
)
def test_format_then_parse_round_trips(labels, think):
    p = parse_completion(format_completion(think, labels), CX)
    assert p.valid
    assert p.labels == tuple(labels)
    assert p.unknown == () and p.duplicates == ()


@given(st.text(max_size=400))
def test_parser_never_raises_and_invalid_means_empty(text):
    p = parse_completion(text, CX)
    assert set(p.labels) <= set(CHEXPERT14)
    if not p.valid:
        assert p.labels == () and p.error
