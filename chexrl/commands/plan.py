"""`chexrl plan`: the GPU memory a colocated GRPO run needs, phase by phase, before it runs; and
`chexrl bench learner`: one learner step at a real width and vocabulary, chunked log-probs against full
logits. The arithmetic lives in chexrl.models.memory_plan, the measurement in chexrl.bench.learner."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from chexrl.cli import app, bench_app


def _config_of(preset: str | None, model: Path | None):
    """(the transformers config, the processor's min/max_pixels) of a preset (published dimensions) or
    of a checkpoint directory."""
    if (preset is None) == (model is None):
        raise typer.BadParameter("give --preset or --model (a checkpoint directory), one of them")
    if model is not None:
        from transformers import AutoConfig

        from chexrl.models.loading import detect_family

        try:
            detect_family(model)
        except (FileNotFoundError, ValueError) as err:
            raise typer.BadParameter(str(err)) from None
        processor_file = model / "preprocessor_config.json"
        processor = json.loads(processor_file.read_text()) if processor_file.is_file() else {}
        pixels = {k: processor[k] for k in ("min_pixels", "max_pixels") if k in processor}
        return AutoConfig.from_pretrained(str(model)), pixels
    from chexrl.models.tiny import build_tokenizer, make_config, resolve_preset

    try:
        chosen = resolve_preset(None, preset)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    pixels = {k: chosen.processor[k] for k in ("min_pixels", "max_pixels") if k in chosen.processor}
    return make_config(chosen, build_tokenizer(chosen)), pixels


def plan_inputs(cfg, shape, pixels: dict, *, gpu_gib: float, image_px: int, overrides: dict):
    """(StepShape, PlanSettings) of the run `cfg` describes: its batch, completion budget
    (sampling.max_tokens: micro-batches pad to the longest completion), image tokens (from `image_px` and
    rollout.mm_processor_kwargs), engine sizes and learner settings; `overrides` (None: from the config)."""
    from chexrl.config import RolloutConfig
    from chexrl.models.memory_plan import PlanSettings, StepShape, image_tokens

    g, rollout = cfg.grpo, cfg.rollout or RolloutConfig(model="-")
    o = {k: v for k, v in overrides.items() if v is not None}
    prompts, n = o.get("prompts", g.prompts_per_step), o.get("n", cfg.sampling.n)
    image = o.get("image_tokens") or image_tokens(shape, image_px, {**pixels, **rollout.mm_processor_kwargs})
    # the engine's on CUDA: the config's own, else one worker's share of the planned step (overrides
    # included: RolloutConfig.resolved_max_num_seqs's rule on the planned prompts and n)
    max_num_seqs = rollout.max_num_seqs or -(-prompts // rollout.num_workers) * n
    step = StepShape(
        prompts=prompts,
        n=n,
        prompt_tokens=o["prompt_tokens"],
        image_tokens=image,
        completion_tokens=o.get("completion_tokens", cfg.sampling.max_tokens),
        micro_batch=o.get("micro_batch", g.micro_batch_size),
    )
    settings = PlanSettings(
        gpu_gib=gpu_gib,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        sleep=rollout.sleep_between_phases is not False,  # None: on with a GPU, which this plans for
        gradient_checkpointing=g.gradient_checkpointing,
        logprob_chunk_tokens=g.logprob_chunk_tokens,
        lora_rank=g.lora.rank,
        max_num_seqs=max_num_seqs,
    )
    return step, settings


@app.command("plan")
def plan_cmd(
    preset: str | None = typer.Option(None, help="medgemma-4b, qwen2.5-vl-3b, or a tiny preset."),
    model: Path | None = typer.Option(None, help="A checkpoint directory instead of a preset."),
    config: Path | None = typer.Option(
        None, help="A chexrl YAML config: batch shape and settings from its grpo/sampling/rollout sections."
    ),
    gpu_gib: float = typer.Option(80.0, min=1, help="GPU memory in GiB (A100-80GB: 80)."),
    prompts: int | None = typer.Option(
        None, min=1, help="Prompts per step (default: grpo.prompts_per_step)."
    ),
    n: int | None = typer.Option(None, min=1, help="Completions per prompt (default: sampling.n)."),
    completion_tokens: int | None = typer.Option(
        None,
        min=1,
        help="Completion length (default: sampling.max_tokens; micro-batches pad to the longest).",
    ),
    prompt_tokens: int = typer.Option(400, min=1, help="Rendered prompt text tokens, without the image."),
    image_px: int = typer.Option(1024, min=1, help="Side of a (square) input image in pixels (Qwen2.5-VL)."),
    image_tokens: int | None = typer.Option(
        None,
        min=1,
        help="Image tokens (default: Gemma3's 256; Qwen2.5-VL's from --image-px within the processor's "
        "min/max_pixels and rollout.mm_processor_kwargs).",
    ),
    micro_batch: int | None = typer.Option(None, min=1, help="Completions per forward/backward."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the plan as JSON here."),
    gpus: int | None = typer.Option(None, min=1, help="GPUs of a multi-GPU layout: each GPU's budget."),
    nodes: int = typer.Option(1, min=1, help="Nodes the GPUs are spread over (with --gpus)."),
    layout: str | None = typer.Option(None, help="colocated or split (with --gpus; default: grpo.layout)."),
    learners: int | None = typer.Option(None, min=1, help="Learner GPUs of a split layout (default: half)."),
    step_json: Path | None = typer.Option(
        None, help="`chexrl bench step --json` figures of one GPU: also model the time per step (--gpus)."
    ),
    link_gb_per_s: float = typer.Option(
        12.5, min=0.001, help="Slowest link between ranks, GB/s (100 GbE: 12.5)."
    ),
) -> None:
    """Memory per phase of one GPU shared by vLLM and the learner; with --gpus, each GPU's of a layout."""
    from chexrl.models.memory_plan import model_shape, plan, render_table

    cfg = _load(config)
    hf_config, pixels = _config_of(preset, model)
    shape = model_shape(hf_config)
    overrides = dict(prompts=prompts, n=n, completion_tokens=completion_tokens, prompt_tokens=prompt_tokens)
    overrides |= dict(image_tokens=image_tokens, micro_batch=micro_batch)
    step, settings = plan_inputs(cfg, shape, pixels, gpu_gib=gpu_gib, image_px=image_px, overrides=overrides)
    if gpus is not None:
        result = _layout_budget(shape, step, settings, layout or cfg.grpo.layout, gpus, nodes, learners)
        if step_json is not None:
            result["step_time"] = _step_time(result, step_json, link_gb_per_s, cfg.grpo.num_iterations)
    else:
        result = plan(shape, step, settings)
        typer.echo(render_table(result))
    _write_and_exit(result, json_path)


def _load(config: Path | None):
    from chexrl.config import ChexrlConfig, load_config

    try:
        return load_config(config) if config is not None else ChexrlConfig()
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _write_and_exit(result: dict, json_path: Path | None) -> None:
    """The plan as JSON when asked; exit status 1 when it does not fit."""
    if json_path is not None:
        from chexrl.bench.common import write_json

        write_json(json_path, result)
        typer.echo(f"-> {json_path}")
    if not result["fits"]:
        raise typer.Exit(1)


def _learner_sizes(n, micro_batch, chunk_tokens, gradient_checkpointing) -> dict:
    """`chexrl bench learner`'s options, those left unset (None) taken from the config's defaults."""
    from chexrl.config import GRPOConfig, SamplingConfig

    g = GRPOConfig()
    return {
        "n": SamplingConfig().n if n is None else n,
        "micro_batch": g.micro_batch_size if micro_batch is None else micro_batch,
        "chunk_tokens": g.logprob_chunk_tokens if chunk_tokens is None else chunk_tokens,
        "gradient_checkpointing": (
            g.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
        ),
    }


def _layout_budget(shape, step, settings, layout: str, gpus: int, nodes: int, learners: int | None):
    from chexrl.models.layout_plan import layout_budget, render_layout_table

    if layout not in ("colocated", "split"):
        raise typer.BadParameter(f"--layout takes colocated or split, not {layout!r}")
    try:
        budget = layout_budget(
            shape, step, settings, layout=layout, gpus=gpus, nodes=nodes, learners=learners
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(render_layout_table(budget))
    return budget


def _step_time(budget: dict, step_json: Path, link_gb_per_s: float, num_iterations: int) -> dict:
    from chexrl.models.layout_plan import step_time_model

    try:
        median = json.loads(step_json.read_text())["chexrl"]["median"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise typer.BadParameter(
            f"--step-json {step_json}: not `chexrl bench step` figures ({err})"
        ) from None
    times = step_time_model(
        median,
        workers=budget["rollout_workers"],
        learners=budget["learner_ranks"],
        adapter_bytes=budget["allreduce_bytes"],
        link_gb_per_s=link_gb_per_s,
        num_iterations=num_iterations,
    )
    parts = ", ".join(f"{k} {v:.3f}" for k, v in times.items() if k != "step")
    typer.echo(f"modelled step: {times['step']:.3f} s ({parts}); one GPU measured {median['step']:.3f} s")
    return times


@bench_app.command("learner")
def bench_learner_cmd(
    json_path: Path = typer.Option(..., "--json", help="Where to write the figures."),
    preset: str = typer.Option(
        "medgemma-4b", help="medgemma-4b or qwen2.5-vl-3b (their width and vocabulary)."
    ),
    layers: int | None = typer.Option(
        2, min=1, help="Decoder layers, with a one-layer vision tower (--full-depth: the whole model)."
    ),
    full_depth: bool = typer.Option(False, help="The preset's own depth and vision tower (a GPU's job)."),
    prompts: int = typer.Option(8, min=1, help="Prompts per step."),
    n: int | None = typer.Option(None, min=1, help="Completions per prompt (default: sampling.n)."),
    completion_tokens: int = typer.Option(300, min=1, help="Tokens per completion."),
    micro_batch: int | None = typer.Option(
        None, min=1, help="Completions per forward/backward (default: grpo.micro_batch_size)."
    ),
    chunk_tokens: int | None = typer.Option(
        None, min=1, help="Log-prob chunk of the chunked path (default: grpo.logprob_chunk_tokens)."
    ),
    gradient_checkpointing: bool | None = typer.Option(
        None,
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="On both paths (default: grpo.gradient_checkpointing).",
    ),
    steps: int = typer.Option(1, min=1, help="Measured steps on each path."),
    warmup: int = typer.Option(0, min=0, help="Unmeasured steps first."),
    paths: str = typer.Option("chunked,full", help="Which paths to run: chunked, full or both."),
    work_dir: Path = typer.Option(
        Path("runs/bench/models"), help="Where the benchmark's checkpoint is built."
    ),
) -> None:
    """One GRPO learner step at a real model's width and vocabulary: peak memory and time of chunked
    log-probs against the full-logits path, and peak_mem_chunked_over_full."""
    from chexrl.bench.common import write_json
    from chexrl.bench.learner import bench_learner, summary_table

    sizes = _learner_sizes(n, micro_batch, chunk_tokens, gradient_checkpointing)
    chosen = tuple(p.strip() for p in paths.split(",") if p.strip())
    if not chosen or set(chosen) - {"chunked", "full"}:
        raise typer.BadParameter(f"--paths takes chunked, full or both, not {paths!r}")
    layers = None if full_depth else layers
    try:
        figures = bench_learner(
            preset=preset,
            layers=layers,
            prompts=prompts,
            completion_tokens=completion_tokens,
            steps=steps,
            warmup=warmup,
            work_dir=work_dir,
            paths=chosen,
            **sizes,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    write_json(json_path, figures)
    typer.echo(summary_table(figures))
    typer.echo(f"-> {json_path}")
    typer.echo(json.dumps({k: v for k, v in figures.items() if k.endswith("over_full")}))
