"""The tiny checkpoints: published key layout, loading back in transformers with identical outputs,
a forward pass and generation on an image with a chat-template prompt, seeds and shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from chexrl.models.loading import PUBLISHED_KEY_PATTERN, detect_family, image_token_id, load
from chexrl.models.tiny import build_model_dir, build_tokenizer, make_config, resolve_preset
from chexrl.models.vllm_check import synthetic_image


def _keys(model_dir: Path) -> set[str]:
    keys: set[str] = set()
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            keys |= set(f.keys())
    return keys


def _inputs(model_dir: Path, processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "List the findings."}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[synthetic_image()], return_tensors="pt")


def test_detect_family(tiny_gemma3_dir, tiny_qwen_dir, tmp_path):
    assert detect_family(tiny_gemma3_dir) == "gemma3"
    assert detect_family(tiny_qwen_dir) == "qwen2_5_vl"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not supported"):
        detect_family(tmp_path)


def test_gemma3_published_key_layout(tiny_gemma3_dir):
    keys = _keys(tiny_gemma3_dir)
    assert all(PUBLISHED_KEY_PATTERN["gemma3"].match(k) for k in keys), keys
    for key in (  # names as in google/medgemma-4b-it's safetensors index
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.layers.1.mlp.gate_proj.weight",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.weight",
        "vision_tower.vision_model.post_layernorm.weight",
        "multi_modal_projector.mm_input_projection_weight",
        "multi_modal_projector.mm_soft_emb_norm.weight",
    ):
        assert key in keys
    assert not any(k.startswith(("model.", "lm_head", "language_model.lm_head")) for k in keys)  # tied


def test_qwen_published_key_layout(tiny_qwen_dir):
    keys = _keys(tiny_qwen_dir)
    assert all(PUBLISHED_KEY_PATTERN["qwen2_5_vl"].match(k) for k in keys), keys
    for key in (  # names as in Qwen/Qwen2.5-VL-3B-Instruct's safetensors index
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.1.mlp.down_proj.weight",
        "visual.patch_embed.proj.weight",
        "visual.blocks.0.attn.qkv.weight",
        "visual.blocks.1.mlp.gate_proj.bias",
        "visual.merger.ln_q.weight",
        "visual.merger.mlp.2.weight",
    ):
        assert key in keys
    assert "lm_head.weight" not in keys  # tied, as the 3B


def test_loads_back_identically_and_generates(tiny_model_dir):
    model, processor = load(tiny_model_dir, dtype=torch.float32)
    family = detect_family(tiny_model_dir)
    inputs = _inputs(tiny_model_dir, processor)
    n_image_tokens = int((inputs["input_ids"] == image_token_id(tiny_model_dir)).sum())
    assert n_image_tokens == 16

    preset = resolve_preset(family, None)
    reference = _reference_model(preset, family)
    with torch.no_grad():
        logits = model(**inputs).logits
        expected = reference(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)  # every weight came back, unchanged
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


def _reference_model(preset, family):
    from chexrl.models.tiny import _random_model

    config = make_config(preset, build_tokenizer(preset))
    return _random_model(config, family, seed=0, dtype=torch.float32)


def test_no_missing_or_unexpected_keys(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    _, info = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}


def test_image_settings_match_the_model(tiny_gemma3_dir):
    config = json.loads((tiny_gemma3_dir / "config.json").read_text())
    processor = json.loads((tiny_gemma3_dir / "processor_config.json").read_text())
    assert processor["image_seq_length"] == config["mm_tokens_per_image"] == 16
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]


def test_same_seed_same_bytes(tiny_gemma3_dir, tmp_path):
    again = build_model_dir("gemma3", tmp_path / "again", seed=0).out
    other = build_model_dir("gemma3", tmp_path / "other", seed=1).out
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert (again / name).read_bytes() == (tiny_gemma3_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_sharded_checkpoint_loads(tiny_qwen_dir, tmp_path):
    sharded = build_model_dir("qwen2_5_vl", tmp_path / "sharded", seed=0, max_shard_size="300KB").out
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert set(index["weight_map"]) == _keys(tiny_qwen_dir)
    model, processor = load(sharded, dtype=torch.float32)
    reference, _ = load(tiny_qwen_dir, dtype=torch.float32)
    inputs = _inputs(sharded, processor)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=0)
