"""`chexrl evaluate` (models side by side, or a prompt ablation, in and out of distribution) and
`chexrl report RUN_DIR` (the run's generalization report). Formats and definitions: docs/evaluation.md."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from chexrl.cli import app
from chexrl.config import EVAL_BATCH_IMAGES


def _models(models: list[str], adapter: Path | None, run: Path | None, parents: list[str]):
    from chexrl.evaluation.runner import ModelSpec, models_from_run

    if adapter is not None:
        if len(models) != 1 or "@" in models[0]:
            raise typer.BadParameter(
                "--adapter goes with exactly one --model DIR; for several write --model NAME=DIR@ADAPTER",
                param_hint="--adapter",
            )
        models = [f"{models[0]}@{adapter}"]
    try:
        specs = [ModelSpec.parse(text) for text in models]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model") from exc
    if run is not None:
        try:
            specs += models_from_run(run)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--run") from exc
    if not specs:
        raise typer.BadParameter("name at least one model (--model or --run)", param_hint="--model")
    by_name = {s.name: s for s in specs}
    for text in parents:
        child, sep, par = text.partition("=")
        if not sep or child not in by_name or par not in by_name:
            raise typer.BadParameter(
                f"{text!r}: expected CHILD=PARENT with both among the models {list(by_name)}",
                param_hint="--parent",
            )
        by_name[child] = ModelSpec(child, by_name[child].model, by_name[child].adapter, par)
    return list(by_name.values())


def _prompts(prompt: str | None, prompts: str | None) -> list[str]:
    from chexrl.core.prompts import DEFAULT_PROMPT, VARIANT_NAMES
    from chexrl.evaluation.runner import check_prompts

    if prompt and prompts:
        raise typer.BadParameter(
            "give --prompt (one) or --prompts (an ablation), not both", param_hint="--prompts"
        )
    if prompts:
        names = (
            list(VARIANT_NAMES)
            if prompts == "table1"
            else [p.strip() for p in prompts.split(",") if p.strip()]
        )
        hint = "--prompts"
    else:
        names, hint = [prompt or DEFAULT_PROMPT], "--prompt"
    try:
        check_prompts(names)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc
    return names


def _connect_ray() -> bool:
    """Join RAY_ADDRESS's cluster, or start a small local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:  # a bounded object store: vLLM's memory check on the CPU fails next to a large one
        ray.init(num_cpus=4, object_store_memory=512 * 1024**2, include_dashboard=False, log_to_driver=False)
    return True


def _pass_sampling(config: Path | None, run: Path | None):
    """The sampling settings of Pass@K: --config's, else the run's config.yaml's, else the defaults (the
    paper's GRPO sampling, temperature 0.8, top-p 0.95)."""
    from chexrl.config import SamplingConfig, load_config

    path, hint = (config, "--config") if config is not None else (None, None)
    if path is None and run is not None and (run / "config.yaml").is_file():
        path, hint = run / "config.yaml", "--run"
    if path is None:
        return SamplingConfig()
    try:
        return load_config(path).sampling
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


