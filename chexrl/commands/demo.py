"""`chexrl demo`: the main job on the embedded default (see chexrl/demo.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from chexrl.cli import app


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory (models, data, checkpoints, summary)."),
    config: Path | None = typer.Option(None, help="Override the embedded chexrl/configs/demo.yaml."),
) -> None:
    """Pretrain (emulated), SFT, GRPO and evaluate a tiny model on synthetic X-rays, end to end."""
    from chexrl.demo import pass_at_k_table, results_table, reward_verdict, run_demo
    from chexrl.evaluation.intervals import finding_lines, summary_lines

    summary = run_demo(out, config)
    typer.echo("\n" + results_table(summary))
    typer.echo("\nDifferences against the parent model, with 95% paired intervals:")
    typer.echo("\n".join(summary_lines(summary["comparison"])))
    passes = pass_at_k_table(summary)
    if passes:
        typer.echo(
            "\nAcc@1 (greedy) against Pass@K (sampled at the GRPO settings), mean over images:\n" + passes
        )
    n, window = summary["grpo_steps"], summary["grpo_reward_window"]
    over = (
        f"first and last pass over the same prompts, {window} steps each"
        if summary["grpo_reward_basis"] == "pass"
        else f"first and last quarter, {window} steps each"
    )
    typer.echo(
        f"\nGRPO mean reward ({n} steps; {over}): "
        f"first {summary['grpo_reward_first']:.3f} -> last {summary['grpo_reward_last']:.3f}"
    )
    verdict, raised = reward_verdict(summary)
    typer.secho(verdict, fg=None if raised else "yellow", bold=not raised)
    for line, warning in finding_lines(summary["comparison"]):
        typer.secho(line, fg="red" if warning else "yellow", bold=warning)
    typer.echo(f"\nreport: {Path(summary['report']).resolve()}")
    typer.echo(f"summary: {(out / 'summary.json').resolve()}")
