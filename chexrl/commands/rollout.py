"""`chexrl bench rollout` and `chexrl bench sync`."""

from __future__ import annotations

from pathlib import Path

import typer

from chexrl.cli import bench_app

ModelOpt = typer.Option(
    None, help="Checkpoint directory; default: the tiny Gemma3 model, built under artifacts/ if missing."
)

WeightSyncOpt = typer.Option(
    None,
    help="How the engine takes each pushed adapter: lora (live LoRA) or merged (folded into the weights);"
    " default: merged on the CPU, lora on a GPU.",
)


def check_weight_sync(weight_sync: str | None) -> None:
    if weight_sync not in (None, "lora", "merged"):
        raise typer.BadParameter("--weight-sync must be lora or merged")


def _rollout_config(model: Path | None, weight_sync: str | None):
    from chexrl.config import RolloutConfig

    check_weight_sync(weight_sync)
    return RolloutConfig(model=_model_dir(model), max_model_len=1024, weight_sync=weight_sync)


def _model_dir(model: Path | None) -> str:
    if model is not None:
        return str(model)
    from chexrl.models.tiny import build_model_dir

    out = Path("artifacts/models/tiny-gemma3")
    if not (out / "config.json").exists():
        build_model_dir("gemma3", out, seed=0)
    return str(out)


@bench_app.command("rollout")
def bench_rollout_cmd(
    json_path: Path = typer.Option(..., "--json", help="Where to write the figures."),
    model: Path | None = ModelOpt,
    prompts: int = typer.Option(8, help="Prompts per batch."),
    n: int | None = typer.Option(None, help="Completions per prompt (default: sampling.n)."),
    max_tokens: int = typer.Option(64, help="Tokens per completion (EOS ignored: equal work everywhere)."),
    repeats: int = typer.Option(5, help="Timed repetitions after one warm-up; the median is reported."),
    weight_sync: str | None = WeightSyncOpt,
) -> None:
    """Tokens/s of one batch through the Ray actor, vLLM in-process and Hugging Face generate."""
    from chexrl.bench.common import write_json
    from chexrl.bench.rollout import bench_rollout
    from chexrl.config import SamplingConfig

    n = SamplingConfig().n if n is None else n
    cfg = _rollout_config(model, weight_sync)
    figures = bench_rollout(cfg, prompts, n, max_tokens, repeats)
    write_json(json_path, figures)
    typer.echo(
        f"actor {figures['actor_tokens_per_s']:.0f} tok/s, in-process {figures['inprocess_tokens_per_s']:.0f} tok/s, "
        f"HF generate {figures['hf_generate_tokens_per_s']:.0f} tok/s; "
        f"actor_over_inprocess {figures['actor_over_inprocess']:.3f} -> {json_path}"
    )


@bench_app.command("sync")
def bench_sync_cmd(
    json_path: Path = typer.Option(..., "--json", help="Where to write the figures."),
    model: Path | None = ModelOpt,
    iterations: int = typer.Option(20, help="Adapter versions pushed."),
    weight_sync: str | None = WeightSyncOpt,
) -> None:
    """Time from handing a new adapter to the first completion produced with it."""
    from chexrl.bench.common import write_json
    from chexrl.bench.rollout import bench_sync

    cfg = _rollout_config(model, weight_sync)
    figures = bench_sync(cfg, iterations)
    write_json(json_path, figures)
    typer.echo(
        f"sync p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, {figures['bytes']} bytes -> {json_path}"
    )
