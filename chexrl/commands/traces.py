"""`chexrl traces ...`: write teacher traces (OpenAI-compatible endpoint or template teacher), show prompts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from chexrl.cli import traces_app
from chexrl.core.schemas import TRAINING_SCHEMA

_DATA_HELP = "Data set spec NAME:DIR[:SPLIT][:SCHEMA], e.g. mimic:runs/synth/mimic:train."
_SAMPLES_HELP = 'Samples JSONL: one {"image", "labels", "sample_id"} per line.'


def _load_jobs(data: str | None, samples_jsonl: Path | None, schema: str) -> list:
    from chexrl.traces.store import jobs_from_samples, load_samples_jsonl

    if (data is None) == (samples_jsonl is None):
        raise typer.BadParameter("give exactly one of --data or --samples-jsonl")
    if samples_jsonl is not None:
        return load_samples_jsonl(samples_jsonl, schema=schema)
    try:
        from chexrl.data.loaders import load_dataset
    except ImportError as err:
        raise typer.BadParameter(f"--data needs chexrl.data.loaders ({err}); use --samples-jsonl") from err
    try:
        return jobs_from_samples(list(load_dataset(data)))
    except ValueError as err:  # a bad spec, option or label file: the message names it
        raise typer.BadParameter(str(err), param_hint="--data") from err


def _report(summary, out: Path) -> None:
    from chexrl.traces.store import rejected_path

    result = summary.as_dict()
    typer.echo(json.dumps(result, indent=2))
    if result["rejected_total"]:
        typer.echo(f"rejections (with reasons) in {rejected_path(out)}", err=True)
    unfinished = result.get("failed_total", 0) + result.get("cancelled", 0)
    if unfinished:  # transport failures are not final: say so, and fail, so a script reruns
        typer.echo(
            f"{unfinished} samples are still pending (HTTP errors or cancelled); rerun to ask again", err=True
        )
        raise typer.Exit(1)


@traces_app.command("generate")
def generate(
    out: Path = typer.Option(..., help="Output JSONL of accepted traces (appended; resumes)."),
    endpoint: str = typer.Option(
        "",
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (not needed for --teacher template).",
    ),
    model: str = typer.Option("", help="Model name served by the endpoint."),
    data: str | None = typer.Option(None, help=_DATA_HELP),
    samples_jsonl: Path | None = typer.Option(None, help=_SAMPLES_HELP),
    schema: str = typer.Option(TRAINING_SCHEMA, help="Label schema of --samples-jsonl records."),
    teacher: str = typer.Option("endpoint", help="'endpoint' (ask the model) or 'template' (deterministic)."),
    format: str = typer.Option(
        "free_reasoning", help="SFT format: only_label|free_reasoning|reasoning_narrative|reasoning_a."
    ),
    api_key_env: str | None = typer.Option(None, help="Environment variable holding the API key."),
    concurrency: int = typer.Option(4, help="Requests in flight."),
    max_retries: int = typer.Option(3, help="Attempts after the first (HTTP errors and invalid traces)."),
    backoff_base: float = typer.Option(1.0, help="First back-off delay in seconds (doubles per retry)."),
    timeout: float = typer.Option(120.0, help="Per-request timeout in seconds."),
    temperature: float = typer.Option(0.7),
    max_tokens: int = typer.Option(1024),
    guided: bool = typer.Option(
        False, help="vLLM only: constrain decoding to a valid trace with the gold labels."
    ),
    limit: int | None = typer.Option(None, help="Use only the first N samples."),
    seed: int = typer.Option(0, help="Seed of the template teacher and of the back-off jitter."),
) -> None:
    """Write teacher traces for a data set; validated, retried, resumable. Prints a JSON summary."""
    from chexrl.traces.generate import GenerateConfig, template_traces

    jobs = _load_jobs(data, samples_jsonl, schema)
    if teacher == "template":
        _report(template_traces(jobs[:limit] if limit else jobs, out, format, seed=seed), out)
        return
    if teacher != "endpoint":
        raise typer.BadParameter("--teacher must be 'endpoint' or 'template'")
    if not endpoint or not model:
        raise typer.BadParameter("--endpoint and --model are required for --teacher endpoint")
    cfg = GenerateConfig(
        endpoint=endpoint,
        model=model,
        format=format,
        api_key=_api_key(api_key_env),
        concurrency=concurrency,
        max_retries=max_retries,
        backoff_base_s=backoff_base,
        timeout_s=timeout,
        temperature=temperature,
        max_tokens=max_tokens,
        guided=guided,
        limit=limit,
        seed=seed,
    )
    _report(_ask_endpoint(jobs, out, cfg), out)


def _api_key(api_key_env: str | None) -> str | None:
    """The API key from the named environment variable (None when no variable is named)."""
    if not api_key_env:
        return None
    api_key = os.environ.get(api_key_env)
    if not api_key:
        raise typer.BadParameter(f"environment variable {api_key_env} is not set")
    return api_key


def _ask_endpoint(jobs: list, out: Path, cfg):
    """The run's summary; a refused endpoint prints what was done and exits 1."""
    from chexrl.traces.generate import TeacherEndpointError, generate_traces

    try:
        return generate_traces(jobs, out, cfg, log=lambda m: typer.echo(m, err=True))
    except TeacherEndpointError as err:
        if err.summary is not None:
            typer.echo(json.dumps(err.summary.as_dict(), indent=2))
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


@traces_app.command("template")
def template(
    out: Path = typer.Option(..., help="Output JSONL (appended; resumes)."),
    data: str | None = typer.Option(None, help=_DATA_HELP),
    samples_jsonl: Path | None = typer.Option(None, help=_SAMPLES_HELP),
    schema: str = typer.Option(TRAINING_SCHEMA, help="Label schema of --samples-jsonl records."),
    format: str = typer.Option("free_reasoning", help="SFT format."),
    limit: int | None = typer.Option(None, help="Use only the first N samples."),
    seed: int = typer.Option(0),
) -> None:
    """Write deterministic template-teacher traces (no endpoint needed)."""
    from chexrl.traces.generate import template_traces

    jobs = _load_jobs(data, samples_jsonl, schema)
    _report(template_traces(jobs[:limit] if limit else jobs, out, format, seed=seed), out)


@traces_app.command("prompts")
def prompts(
    name: str | None = typer.Argument(None, help="Print this prompt's full text."),
    schema: str = typer.Option(TRAINING_SCHEMA),
) -> None:
    """List the prompt variants and SFT formats, or print one prompt."""
    from chexrl.core import prompts as p

    if name:
        msgs = p.build_messages(name, schema=schema)
        typer.echo(
            f"[system]\n{msgs[0]['content'][0]['text']}\n\n[user] <image>\n{msgs[1]['content'][1]['text']}"
        )
        return
    for v in p.PROMPTS.values():
        flag = " (default)" if v.name == p.DEFAULT_PROMPT else ""
        typer.echo(f"prompt  {v.name:<16} {v.title}: {v.cue}{flag}")
    for f in p.SFT_FORMATS.values():
        typer.echo(f"format  {f.name:<20} {f.description} [prompt: {f.prompt}]")
