"""The real-size presets (checked on the meta device: nothing is allocated or written) and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chexrl.models.tiny import build_tokenizer, count_parameters, make_config, resolve_preset


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [
        ("medgemma-4b", 4.25e9, 4.35e9),
        ("qwen2.5-vl-3b", 3.70e9, 3.80e9),
        ("tiny-gemma3", 3e5, 5e6),
        ("tiny-qwen2.5-vl", 3e5, 5e6),
    ],
)
def test_parameter_counts(preset, low, high):
    chosen = resolve_preset(None, preset)
    n = count_parameters(make_config(chosen, build_tokenizer(chosen)), chosen.family)
    assert low < n < high, n


def test_medgemma_dimensions():
    chosen = resolve_preset(None, "medgemma-4b")
    config = make_config(chosen, build_tokenizer(chosen))
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (2560, 34, 10240)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (8, 4, 256)
    assert text.vocab_size == 262208
    assert text.layer_types.count("full_attention") == 34 // 6  # every sixth layer is global
    assert (vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size) == (1152, 27, 4304)
    assert (vision.image_size, vision.patch_size) == (896, 14)
    assert config.mm_tokens_per_image == 256
    assert chosen.dtype == "bfloat16"


def test_qwen_dimensions():
    chosen = resolve_preset(None, "qwen2.5-vl-3b")
    config = make_config(chosen, build_tokenizer(chosen))
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (2048, 36, 11008)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (16, 2, 151936)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (32, 1280, 2048)
    assert config.tie_word_embeddings


def test_resolve_preset_errors():
    with pytest.raises(ValueError, match="unknown family"):
        resolve_preset("llama", None)
    with pytest.raises(ValueError, match="is a gemma3 model"):
        resolve_preset("qwen2_5_vl", "medgemma-4b")


def test_cli_make_tiny_model(tmp_path):
    from chexrl.cli import app

    result = CliRunner().invoke(
        app, ["make-tiny-model", "--family", "qwen2_5_vl", "--out", str(tmp_path), "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "tiny-qwen2.5-vl" in result.output
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    bad = CliRunner().invoke(app, ["make-tiny-model", "--family", "llama", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0
