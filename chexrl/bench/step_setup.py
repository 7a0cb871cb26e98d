"""The fixed configuration and inputs both sides of `chexrl bench step` (and the GPU check's TRL side) run.

Imports neither vLLM nor Ray (nor chexrl's side of the benchmark, which needs both): the GPU check runs
TRL's side on a machine that has neither.
"""

from __future__ import annotations

from pathlib import Path


def bench_config(
    model_dir: str,
    *,
    steps: int,
    warmup: int,
    prompts: int,
    n: int,
    max_tokens: int,
    micro_batch: int,
    max_model_len: int,
    weight_sync: str | None = None,
    gradient_checkpointing: bool = False,
):
    """The fixed configuration both sides run: chexrl's defaults (the paper's sampling, Dr. GRPO and LoRA
    settings) with the benchmark's sizes and EOS ignored. `gradient_checkpointing` is both sides' (TRL's
    GRPOConfig takes it from here): one memory-for-compute trade on both."""
    from chexrl.config import ChexrlConfig, RolloutConfig

    rollout = RolloutConfig(model=model_dir, max_model_len=max_model_len, weight_sync=weight_sync)
    return ChexrlConfig.model_validate(
        {
            "rollout": rollout.model_dump(),
            "sampling": {"n": n, "max_tokens": max_tokens, "ignore_eos": True},
            "grpo": {
                "max_steps": warmup + steps,
                "prompts_per_step": prompts,
                "micro_batch_size": micro_batch,
                "gradient_checkpointing": gradient_checkpointing,
                "save_steps": warmup + steps,  # the one checkpoint comes after the last step's clock
                "eval_steps": warmup + steps,
            },
        }
    )


def prepare(
    work: Path,
    *,
    preset: str | None,
    model: str | None,
    data_dir: str | Path | None,
    images: int,
    image_size: int,
) -> tuple[str, list]:
    """(model_dir, samples): the checkpoint (built under `work` unless given) and `images` MIMIC-format
    samples (synthesized under `work` unless `data_dir` holds a set)."""
    from chexrl.data.loaders import load_dataset
    from chexrl.data.synth import synthesize
    from chexrl.models.tiny import build_model_dir

    if model is None:
        out = work / "model"
        if preset is None:
            model = str(build_model_dir("gemma3", out, seed=0).out)
        else:
            model = str(build_model_dir(out=out, preset=preset, seed=0).out)
    if data_dir is None:
        # the loader keeps frontal views only; the synthetic set mixes in laterals, so write a margin
        data_dir = work / "mimic"
        synthesize("mimic", data_dir, 2 * images + 8, seed=1, size=image_size)
    samples = load_dataset(f"mimic:{data_dir}")
    if len(samples) < images:
        raise RuntimeError(f"{data_dir} holds {len(samples)} frontal images, need {images}")
    return model, samples[:images]
