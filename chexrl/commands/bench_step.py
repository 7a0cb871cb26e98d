"""`chexrl bench step`: the GRPO step's time split and TRL's GRPOTrainer on the same configuration."""

from __future__ import annotations

from pathlib import Path

import typer

from chexrl.cli import bench_app
from chexrl.commands.rollout import WeightSyncOpt, check_weight_sync


@bench_app.command("step")
def bench_step_cmd(
    json_path: Path = typer.Option(..., "--json", help="Where to write the figures."),
    steps: int = typer.Option(5, min=1, help="Measured steps (after the warm-up) on each side."),
    warmup: int = typer.Option(2, min=0, help="Steps run first and not measured, on each side."),
    prompts: int | None = typer.Option(
        None, min=1, help="Prompts per step (default: grpo.prompts_per_step)."
    ),
    n: int | None = typer.Option(
        None, min=1, help="Completions per prompt, the GRPO group size (default: sampling.n)."
    ),
    max_tokens: int = typer.Option(64, min=1, help="Tokens per completion (EOS ignored on both sides)."),
    micro_batch: int | None = typer.Option(
        None, min=1, help="Completions per forward/backward on both sides (default: grpo.micro_batch_size)."
    ),
    preset: str | None = typer.Option(
        None, help="Model preset to build (e.g. medgemma-4b, for a GPU); default: the tiny Gemma3."
    ),
    model: Path | None = typer.Option(None, help="An existing checkpoint directory instead of a preset."),
    image_size: int = typer.Option(64, min=32, help="Side of the synthetic X-rays in pixels."),
    max_model_len: int = typer.Option(1024, min=128, help="vLLM context length (prompt + completion)."),
    trl_generation: str = typer.Option(
        "auto", help="TRL's sampler: transformers, vllm-colocate, or auto (vllm-colocate on a GPU)."
    ),
    trl_rounds: int | None = typer.Option(
        None, help="TRL runs, each in a fresh process: 2 = before and after chexrl (default), 1 = after."
    ),
    weight_sync: str | None = WeightSyncOpt,
    work_dir: Path | None = typer.Option(
        None, help="Keep model, data and run files here (default: a temp dir)."
    ),
) -> None:
    """chexrl's GRPO step split (generation, scoring, forward/backward, optimizer, weight sync, other),
    overhead_fraction, and TRL's step time over ours."""
    from chexrl.bench.common import write_json
    from chexrl.bench.step import bench_step, summary_table

    if preset is not None and model is not None:
        raise typer.BadParameter("give --preset or --model, not both")
    if trl_rounds not in (None, 1, 2):
        raise typer.BadParameter("--trl-rounds must be 1 or 2")
    check_weight_sync(weight_sync)
    figures = bench_step(
        steps=steps,
        warmup=warmup,
        prompts=prompts,
        n=n,
        max_tokens=max_tokens,
        micro_batch=micro_batch,
        preset=preset,
        model=str(model) if model is not None else None,
        image_size=image_size,
        max_model_len=max_model_len,
        trl_generation=trl_generation,
        trl_rounds=trl_rounds,
        weight_sync=weight_sync,
        work_dir=work_dir,
    )
    write_json(json_path, figures)
    typer.echo(summary_table(figures))
    typer.echo(f"-> {json_path}")
