"""`chexrl run CONFIG`: the whole recipe (data, traces, SFT, GRPO, evaluation, report) as named stages with
manifests, after a preflight of everything it needs (`--check` runs only the preflight). docs/recipe.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from chexrl.cli import app
from chexrl.pipeline.runner import STAGE_NAMES

STAGES_HELP = ", ".join(STAGE_NAMES)


def load_recipe(config: Path):
    from chexrl.config import load_config

    try:
        cfg = load_config(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG") from exc
    if cfg.recipe is None:
        raise typer.BadParameter(
            f"{config} has no recipe: section (see chexrl/configs/paper-medgemma-4b.yaml)",
            param_hint="CONFIG",
        )
    return cfg


def print_checks(checks: list, seconds: float) -> None:
    """The preflight as a rich table: every check, failed ones first, each with its fix."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chexrl preflight ({seconds:.1f} s)", show_lines=False)
    for column in ("", "check", "subject", "found", "fix"):
        table.add_column(column, overflow="fold")
    for c in sorted(checks, key=lambda c: c.ok):
        table.add_row("ok" if c.ok else "[bold red]FAIL[/]", c.check, c.subject, c.detail, c.fix)
    Console(width=160).print(table)
    failed = sum(not c.ok for c in checks)
    typer.echo(f"{failed} problem(s)" if failed else "all checks passed")


def run_preflight(cfg, out: Path, gpu_gib: float | None, as_json: bool) -> bool:
    from chexrl.pipeline.preflight import preflight

    start = time.perf_counter()
    checks = preflight(cfg, out.resolve(), gpu_gib=gpu_gib)
    seconds = time.perf_counter() - start
    passed = all(c.ok for c in checks)
    if as_json:
        doc = {"ok": passed, "seconds": seconds, "checks": [c.as_dict() for c in checks]}
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_checks(checks, seconds)
    return passed


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="YAML run configuration with a recipe: section."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default: runs/CONFIG-NAME)."),
    from_stage: str | None = typer.Option(
        None, "--from", help=f"Rerun this stage and all after it ({STAGES_HELP})."
    ),
    force: bool = typer.Option(False, "--force", help="Rerun every stage, up to date or not."),
    check: bool = typer.Option(
        False, "--check", help="Only the preflight: every problem with its fix; exit 1 on any."
    ),
    as_json: bool = typer.Option(False, "--json", help="The preflight as JSON (with --check)."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the effective configuration and exit."
    ),
    gpu_gib: float | None = typer.Option(
        None, "--gpu-gib", min=1, help="GPU memory the preflight plans for."
    ),
) -> None:
    """The paper's recipe on the configured data and model: preflight, then every stage that is not up to
    date (data, traces, sft, evaluate_sft, grpo, evaluate, report; tiny_model, synth_data and pretrain when
    configured)."""
    cfg = load_recipe(config)
    out = out or Path("runs") / config.stem
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    run_checked(cfg, out, from_stage=from_stage, force=force, check=check, as_json=as_json, gpu_gib=gpu_gib)


def run_checked(
    cfg, out: Path, *, from_stage=None, force=False, check=False, as_json=False, gpu_gib=None
) -> None:
    """The preflight, then (unless `check`) the stages; prints the results at the end."""
    from chexrl.demo import print_summary
    from chexrl.pipeline.runner import run_recipe

    passed = run_preflight(cfg, out, gpu_gib, as_json)
    if check or not passed:
        if not passed and not check:
            typer.secho("preflight failed: no stage was run", fg="red", bold=True)
        raise typer.Exit(0 if passed else 1)
    try:
        summary = run_recipe(cfg, out, from_stage=from_stage, force=force, log=typer.echo)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    print_summary(summary, out, typer.secho)
