"""Build a random-weight checkpoint directory of a real architecture: config, safetensors in the
published key layout, tokenizer, processor, chat template and generation config. The result loads with
transformers (`chexrl.models.loading`) and with vLLM (image input, LoRA).

`build_model_dir("gemma3", out)` writes the tiny MedGemma-shaped model (about a million parameters, a
couple of seconds); `build_model_dir(out=..., preset="medgemma-4b")` writes the published dimensions in
bfloat16, sharded. The same seed gives byte-identical files.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexrl.models.loading import to_published_keys
from chexrl.models.presets import PRESETS, TINY_BY_FAMILY, Preset
from chexrl.models.tokenizer import build_gemma3_tokenizer, build_qwen_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # Qwen2.5-VL's image normalisation (OpenAI CLIP)
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class BuildResult:
    """What `build_model_dir` wrote."""

    out: Path
    preset: str
    family: str
    n_params: int
    vocab_size: int
    seconds: float


def resolve_preset(family: str | None, preset: str | None) -> Preset:
    """The preset named, or the family's tiny one; a family that contradicts the preset is an error."""
    if preset is None:
        if family not in TINY_BY_FAMILY:
            raise ValueError(f"unknown family {family!r}; expected one of {sorted(TINY_BY_FAMILY)}")
        return PRESETS[TINY_BY_FAMILY[family]]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    chosen = PRESETS[preset]
    if family is not None and family != chosen.family:
        raise ValueError(f"preset {preset!r} is a {chosen.family} model, not {family}")
    return chosen


def build_tokenizer(preset: Preset) -> Any:
    return build_gemma3_tokenizer() if preset.family == "gemma3" else build_qwen_tokenizer()


def make_config(preset: Preset, tokenizer: Any) -> Any:
    """The transformers config of a preset, with the token ids of `tokenizer`."""
    ids = tokenizer.convert_tokens_to_ids
    kwargs = copy.deepcopy(preset.config)
    if preset.family == "gemma3":
        from transformers import Gemma3Config

        text = kwargs["text_config"]
        text["vocab_size"] = text["vocab_size"] or len(tokenizer)
        text.update(
            pad_token_id=ids("<pad>"),
            bos_token_id=ids("<bos>"),
            eos_token_id=[ids("<eos>"), ids("<end_of_turn>")],
        )
        return Gemma3Config(
            **kwargs,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
            eos_token_id=[ids("<eos>"), ids("<end_of_turn>")],
            initializer_range=0.02,
        )
    from transformers import Qwen2_5_VLConfig

    kwargs["vocab_size"] = kwargs["vocab_size"] or len(tokenizer)
    return Qwen2_5_VLConfig(
        **kwargs,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vision_token_id=ids("<|vision_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        initializer_range=0.02,
    )


def make_processor(preset: Preset, tokenizer: Any, config: Any) -> Any:
    """The family's processor, with the published image settings scaled to the preset."""
    if preset.family == "gemma3":
        from transformers import Gemma3ImageProcessor, Gemma3Processor

        side = preset.processor["image_size"]
        image_processor = Gemma3ImageProcessor(
            size={"height": side, "width": side},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            resample=2,  # bilinear
            do_pan_and_scan=False,
        )
        return Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
            image_seq_length=config.mm_tokens_per_image,  # must equal the model's
        )
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    lo, hi = preset.processor["min_pixels"], preset.processor["max_pixels"]
    vision = config.vision_config
    common = {
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.spatial_merge_size,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }
    image_processor = Qwen2VLImageProcessor(
        min_pixels=lo, max_pixels=hi, size={"shortest_edge": lo, "longest_edge": hi}, **common
    )
    video_processor = Qwen2VLVideoProcessor(**common)  # the processor refuses None
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )


def _model_class(family: str) -> Any:
    import transformers

    return {
        "gemma3": transformers.Gemma3ForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    }[family]


def count_parameters(config: Any, family: str) -> int:
    """Parameter count of the architecture without allocating it (meta device); tied weights once."""
    import torch

    with torch.device("meta"):
        model = _model_class(family)(copy.deepcopy(config))
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def _random_model(config: Any, family: str, seed: int, dtype: Any) -> Any:
    import torch

    default = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        model = _model_class(family)(copy.deepcopy(config))
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def _shards(state: dict[str, Any], max_bytes: int) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    return shards


def _parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    return int(float(text[:-2]) * units[text[-2:].upper()])


def write_weights(model: Any, family: str, out: Path, shard_size: str, tied: bool) -> None:
    """Write the state dict under its published names, as the published files: one model.safetensors, or
    model-0000i-of-0000n.safetensors shards with a model.safetensors.index.json."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in to_published_keys(model.state_dict(), family, tied=tied).items()}
    shards = _shards(state, _parse_size(shard_size))
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=metadata)
        return
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata=metadata)
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _generation_config(config: Any, family: str) -> dict[str, Any]:
    text = config.text_config
    if family == "gemma3":
        return {
            "bos_token_id": text.bos_token_id,
            "eos_token_id": text.eos_token_id,
            "pad_token_id": text.pad_token_id,
        }
    return {
        "bos_token_id": text.bos_token_id,
        "eos_token_id": [text.eos_token_id, text.bos_token_id],  # <|im_end|>, <|endoftext|>
        "pad_token_id": text.pad_token_id,
    }


def build_model_dir(
    family: str | None = None,
    out: str | Path = "tiny-model",
    *,
    seed: int = 0,
    preset: str | Preset | None = None,
    max_shard_size: str | None = None,
) -> BuildResult:
    """Write a random-weight checkpoint of `preset` (a name or a Preset, e.g. `scaled_preset(...)`;
    default: the family's tiny one) into `out`.
    `max_shard_size` (e.g. "200KB", "2GB") overrides the preset's safetensors shard size."""
    import torch

    start = time.perf_counter()
    chosen = preset if isinstance(preset, Preset) else resolve_preset(family, preset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(chosen)
    config = make_config(chosen, tokenizer)
    dtype = getattr(torch, chosen.dtype)
    config.dtype = chosen.dtype
    config.architectures = [_model_class(chosen.family).__name__]  # vLLM picks its model class by this
    model = _random_model(config, chosen.family, seed, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    tied = bool(config.tie_word_embeddings)

    config.save_pretrained(out)
    write_weights(model, chosen.family, out, max_shard_size or chosen.shard_size, tied)
    (out / "generation_config.json").write_text(
        json.dumps(_generation_config(config, chosen.family), indent=2) + "\n"
    )
    make_processor(chosen, tokenizer, config).save_pretrained(out)
    del model
    return BuildResult(
        out=out,
        preset=chosen.name,
        family=chosen.family,
        n_params=n_params,
        vocab_size=len(tokenizer),
        seconds=time.perf_counter() - start,
    )
