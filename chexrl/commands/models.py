"""`chexrl make-tiny-model`: write a random-weight checkpoint of a real architecture (tiny for CPU tests,
or a published size for GPU benchmarks). The building lives in chexrl.models.tiny."""

from __future__ import annotations

from pathlib import Path

import typer

from chexrl.cli import app


@app.command("make-tiny-model")
def make_tiny_model(
    out: Path = typer.Option(..., "--out", help="Directory to write the checkpoint into."),
    family: str = typer.Option(None, "--family", help="gemma3 (MedGemma) or qwen2_5_vl (Qwen2.5-VL)."),
    preset: str = typer.Option(
        None, "--preset", help="medgemma-4b or qwen2.5-vl-3b: the published dimensions, bf16, sharded."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights (same seed, same bytes)."),
    max_shard_size: str = typer.Option(None, "--max-shard-size", help="Safetensors shard size, e.g. 2GB."),
) -> None:
    """Write a random-weight MedGemma or Qwen2.5-VL checkpoint that loads in transformers and vLLM."""
    from chexrl.models.presets import PRESETS
    from chexrl.models.tiny import build_model_dir

    if family is None and preset is None:
        raise typer.BadParameter("give --family gemma3|qwen2_5_vl or --preset " + "|".join(PRESETS))
    try:
        result = build_model_dir(family, out, seed=seed, preset=preset, max_shard_size=max_shard_size)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(
        f"wrote {result.preset} ({result.family}) to {result.out}: {result.n_params:,} parameters, "
        f"vocab {result.vocab_size}, {result.seconds:.1f} s"
    )
