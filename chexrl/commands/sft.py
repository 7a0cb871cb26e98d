"""`chexrl sft` (LoRA SFT on teacher traces, then the merged checkpoint) and `chexrl pretrain` (the demo's
emulated medical pretraining of a tiny random model). Settings come from the `sft:` / `pretrain:`
sections of a YAML config (chexrl/config.py); the options override its paths."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from chexrl.cli import app


def _config(config: Path | None):
    from chexrl.config import ChexrlConfig, load_config

    if config is None:
        return ChexrlConfig()
    try:
        return load_config(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc


@app.command("sft")
def sft_cmd(
    config: Path | None = typer.Option(None, "--config", help="YAML run configuration (its sft: section)."),
    model: str | None = typer.Option(None, "--model", help="Base checkpoint directory (sft.model)."),
    traces: Path | None = typer.Option(None, "--traces", help="Teacher-trace JSONL (sft.traces)."),
    val_traces: Path | None = typer.Option(None, "--val-traces", help="Validation traces (sft.val_traces)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (sft.out)."),
) -> None:
    """LoRA SFT with the paper's settings; writes adapter/, merged/, history.json and TensorBoard scalars."""
    from chexrl.traces.store import read_jsonl
    from trainer.sft import run_sft

    cfg = _config(config).sft
    updates = {
        k: str(v)
        for k, v in {"model": model, "traces": traces, "val_traces": val_traces, "out": out}.items()
        if v
    }
    cfg = cfg.model_copy(update=updates)
    missing = [k for k in ("model", "traces") if getattr(cfg, k) is None]
    if missing:
        raise typer.BadParameter(f"set sft.{', sft.'.join(missing)} (config) or the matching options")
    records = read_jsonl(cfg.traces)
    val = read_jsonl(cfg.val_traces) if cfg.val_traces else None
    result = run_sft(cfg, records, val, cfg.model, cfg.out)
    h = result.history
    summary = {
        "adapter": str(result.adapter_dir),
        "merged": str(result.merged_dir) if result.merged_dir else None,
        "best_epoch": h["best_epoch"],
        "early_stop_epoch": h["early_stop_epoch"],
        "epochs": [{k: round(v, 4) for k, v in e.items()} for e in h["epochs"]],
        "seconds": round(h["seconds"], 1),
    }
    typer.echo(json.dumps(summary, indent=2))


@app.command("pretrain")
def pretrain_cmd(
    config: Path | None = typer.Option(
        None, "--config", help="YAML run configuration (its pretrain: section)."
    ),
    model: str | None = typer.Option(None, "--model", help="Random-weight checkpoint (pretrain.model)."),
    data: str | None = typer.Option(None, "--data", help="Pretraining pool, a dataset spec (pretrain.data)."),
    out: Path | None = typer.Option(None, "--out", help="Output checkpoint directory (pretrain.out)."),
) -> None:
    """Emulated medical pretraining (demo): full fine-tuning of a tiny model on a separate synthetic pool."""
    from chexrl.data.loaders import load_dataset
    from trainer.pretrain import run_pretrain

    cfg = _config(config).pretrain
    cfg = cfg.model_copy(
        update={k: str(v) for k, v in {"model": model, "data": data, "out": out}.items() if v}
    )
    if cfg.model is None or cfg.data is None:
        raise typer.BadParameter("set pretrain.model and pretrain.data (config) or --model and --data")
    samples = load_dataset(cfg.data)
    written = run_pretrain(cfg, samples, cfg.model, cfg.out)
    typer.echo((Path(written) / "pretrain_history.json").read_text())
