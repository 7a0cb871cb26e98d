"""The merged SFT checkpoint: published key layout, the PEFT model's logits, and a vLLM engine loads it
and generates from an image prompt."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from chexrl.core.prompts import build_messages
from chexrl.models.loading import PUBLISHED_KEY_PATTERN, load_model, load_processor
from chexrl.models.vllm_check import synthetic_image
from trainer.collate import SFTExample, build_batch, model_inputs


def trainable_tag_ids(tokenizer) -> list[int]:
    from chexrl.models.tokenizer import TAGS
    from trainer.lora import single_token_ids

    return single_token_ids(tokenizer, list(TAGS))


def test_merged_checkpoint_equals_peft_model(sft_run, tiny_gemma3_dir):
    from peft import PeftModel

    result, _ = sft_run
    merged_dir = result.merged_dir
    assert merged_dir is not None and not (merged_dir.parent / "merged.tmp").exists()
    with safe_open(str(merged_dir / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert all(PUBLISHED_KEY_PATTERN["gemma3"].match(k) for k in keys)
        merged_q = f.get_tensor("language_model.model.layers.0.self_attn.q_proj.weight")
    with safe_open(str(tiny_gemma3_dir / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(keys)
        assert not torch.equal(
            merged_q, f.get_tensor("language_model.model.layers.0.self_attn.q_proj.weight")
        )
    for name in ("config.json", "generation_config.json", "tokenizer.json", "processor_config.json"):
        assert (merged_dir / name).is_file(), name
    # the trained tag rows of the (tied) embedding are merged in; every other row is the base's
    embed_key = "language_model.model.embed_tokens.weight"
    with safe_open(str(merged_dir / "model.safetensors"), "pt") as f:
        merged_embed = f.get_tensor(embed_key)
    with safe_open(str(tiny_gemma3_dir / "model.safetensors"), "pt") as f:
        base_embed = f.get_tensor(embed_key)
    tag_ids = trainable_tag_ids(load_processor(merged_dir).tokenizer)
    changed = (merged_embed != base_embed).any(dim=1).nonzero().flatten().tolist()
    assert changed == sorted(tag_ids)

    processor = load_processor(merged_dir)
    batch = build_batch(processor, [SFTExample(build_messages(), synthetic_image(), "<think>x</think>")])
    peft_model = PeftModel.from_pretrained(
        load_model(tiny_gemma3_dir, dtype=torch.float32), str(result.adapter_dir)
    )
    with torch.no_grad():
        expected = peft_model.eval()(**model_inputs(batch)).logits
        with peft_model.disable_adapter():
            base = peft_model(**model_inputs(batch)).logits
        got = load_model(merged_dir)(**model_inputs(batch)).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (expected - base).abs().max() > 1e-3  # the adapter matters, so the check means something


@pytest.mark.slow
def test_vllm_serves_merged_checkpoint(sft_run, tmp_path):
    result, _ = sft_run
    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "chexrl.models.vllm_check",
        str(result.merged_dir),
        "--json",
        str(report_path),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads(report_path.read_text())
    assert len(report["base"]) == 4 and all(len(tokens) > 0 for tokens in report["base"])