# The options of `chexrl evaluate`, named once here so that the command's signature stays readable.
OPT_MODEL = typer.Option(
    None,
    "--model",
    help="A checkpoint: DIR, NAME=DIR, or NAME=DIR@ADAPTER_DIR (with a LoRA adapter). Repeatable.",
)
OPT_ADAPTER = typer.Option(None, "--adapter", help="LoRA adapter directory on the one --model.")
OPT_RUN = typer.Option(
    None, "--run", help="GRPO run directory: adds its start model and the checkpoints its policies selected."
)
OPT_PARENT = typer.Option(
    None,
    "--parent",
    help="CHILD=PARENT: CHILD was trained from PARENT (change against the parent). Repeatable.",
)
OPT_DATA = typer.Option(
    ...,
    "--data",
    help="A test set: SPEC or NAME=SPEC. The first is in distribution, the others out. Repeatable.",
)
OPT_PROMPT = typer.Option(None, "--prompt", help="Prompt variant (default free_reasoning).")
OPT_PROMPTS = typer.Option(
    None, "--prompts", help="Prompt ablation: comma-separated variants, or 'table1' for the paper's nine."
)
OPT_OUT = typer.Option(None, "--out", help="Output directory (default RUN/evaluation or runs/evaluation).")
OPT_LIMIT = typer.Option(None, "--limit", min=1, help="Evaluate the first N images of each set.")
OPT_MAX_TOKENS = typer.Option(
    None, "--max-tokens", min=1, help="Completion token budget (default: sampling.max_tokens)."
)
OPT_TEMPERATURE = typer.Option(0.0, "--temperature", min=0.0, help="0 (default): greedy decoding.")
OPT_TOP_P = typer.Option(
    None, "--top-p", min=0.0, max=1.0, help="Top-p when sampling (default: sampling.top_p)."
)
OPT_SEED = typer.Option(None, "--seed", help="Per-request sampling seed (with --temperature > 0).")
OPT_MAX_MODEL_LEN = typer.Option(
    None, "--max-model-len", min=128, help="Engine context length (default: rollout.max_model_len)."
)
OPT_BATCH_SIZE = typer.Option(EVAL_BATCH_IMAGES, "--batch-size", min=1, help="Images per generate call.")
OPT_MARGIN = typer.Option(
    None,
    "--margin",
    min=0.0,
    help="Trade-off warning margin (OOD macro-F1 drop; default: grpo.tradeoff_margin).",
)
OPT_RELATIVE = typer.Option(False, "--relative-margin", help="The margin is a relative drop.")
OPT_SAMPLES = typer.Option(
    None,
    "--samples",
    min=1,
    help="K: add Acc@1 (greedy) against Pass@K (sampled) per model and test set (default: off).",
)
OPT_SAMPLES_N = typer.Option(
    None, "--samples-n", min=1, help="Samples per image for Pass@K, at least K (default K)."
)
OPT_CONFIG = typer.Option(
    None,
    "--config",
    help="YAML config whose `sampling` (temperature, top_p, seed) the Pass@K samples use "
    "(default: --run's config.yaml, else the GRPO defaults).",
)


@app.command("evaluate")
def evaluate_cmd(
    model: list[str] | None = OPT_MODEL,
    adapter: Path | None = OPT_ADAPTER,
    run: Path | None = OPT_RUN,
    parent: list[str] | None = OPT_PARENT,
    data: list[str] = OPT_DATA,
    prompt: str | None = OPT_PROMPT,
    prompts: str | None = OPT_PROMPTS,
    out: Path | None = OPT_OUT,
    limit: int | None = OPT_LIMIT,
    max_tokens: int | None = OPT_MAX_TOKENS,
    temperature: float = OPT_TEMPERATURE,
    top_p: float | None = OPT_TOP_P,
    seed: int | None = OPT_SEED,
    max_model_len: int | None = OPT_MAX_MODEL_LEN,
    batch_size: int = OPT_BATCH_SIZE,
    margin: float | None = OPT_MARGIN,
    relative_margin: bool = OPT_RELATIVE,
    samples: int | None = OPT_SAMPLES,
    samples_n: int | None = OPT_SAMPLES_N,
    config: Path | None = OPT_CONFIG,
) -> None:
    """Evaluate models (or prompt variants) in and out of distribution; write JSON, Markdown, CSV and a PNG."""
    from chexrl.config import GRPOConfig, RolloutConfig, SamplingConfig
    from chexrl.evaluation.runner import load_test_sets, write_results

    specs = _checked_models(model or [], adapter, run, parent or [])
    names = _prompts(prompt, prompts)
    # options left unset take the config's defaults
    defaults = SamplingConfig()
    max_tokens = defaults.max_tokens if max_tokens is None else max_tokens
    rollout = RolloutConfig.model_validate(
        {"model": specs[0].model} | ({} if max_model_len is None else {"max_model_len": max_model_len})
    )
    sampling = _sampling(temperature, defaults.top_p if top_p is None else top_p, seed, samples, samples_n)
    margin = GRPOConfig().tradeoff_margin if margin is None else margin
    pass_sampling = _pass_sampling(config, run) if samples else None
    try:
        test_sets = load_test_sets(data, limit)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    out = out or (run / "evaluation" if run is not None else Path("runs/evaluation"))

    settings = {"prompts": names, "sampling": sampling, "max_tokens": max_tokens, "batch_size": batch_size}
    settings |= {"rollout": rollout, "margin": margin, "relative": relative_margin}
    settings |= {"samples": samples, "samples_n": samples_n, "pass_sampling": pass_sampling}
    doc, completions = _evaluate_on_ray(specs, test_sets, settings)
    _print_results(doc, write_results(doc, out, completions), run)


