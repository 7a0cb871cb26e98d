"""`chexrl grpo --config FILE [--resume]`: the GRPO stage as a Ray job entry point.

Run it directly (it starts a local Ray) or through `ray job submit --address ... --working-dir . --
chexrl grpo --config FILE` (it then joins that cluster: RAY_ADDRESS is set by the job runtime).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from chexrl.cli import app


@app.command("grpo")
def grpo_cmd(
    config: Path = typer.Option(..., "--config", help="YAML run configuration (chexrl/config.py)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    evaluator_url: str | None = typer.Option(
        None,
        "--evaluator-url",
        envvar="CHEXRL_EVALUATOR_URL",
        help="Overrides grpo.evaluator_url (deployments set it per environment: compose service name, k8s Service).",
    ),
) -> None:
    """GRPO on a LoRA adapter: rollouts through vLLM actors, rewards from the evaluator's /score."""
    import ray

    from chexrl.config import load_config
    from chexrl.data.loaders import load_dataset
    from trainer.loop import GRPORun, run_grpo

    try:
        cfg = load_config(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    if evaluator_url:
        cfg = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"evaluator_url": evaluator_url})})
    g = cfg.grpo
    missing = [name for name in ("model", "data") if getattr(g, name) is None]
    if missing:
        raise typer.BadParameter(f"{config} must set grpo.{', grpo.'.join(missing)}", param_hint="--config")
    samples = load_dataset(g.data)
    if g.limit:
        samples = samples[: g.limit]
    if not samples:
        raise typer.BadParameter(f"grpo.data {g.data!r} has no samples", param_hint="--config")

    if bool(g.eval_id_data) != bool(g.eval_ood_data):
        raise typer.BadParameter(
            f"{config}: evaluation during training needs both grpo.eval_id_data and grpo.eval_ood_data",
            param_hint="--config",
        )
    eval_sets = {}
    for key in ("eval_id_data", "eval_ood_data") if g.eval_id_data else ():
        spec = getattr(g, key)
        eval_samples = load_dataset(spec)[: g.eval_limit]
        if not eval_samples:
            raise typer.BadParameter(f"grpo.{key} {spec!r} has no samples", param_hint="--config")
        eval_sets[key] = (spec, eval_samples)

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    run = GRPORun(
        model_dir=g.model,
        samples=samples,
        run_dir=g.run_dir,
        run_id=g.run_id or Path(g.run_dir).name,
        prompt_name=g.prompt,
        evaluator_token=os.environ.get("CHEXRL_EVALUATOR_TOKEN"),
        id_eval=eval_sets.get("eval_id_data"),
        ood_eval=eval_sets.get("eval_ood_data"),
    )
    history = run_grpo(cfg, run, resume=resume)
    if not history:  # resumed a run whose last checkpoint is already its final step
        typer.echo(f"GRPO: {g.run_dir} already finished all {g.max_steps} steps; nothing to do")
        return
    first, last = history[0]["reward/total"], history[-1]["reward/total"]
    typer.echo(
        f"GRPO done: {len(history)} steps, mean reward first {first:.3f} -> last {last:.3f}; {g.run_dir}"
    )
