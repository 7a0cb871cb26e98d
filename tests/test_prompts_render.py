"""Prompts rendered through each family's real chat template (tiny checkpoints' processors)."""

from __future__ import annotations

import pytest

from chexrl.core.prompts import build_messages
from chexrl.traces.render import render_prompt, render_training_text
from chexrl.traces.teacher import template_trace


@pytest.mark.parametrize("fixture", ["tiny_gemma3_dir", "tiny_qwen_dir"])
def test_render_through_the_family_chat_template(fixture, request):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(request.getfixturevalue(fixture))
    messages = build_messages("reasoning_a")
    text = render_prompt(processor, messages)
    assert "Atelectasis" in text and "12. Soft tissues" in text
    assert "You are an expert thoracic radiologist" in text
    image_marker = "<start_of_image>" if fixture == "tiny_gemma3_dir" else "<|vision_start|>"
    assert image_marker in text
    assert text.index(image_marker) < text.index("Classify this chest X-ray.")  # image first
    assert text.rstrip().endswith(("<start_of_turn>model", "<|im_start|>assistant"))

    completion = template_trace(["Edema"], "free_reasoning", seed=0)
    full = render_training_text(processor, messages, completion)
    assert full.startswith(text) and completion in full
