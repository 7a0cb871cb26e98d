"""Load any local Hugging Face checkpoint directory of a supported family: a random-weight build from
`chexrl make-tiny-model` or a real MedGemma / Qwen2.5-VL download. The rest of the system loads models
only through here.

Also owns the published safetensors key layouts: transformers 5 names parameters `model.language_model.*`,
`model.vision_tower.*`, ... in memory; the published checkpoints (and vLLM's loaders) use
`language_model.model.*`, `vision_tower.vision_model.*` (MedGemma) and `model.*`, `visual.*`
(Qwen2.5-VL). `to_published_keys` maps one to the other; transformers maps them back on load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from chexrl.models.presets import FAMILIES

# transformers-5 in-memory prefix -> published checkpoint prefix, first match wins.
_PUBLISHED_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "gemma3": (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    ),
    "qwen2_5_vl": (
        ("model.language_model.", "model."),
        ("model.visual.", "visual."),
        ("lm_head.", "lm_head."),
    ),
}
# A regular expression every key of a published checkpoint of the family matches.
PUBLISHED_KEY_PATTERN: dict[str, re.Pattern[str]] = {
    "gemma3": re.compile(
        r"^(language_model\.model\.(embed_tokens|layers\.\d+|norm)\."
        r"|vision_tower\.vision_model\.(embeddings|encoder\.layers\.\d+|post_layernorm)\."
        r"|multi_modal_projector\.mm_(input_projection_weight$|soft_emb_norm\.))"
    ),
    "qwen2_5_vl": re.compile(
        r"^(model\.(embed_tokens|layers\.\d+|norm)\.|visual\.(patch_embed|blocks\.\d+|merger)\.|lm_head\.)"
    ),
}


def to_published_keys(state_dict: dict[str, Any], family: str, *, tied: bool) -> dict[str, Any]:
    """Rename an in-memory (transformers 5) state dict to the published checkpoint's key layout.

    A tied `lm_head.weight` is left out, as in the published files.
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if tied and key == "lm_head.weight":
            continue
        for old, new in _PUBLISHED_PREFIXES[family]:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        else:
            raise KeyError(f"{family}: no published name for parameter {key!r}")
        out[key] = value
    return out


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    return json.loads(path.read_text())


def detect_family(model_dir: str | Path) -> str:
    """The family of a checkpoint directory, from config.json's model_type ("gemma3" or "qwen2_5_vl")."""
    model_type = read_config(model_dir).get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"{model_dir}: model_type {model_type!r} is not supported; expected one of {FAMILIES}"
        )
    return model_type


def image_token_id(model_dir: str | Path) -> int:
    """The id of the placeholder token each image is expanded into."""
    cfg = read_config(model_dir)
    return int(cfg["image_token_index"] if "image_token_index" in cfg else cfg["image_token_id"])


def load_processor(model_dir: str | Path, **kwargs: Any) -> Any:
    """The family's processor (tokenizer, image processor and chat template) for a directory."""
    from transformers import AutoProcessor

    detect_family(model_dir)
    return AutoProcessor.from_pretrained(str(model_dir), **kwargs)


def load_tokenizer(model_dir: str | Path, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), **kwargs)


def load_model(
    model_dir: str | Path,
    *,
    dtype: Any = None,
    device: str | None = None,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> Any:
    """An `AutoModelForImageTextToText` (Gemma3ForConditionalGeneration or
    Qwen2_5_VLForConditionalGeneration) in eval mode. `dtype` defaults to the checkpoint's own."""
    from transformers import AutoModelForImageTextToText

    detect_family(model_dir)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype or "auto", **kwargs)
    if device is not None:
        model.to(device)
    return model.eval()


def load(model_dir: str | Path, **kwargs: Any) -> tuple[Any, Any]:
    """(model, processor) for a directory; keyword arguments go to `load_model`."""
    return load_model(model_dir, **kwargs), load_processor(model_dir)


def lora_target_modules(family: str) -> str:
    """The language model's attention and MLP projections as a PEFT `target_modules` regex (the vision
    towers have layers of the same names, so they are matched by path). Same for both families.

    >>> import re
    >>> bool(re.fullmatch(lora_target_modules("gemma3"), "model.language_model.layers.0.mlp.up_proj"))
    True
    >>> bool(re.fullmatch(lora_target_modules("gemma3"), "model.vision_tower.encoder.layers.0.self_attn.q_proj"))
    False
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    return r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
