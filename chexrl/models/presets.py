"""Architecture settings for the random-weight checkpoints: a tiny one per family for CPU tests, and the
published dimensions of google/medgemma-4b-it and Qwen/Qwen2.5-VL-3B-Instruct for GPU benchmarks.

Pure data (no torch). `config` holds the keyword arguments of the family's transformers config class,
written as the published config.json writes them; `tokenizer.py` fills in the token ids and `tiny.py`
the vocabulary size when it is None (the tiny tokenizer's length). `processor` holds the image settings.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

FAMILIES: tuple[str, ...] = ("gemma3", "qwen2_5_vl")


@dataclass(frozen=True)
class Preset:
    """One buildable checkpoint shape."""

    name: str
    family: str  # one of FAMILIES
    config: dict[str, Any]  # config class kwargs (text_config / vision_config nested for gemma3)
    processor: dict[str, Any]  # image settings: gemma3 {image_size}, qwen2_5_vl {min_pixels, max_pixels}
    dtype: str = "float32"  # dtype of the written safetensors
    shard_size: str = "2GB"  # max_shard_size of the written safetensors
    notes: str = ""
    tags: tuple[str, ...] = field(default=())


# Gemma3 (MedGemma): SigLIP vision tower (no pooling head), average-pooled to mm_tokens_per_image soft
# tokens, projected into the Gemma3 text model. head_dim 32: the vLLM CPU attention kernel refuses 16.
TINY_GEMMA3 = Preset(
    name="tiny-gemma3",
    family="gemma3",
    config={
        "mm_tokens_per_image": 16,  # 8x8 patches of a 64x64 image, pooled 2x2 -> 4x4
        "text_config": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 4096,
            "sliding_window": 128,
            "layer_types": ["sliding_attention", "full_attention"],
            "rms_norm_eps": 1e-6,
            "vocab_size": None,
        },
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "vision_use_head": False,
        },
    },
    processor={"image_size": 64},
)

# google/medgemma-4b-it (= gemma-3-4b-it's architecture).
MEDGEMMA_4B = Preset(
    name="medgemma-4b",
    family="gemma3",
    config={
        "mm_tokens_per_image": 256,
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 131072,
            "sliding_window": 1024,
            "sliding_window_pattern": 6,
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "rms_norm_eps": 1e-6,
            "vocab_size": 262208,
        },
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 896,
            "patch_size": 14,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "vision_use_head": False,
        },
    },
    processor={"image_size": 896},
    dtype="bfloat16",
)

# Qwen2.5-VL: window-attention ViT (2x2 patch merger) into a Qwen2 text model with M-RoPE.
# mrope_section sums to head_dim / 2 (32 / 2 = 16 here; 128 / 2 = 64 published).
TINY_QWEN2_5_VL = Preset(
    name="tiny-qwen2.5-vl",
    family="qwen2_5_vl",
    config={
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "vocab_size": None,
        "vision_config": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
            "hidden_act": "silu",
        },
    },
    # Any image is resized to 112x112 pixels: 8x8 patches of 14, merged 2x2 -> 16 image tokens.
    processor={"min_pixels": 112 * 112, "max_pixels": 112 * 112},
)

# Qwen/Qwen2.5-VL-3B-Instruct.
QWEN2_5_VL_3B = Preset(
    name="qwen2.5-vl-3b",
    family="qwen2_5_vl",
    config={
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "max_window_layers": 70,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "hidden_act": "silu",
        },
    },
    processor={"min_pixels": 3136, "max_pixels": 12845056},
    dtype="bfloat16",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY_GEMMA3, MEDGEMMA_4B, TINY_QWEN2_5_VL, QWEN2_5_VL_3B)}
TINY_BY_FAMILY: dict[str, str] = {"gemma3": "tiny-gemma3", "qwen2_5_vl": "tiny-qwen2.5-vl"}


def scaled_preset(preset: Preset, *, layers: int | None = None, small_vision: bool = False) -> Preset:
    """`preset` at its real width and vocabulary but `layers` decoder layers and, with `small_vision`, a
    one-layer vision tower at the published width that still yields the published number of image tokens
    (the CPU benchmarks' model: MedGemma-4B's 2,560 hidden and 262,208 vocabulary in 2 layers).

    >>> p = scaled_preset(MEDGEMMA_4B, layers=2, small_vision=True)
    >>> p.config["text_config"]["num_hidden_layers"], p.config["text_config"]["hidden_size"], p.name
    (2, 2560, 'medgemma-4b-2l-sv')
    """
    config = copy.deepcopy(preset.config)
    processor = dict(preset.processor)
    suffix = ""
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        text = config["text_config"] if preset.family == "gemma3" else config
        text["num_hidden_layers"] = layers
        suffix += f"-{layers}l"
    if small_vision:
        vision = config["vision_config"]
        if preset.family == "gemma3":
            # image_size / patch_size = sqrt(mm_tokens_per_image): one patch per image token (no pooling)
            side = math.isqrt(config["mm_tokens_per_image"]) * vision["patch_size"]
            vision.update(num_hidden_layers=1, image_size=side)
            processor["image_size"] = side
        else:
            vision.update(depth=1, fullatt_block_indexes=[0])
            # 256 tokens = 32 x 32 patches of 14 px merged 2 x 2: a 448 x 448 image
            processor = {"min_pixels": 448 * 448, "max_pixels": 448 * 448}
        suffix += "-sv"
    return replace(preset, name=preset.name + suffix, config=config, processor=processor)
