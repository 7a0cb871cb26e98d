"""Merge a PEFT LoRA adapter into its base and write the result as a new base checkpoint.

The merged model is written like every chexrl checkpoint (`chexrl.models.tiny.write_weights`): the
published safetensors key layout that vLLM 0.32 loads (transformers' own `save_pretrained` writes Gemma3
keys vLLM refuses), in the base's dtype, with config, processor, tokenizer, chat template and generation
config copied from the base. It is written to a temporary sibling directory and renamed into place, so
a crash never leaves a half-written checkpoint under the final name. GRPO's reference policy and the
rollout engine both load it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from chexrl.models.loading import detect_family, load_model, read_config
from chexrl.models.tiny import write_weights

_WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "pytorch_model.bin.index.json")


def merge_adapter(
    base_dir: str | Path, adapter_dir: str | Path, out: str | Path, *, max_shard_size: str = "2GB"
) -> Path:
    """base + adapter -> `out` (replaced atomically if it exists). Merging happens in float32; the
    weights are stored in the base's dtype."""
    import torch
    from peft import PeftModel

    base_dir, out = Path(base_dir), Path(out)
    family = detect_family(base_dir)
    stored_dtype = _stored_dtype(read_config(base_dir))
    model = load_model(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged = merged.to(stored_dtype)
    write_checkpoint(merged, family, base_dir, out, max_shard_size=max_shard_size)
    return out


def write_checkpoint(
    model: Any, family: str, like_dir: str | Path, out: str | Path, *, max_shard_size: str = "2GB"
) -> Path:
    """Write `model`'s weights in the published layout plus every non-weight file of `like_dir`
    (config, processor, tokenizer, chat template, generation config), atomically into `out`."""
    like_dir, out = Path(like_dir), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in like_dir.iterdir():
        if item.is_file() and not any(item.match(pattern) for pattern in _WEIGHT_FILES):
            shutil.copy2(item, tmp / item.name)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    write_weights(model, family, tmp, max_shard_size, tied)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _stored_dtype(config: dict) -> Any:
    """The dtype config.json declares (the checkpoint's own), float32 when it declares none."""
    import torch

    name = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