def _evaluate_on_ray(specs, test_sets, settings: dict):
    """evaluate_models on the Ray cluster (joined, or started here and shut down after)."""
    from chexrl.evaluation.runner import evaluate_models

    started = _connect_ray()
    try:
        return evaluate_models(specs, test_sets, log=typer.echo, **settings)
    finally:
        if started:
            import ray

            ray.shutdown()


def _checked_models(models: list[str], adapter: Path | None, run: Path | None, parents: list[str]):
    """The models to evaluate, each checked before any engine starts."""
    from chexrl.evaluation.runner import check_model

    specs = _models(models, adapter, run, parents)
    for spec in specs:
        try:
            check_model(spec)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from exc
    return specs


def _sampling(temperature: float, top_p: float, seed: int | None, samples: int | None, samples_n: int | None):
    """The main evaluation's sampling settings (None: greedy), checked against the Pass@K options."""
    from chexrl.config import SamplingConfig
    from chexrl.evaluation.runner import check_samples

    try:
        sampling = (
            None if temperature == 0 else SamplingConfig(temperature=temperature, top_p=top_p, seed=seed, n=1)
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise typer.BadParameter(str(exc), param_hint="--top-p") from exc
    try:
        check_samples(samples, samples_n, sampling)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--samples") from exc
    return sampling


def _print_results(doc: dict, paths: dict[str, Path], run: Path | None) -> None:
    """The headline table, the differences with their intervals, Pass@K, the warnings and notes, the files."""
    from chexrl.evaluation.intervals import bootstrap_sentence, gap_change_table, paired_table
    from chexrl.evaluation.render import markdown_table
    from chexrl.evaluation.tables import ablation_table, overview_table, pass_at_k_table

    first = doc["datasets"][0]["name"]
    table = ablation_table(doc, first) if doc["kind"] == "prompt_ablation" else overview_table(doc)
    typer.echo("\n" + markdown_table(table))
    paired = paired_table(doc)
    if paired is not None:
        typer.echo("\n" + markdown_table(paired) + "\n" + bootstrap_sentence(doc))
    gaps = gap_change_table(doc)
    if gaps is not None:
        typer.echo("\n" + markdown_table(gaps))
    passes = pass_at_k_table(doc)
    if passes is not None:
        typer.echo("\n" + markdown_table(passes))
    for warning in doc["warnings"]:
        typer.secho(f"WARNING: {warning}", fg="red", bold=True)
    for note in doc.get("notes", []):
        typer.secho(f"NOTE: {note}", fg="yellow")
    typer.echo("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    if run is not None:
        typer.echo(f"\nthe run's report: chexrl report {run}")


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(
        ..., help="Run directory (metrics.jsonl, evals.jsonl, selection.json, ...)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default RUN_DIR/report)."),
    smoothing: float = typer.Option(
        0.95, "--smoothing", min=0.0, max=0.999, help="EMA smoothing of the curves."
    ),
) -> None:
    """Write the run's report (HTML and Markdown with PNG figures): curves, evaluations, selection, warnings."""
    from chexrl.evaluation.report import write_report

    try:
        html = write_report(run_dir, out_dir=out, smoothing=smoothing)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN_DIR") from exc
    typer.echo(f"report: {html}\nmarkdown: {html.with_name('report.md')}")
