"""Gemma3's prebuilt training masks equal the ones transformers builds, element by element, and the
model computes the same logits and gradients with them; models they do not cover are left alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import (
    create_masks_for_vision_model,
    get_block_sequence_ids_for_mask,
)

from chexrl.core.prompts import build_messages
from chexrl.models.attention_masks import gemma3_attention_masks, with_prebuilt_masks
from chexrl.models.loading import load_model, load_processor
from chexrl.models.vllm_check import synthetic_image
from trainer.collate import SFTExample, build_batch, model_inputs

COMPLETIONS = [
    "<think>Enlarged cardiac silhouette. No effusion.</think>\n<solution>Cardiomegaly</solution>",
    "<think>Clear.</think>\n<solution>No Finding</solution>",
    "<think>Blunted left costophrenic angle, no shift.</think>\n<solution>Pleural Effusion</solution>",
]


def _transformers_masks(config, attention_mask, token_type_ids):
    embeds = torch.zeros(*attention_mask.shape, config.hidden_size)
    return create_masks_for_vision_model(
        config=config,
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        past_key_values=None,
        position_ids=None,
        block_sequence_ids=get_block_sequence_ids_for_mask(token_type_ids, device=embeds.device),
    )


def test_masks_equal_transformers_on_two_images_a_row_padding_and_a_short_window():
    config = Gemma3TextConfig(hidden_size=8, sliding_window=3)
    config._attn_implementation = "sdpa"
    # Row 0: text, image (3 tokens), text, image (2 tokens), text, 2 padding. Row 1: image first, no padding.
    token_type_ids = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]])
    attention_mask = torch.tensor([[1] * 8 + [0, 0], [1] * 10])
    ours = gemma3_attention_masks(config, attention_mask, token_type_ids)
    theirs = _transformers_masks(config, attention_mask, token_type_ids)
    assert set(ours) == set(theirs) == {"full_attention", "sliding_attention"}
    for kind in ours:
        assert ours[kind].dtype == theirs[kind].dtype == torch.bool
        assert torch.equal(ours[kind], theirs[kind]), kind
    full, sliding = ours["full_attention"][0, 0], ours["sliding_attention"][0, 0]
    assert full[1, 3] and full[5, 6] and not full[4, 5]  # an image sees itself both ways; text is causal
    assert not full[1, 5] and full[5, 1]  # a later image is the earlier one's future; not vice versa
    assert not full[9, 8] and not full[3, 9]  # padding is never a key
    assert full[7, 0] and not sliding[7, 0]  # the window drops keys 3+ positions back


def test_not_covered_models_get_their_inputs_back(tiny_qwen_dir):
    config = Gemma3TextConfig(hidden_size=8)
    config._attn_implementation = "eager"
    ones = torch.ones(1, 4, dtype=torch.long)
    assert gemma3_attention_masks(config, ones, ones) is None
    qwen = load_model(tiny_qwen_dir, dtype=torch.float32)
    inputs = {"input_ids": ones, "attention_mask": ones, "mm_token_type_ids": ones}
    assert with_prebuilt_masks(qwen, inputs) is inputs


@pytest.fixture(scope="module")
def short_window_gemma3(tiny_gemma3_dir, tmp_path_factory):
    """The tiny Gemma3 with a sliding window of 8, shorter than its sequences, so the sliding layers'
    masks differ from the full ones (the default window, 128, covers the tiny prompts whole)."""
    out = tmp_path_factory.mktemp("gemma3-window-8")
    shutil.copytree(tiny_gemma3_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config["text_config"]["sliding_window"] = 8
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_same_logits_loss_and_gradients_with_prebuilt_masks(short_window_gemma3):
    torch.manual_seed(0)
    model = load_model(short_window_gemma3, dtype=torch.float32).train()
    processor = load_processor(short_window_gemma3)
    examples = [SFTExample(build_messages(), synthetic_image(seed=i), c) for i, c in enumerate(COMPLETIONS)]
    batch = build_batch(processor, examples)
    inputs = model_inputs(batch)
    assert (batch["attention_mask"] == 0).any()  # padded rows are part of the check
    prebuilt = with_prebuilt_masks(model, inputs)
    masks = prebuilt["attention_mask"]
    assert not torch.equal(masks["full_attention"], masks["sliding_attention"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**prebuilt).logits)

    # Gradients of the same function of the logits, masks built by transformers vs prebuilt.
    grads = []
    for forward_inputs in (inputs, prebuilt):
        model.zero_grad()
        model(**forward_inputs, use_cache=False).logits.logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
