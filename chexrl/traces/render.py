"""Render chexrl.core.prompts messages through a model family's chat template (Gemma3, Qwen2.5-VL).

Kept out of chexrl.core because it touches a tokenizer or processor object; the messages themselves are
built by the pure `chexrl.core.prompts.build_messages`.
"""

from __future__ import annotations

from typing import Any


def render_prompt(processor_or_tokenizer: Any, messages: list[dict]) -> str:
    """The prompt text the model sees, ending with the assistant turn's opening (generation prompt).

    Works with an HF processor (its chat template inserts the family's image placeholder tokens for the
    `{"type": "image"}` part) or a tokenizer with a chat template.
    """
    return processor_or_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_training_text(processor_or_tokenizer: Any, messages: list[dict], completion: str) -> str:
    """Prompt plus an assistant turn holding `completion` (an SFT example as one string)."""
    full = [*messages, {"role": "assistant", "content": [{"type": "text", "text": completion}]}]
    return processor_or_tokenizer.apply_chat_template(full, tokenize=False, add_generation_prompt=False)
