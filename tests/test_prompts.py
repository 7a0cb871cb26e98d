"""The prompt library: every variant and SFT format builds image-first messages listing every label."""

from __future__ import annotations

import pytest

from chexrl.core import prompts as p
from chexrl.core.parsing import parse_completion
from chexrl.core.schemas import CHEXPERT14, SCHEMAS

ALL_NAMES = sorted(set(p.PROMPTS) | set(p.SFT_FORMATS))


def test_the_papers_nine_variants_and_four_formats():
    assert p.VARIANT_NAMES == (
        "reasoning_a",
        "narrative",
        "self_check",
        "hypothesis",
        "reasoning_b",
        "reasoning_c",
        "reasoning_d",
        "reasoning_e",
        "reasoning_f",
    )
    assert p.FORMAT_NAMES == ("only_label", "free_reasoning", "reasoning_narrative", "reasoning_a")
    assert p.DEFAULT_PROMPT == "free_reasoning" and p.DEFAULT_PROMPT in p.SFT_FORMATS
    assert all(p.PROMPTS[name].cue for name in p.VARIANT_NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_messages_have_image_first_and_list_all_labels(name):
    messages = p.build_messages(name)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user[0] == {"type": "image"}
    assert user[1]["type"] == "text"
    text = user[1]["text"]
    for label in CHEXPERT14:
        assert f"- {label}\n" in text + "\n"
    assert "<think>" in text and "</think>" in text
    assert "<solution>" in text and "</solution>" in text
    assert "exactly one <think>...</think> block" in text


@pytest.mark.parametrize("schema", ["nih9", "nih10"])
def test_other_schemas_list_only_their_labels(schema):
    text = p.build_messages("reasoning_d", schema=schema)[1]["content"][1]["text"]
    for label in SCHEMAS[schema].labels:
        assert f"- {label}\n" in text + "\n"
    assert "- Support Devices\n" not in text + "\n"


def test_reasoning_a_has_the_twelve_steps_in_order():
    text = p.instruction_text("reasoning_a")
    positions = [text.index(f"\n{i}. ") for i in range(1, 13)]
    assert positions == sorted(positions)
    for anchor in (
        "Technique",
        "Support devices",
        "trachea",
        "Mediastinum",
        "Heart size",
        "Hila",
        "zone by zone",
        "costophrenic",
        "Pneumothorax check",
        "Diaphragm",
        "Bones",
        "Soft tissues",
    ):
        assert anchor in text


def test_example_solution_in_contract_parses():
    text = p.output_contract(CHEXPERT14)
    start = text.index("e.g. ") + 5
    example = text[start : text.index("</solution>", start) + len("</solution>")]
    parsed = parse_completion("<think></think>" + example, SCHEMAS["chexpert14"])
    assert parsed.valid and parsed.labels == CHEXPERT14[:2]


def test_sft_formats_point_at_existing_prompts():
    for fmt in p.SFT_FORMATS.values():
        assert fmt.prompt in p.PROMPTS
        assert p.get_prompt(fmt.name) is p.PROMPTS[fmt.prompt]
    with pytest.raises(ValueError, match="unknown prompt"):
        p.get_prompt("nope")


def test_openai_messages_replace_the_image_part():
    out = p.to_openai_messages(p.build_messages("narrative"), "data:image/png;base64,AAAA")
    assert out[1]["content"][0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert out[1]["content"][1]["text"] == p.instruction_text("narrative")


def test_teacher_instruction_gives_gold_labels_and_hides_them():
    text = p.teacher_instruction(("Cardiomegaly", "Edema"), "reasoning_a")
    assert "Cardiomegaly, Edema" in text
    assert "as if you had NOT been told the labels" in text
    assert "12." in text  # the format's style block
