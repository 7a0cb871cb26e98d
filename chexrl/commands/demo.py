"""`chexrl demo`: `chexrl run` on the embedded chexrl/configs/demo.yaml (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from chexrl.cli import app


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory (models, data, checkpoints, summary)."),
    config: Path | None = typer.Option(
        None, help="Another config instead of the embedded chexrl/configs/demo.yaml."
    ),
    force: bool = typer.Option(False, "--force", help="Rerun every stage, up to date or not."),
) -> None:
    """Pretrain (emulated), SFT, GRPO and evaluate a tiny model on synthetic X-rays, end to end: an alias of
    `chexrl run chexrl/configs/demo.yaml`."""
    import yaml

    from chexrl.commands.run import load_recipe, run_checked
    from chexrl.demo import demo_config_text

    if config is None:
        config = out / "demo.yaml"
        out.mkdir(parents=True, exist_ok=True)
        config.write_text(demo_config_text())
    yaml.safe_load(config.read_text())  # a YAML error names the file before anything runs
    run_checked(load_recipe(config), out, force=force)
