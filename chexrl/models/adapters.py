"""Random PEFT LoRA adapters for a checkpoint directory: the paper's LoRA layout (rank 16 on the language
model's q/k/v/o/gate/up/down projections), with non-zero B matrices so the adapter changes the outputs.
Used to test that an engine really applies an adapter, before any training has produced one."""

from __future__ import annotations

from pathlib import Path

from chexrl.models.loading import detect_family, load_model, lora_target_modules


def make_random_lora(
    model_dir: str | Path,
    out: str | Path,
    *,
    rank: int = 16,
    alpha: int = 32,
    seed: int = 0,
    b_std: float = 0.5,
) -> Path:
    """Write a random LoRA adapter for `model_dir` into `out` (adapter_config.json +
    adapter_model.safetensors, as `save_pretrained` writes them); return `out`."""
    import torch
    from peft import LoraConfig, get_peft_model

    family = detect_family(model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_target_modules(family)
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero: an adapter that changes nothing
                param.copy_(torch.randn(param.shape, generator=generator) * b_std)
    out = Path(out)
    peft_model.save_pretrained(str(out))
    return out
