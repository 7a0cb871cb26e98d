"""`chexrl bench step`: where one GRPO step's time goes, and the same step in TRL's GRPOTrainer.

Both sides run one fixed configuration (`bench_config`) on the same checkpoint and samples (`prepare`):
chexrl's in `chexrl.bench.step_chexrl` (the real `run_grpo`, each step split by its own `time/*` metrics),
TRL's in `chexrl.bench.step_trl` (`trl.GRPOTrainer`, each round in a fresh process). TRL runs in the same
command, by default once before and once after chexrl, so that a drift in the load of a shared machine hits
both sides alike. Neither side's step includes its per-step logging (chexrl's metrics.jsonl/TensorBoard
write, TRL's log). This module puts the figures together: trl_over_chexrl = median TRL step / median
chexrl step, and chexrl's overhead_fraction (`step_chexrl`) against the targets.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from chexrl.bench.common import device_description
from chexrl.bench.step_chexrl import PARTS, run_chexrl, step_split, summarize_chexrl
from chexrl.bench.step_trl import run_trl_isolated
from chexrl.config import GRPOConfig, SamplingConfig

TARGETS = {"overhead_fraction_max": 0.10, "trl_over_chexrl_min": 1.0}


def bench_config(
    model_dir: str,
    *,
    steps: int,
    warmup: int,
    prompts: int,
    n: int,
    max_tokens: int,
    micro_batch: int,
    max_model_len: int,
    weight_sync: str | None = None,
):
    """The fixed configuration both sides run: chexrl's defaults (the paper's sampling, Dr. GRPO and LoRA
    settings) with the benchmark's sizes and EOS ignored."""
    from chexrl.config import ChexrlConfig, RolloutConfig

    rollout = RolloutConfig(model=model_dir, max_model_len=max_model_len, weight_sync=weight_sync)
    return ChexrlConfig.model_validate(
        {
            "rollout": rollout.model_dump(),
            "sampling": {"n": n, "max_tokens": max_tokens, "ignore_eos": True},
            "grpo": {
                "max_steps": warmup + steps,
                "prompts_per_step": prompts,
                "micro_batch_size": micro_batch,
                "gradient_checkpointing": False,  # as TRL's side: same memory-for-compute trade
                "save_steps": warmup + steps,  # the one checkpoint comes after the last step's clock
                "eval_steps": warmup + steps,
            },
        }
    )


def prepare(
    work: Path,
    *,
    preset: str | None,
    model: str | None,
    data_dir: str | Path | None,
    images: int,
    image_size: int,
) -> tuple[str, list]:
    """(model_dir, samples): the checkpoint (built under `work` unless given) and `images` MIMIC-format
    samples (synthesized under `work` unless `data_dir` holds a set)."""
    from chexrl.data.loaders import load_dataset
    from chexrl.data.synth import synthesize
    from chexrl.models.tiny import build_model_dir

    if model is None:
        out = work / "model"
        if preset is None:
            model = str(build_model_dir("gemma3", out, seed=0).out)
        else:
            model = str(build_model_dir(out=out, preset=preset, seed=0).out)
    if data_dir is None:
        # the loader keeps frontal views only; the synthetic set mixes in laterals, so write a margin
        data_dir = work / "mimic"
        synthesize("mimic", data_dir, 2 * images + 8, seed=1, size=image_size)
    samples = load_dataset(f"mimic:{data_dir}")
    if len(samples) < images:
        raise RuntimeError(f"{data_dir} holds {len(samples)} frontal images, need {images}")
    return model, samples[:images]


def bench_step(
    *,
    steps: int = 5,
    warmup: int = 2,
    prompts: int | None = None,
    n: int | None = None,
    max_tokens: int = 64,
    micro_batch: int | None = None,
    preset: str | None = None,
    model: str | None = None,
    data_dir: str | Path | None = None,
    image_size: int = 64,
    max_model_len: int = 1024,
    trl_generation: str = "auto",
    trl_rounds: int | None = None,
    weight_sync: str | None = None,
    evaluator_url: str | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Both sides on one fixed configuration; returns the figures (see the module docstring).

    TRL runs `trl_rounds` times (2: before and after chexrl, so a drift in a shared machine's load hits
    both sides; 1: after), each round in a fresh process with its own warm-up. `model` / `data_dir` (a
    MIMIC-format directory) reuse files; `weight_sync` None is the device's default; `prompts`, `n` and
    `micro_batch` None are grpo.prompts_per_step, sampling.n and grpo.micro_batch_size."""
    import torch

    cuda = torch.cuda.is_available()
    trl_generation, trl_rounds = _checked_options(
        steps, warmup, trl_generation, trl_rounds, preset, model, cuda
    )
    sizes = _step_sizes(steps, warmup, prompts, n, max_tokens, micro_batch)
    prompts, n = sizes["prompts"], sizes["n"]
    rounds, measured, chexrl_wall, cfg = _run_both_sides(
        sizes,
        trl_generation=trl_generation,
        trl_rounds=trl_rounds,
        prepare_args=dict(preset=preset, model=model, data_dir=data_dir, image_size=image_size),
        max_model_len=max_model_len,
        weight_sync=weight_sync,
        evaluator_url=evaluator_url,
        work_dir=work_dir,
    )
    chexrl = summarize_chexrl([step_split(m) for m in measured])
    chexrl["wall_s"] = chexrl_wall
    chexrl["completion_tokens_mean"] = float(statistics.fmean(m["completion/length"] for m in measured))
    _check_equal_work(chexrl, rounds, max_tokens)
    trl = _trl_figures(trl_generation, rounds)
    config = {
        **sizes,
        "completions_per_step": prompts * n,
        "model": preset or model or "tiny-gemma3",
        "image_size": image_size,
        "max_model_len": max_model_len,
        **_recipe_description(cfg, cuda, trl_generation, trl_rounds),
    }
    return _figures(config, chexrl, trl)


def _step_sizes(
    steps: int, warmup: int, prompts: int | None, n: int | None, max_tokens: int, micro_batch: int | None
) -> dict:
    """The benchmark's sizes, with chexrl's config defaults for those not given."""
    defaults = GRPOConfig()
    return dict(
        steps=steps,
        warmup=warmup,
        prompts=defaults.prompts_per_step if prompts is None else prompts,
        n=SamplingConfig().n if n is None else n,
        max_tokens=max_tokens,
        micro_batch=defaults.micro_batch_size if micro_batch is None else micro_batch,
    )


def _run_both_sides(
    sizes: dict,
    *,
    trl_generation: str,
    trl_rounds: int,
    prepare_args: dict,
    max_model_len: int,
    weight_sync: str | None,
    evaluator_url: str | None,
    work_dir: str | Path | None,
):
    """(TRL rounds, chexrl's measured steps, chexrl's wall time, the config both ran)."""
    with tempfile.TemporaryDirectory(prefix="chexrl-bench-step-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # every step draws fresh images on both sides (no prompt repeats within a run)
        images = sizes["prompts"] * (sizes["warmup"] + sizes["steps"])
        model_dir, samples = prepare(work, images=images, **prepare_args)
        cfg = bench_config(model_dir, max_model_len=max_model_len, weight_sync=weight_sync, **sizes)
        trl_args = (cfg, model_dir, samples, work, sizes["warmup"], trl_generation)
        rounds = []
        if trl_rounds == 2:
            rounds.append({"when": "before chexrl", **run_trl_isolated(*trl_args)})
        measured, chexrl_wall = run_chexrl(
            cfg, model_dir, samples, work, warmup=sizes["warmup"], evaluator_url=evaluator_url
        )
        rounds.append({"when": "after chexrl", **run_trl_isolated(*trl_args)})
    return rounds, measured, chexrl_wall, cfg


def _checked_options(
    steps: int,
    warmup: int,
    trl_generation: str,
    trl_rounds: int | None,
    preset: str | None,
    model: str | None,
    cuda: bool,
) -> tuple[str, int]:
    """(trl_generation, trl_rounds) resolved, or a ValueError naming the option that is wrong."""
    if steps < 1 or warmup < 0:
        raise ValueError("need steps >= 1 and warmup >= 0")
    if trl_generation == "auto":
        trl_generation = "vllm-colocate" if cuda else "transformers"
    if trl_generation not in ("transformers", "vllm-colocate"):
        raise ValueError(
            f"trl_generation must be auto, transformers or vllm-colocate, not {trl_generation!r}"
        )
    trl_rounds = 2 if trl_rounds is None else trl_rounds
    if trl_rounds not in (1, 2):
        raise ValueError("trl_rounds must be 1 (after chexrl) or 2 (before and after)")
    if preset is not None and model is not None:
        raise ValueError("give a preset or a model directory, not both")
    return trl_generation, trl_rounds


def _check_equal_work(chexrl: dict, rounds: list[dict], max_tokens: int) -> None:
    """Equal work: every completion on both sides is exactly max_tokens long (EOS is ignored)."""
    for side, mean_len in [("chexrl", chexrl["completion_tokens_mean"])] + [
        (f"trl ({r['when']})", r["completion_tokens_mean"]) for r in rounds
    ]:
        if mean_len != max_tokens:
            raise RuntimeError(
                f"{side} completions average {mean_len} tokens, not {max_tokens}: unequal work"
            )


def _trl_figures(trl_generation: str, rounds: list[dict]) -> dict:
    """TRL's step and generation times over all its rounds, with medians and the mean."""
    trl_steps = [t for r in rounds for t in r["step_seconds"]]
    trl_gen = [t for r in rounds for t in r["generation_seconds"]]
    return {
        "generation": trl_generation,
        "step_seconds": trl_steps,
        "generation_seconds": trl_gen,
        "median": float(statistics.median(trl_steps)),
        "mean": float(statistics.fmean(trl_steps)),
        "median_generation": float(statistics.median(trl_gen)),
        "rounds": rounds,
    }


def _recipe_description(cfg, cuda: bool, trl_generation: str, trl_rounds: int) -> dict:
    """The recipe settings both sides ran, as written into the figures' `config`."""
    g, s = cfg.grpo, cfg.sampling
    return {
        "ignore_eos": True,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "loss": "dr_grpo",
        "beta": g.beta,
        "epsilon": g.epsilon,
        "epsilon_high": g.epsilon_high,
        "learning_rate": g.learning_rate,
        "lora": g.lora.model_dump(),
        "reward": "hard",
        "chexrl_generation": "vLLM in the Ray rollout actor",
        "chexrl_weight_sync": cfg.rollout.resolved_weight_sync(cuda),
        "trl_generation": trl_generation,
        "trl_rounds": trl_rounds,
    }


def _figures(config: dict, chexrl: dict, trl: dict) -> dict:
    """The command's JSON: both sides, their ratio and the targets met or not."""
    ratio = trl["median"] / chexrl["median"]["step"]
    return {
        "device": device_description(),
        "config": config,
        "chexrl": chexrl,
        "trl": trl,
        "trl_over_chexrl": ratio,
        "targets": dict(TARGETS),
        "meets": {
            "overhead_fraction": chexrl["overhead_fraction"] <= TARGETS["overhead_fraction_max"],
            "trl_over_chexrl": ratio >= TARGETS["trl_over_chexrl_min"],
        },
    }


def summary_table(figures: dict) -> str:
    """A short plain-text table of the medians."""
    c, t = figures["chexrl"], figures["trl"]
    lines = [f"{'part':<18}{'median s':>10}{'mean s':>10}{'share':>8}"]
    for part in PARTS:
        lines.append(
            f"{part:<18}{c['median'][part]:>10.4f}{c['mean'][part]:>10.4f}{c['mean_share'][part]:>8.1%}"
        )
    lines.append(f"{'chexrl step':<18}{c['median']['step']:>10.4f}{c['mean']['step']:>10.4f}")
    lines.append(
        f"{'TRL step':<18}{t['median']:>10.4f}{t['mean']:>10.4f}  "
        f"({t['generation']}; its generation: median {t['median_generation']:.4f} s)"
    )
    m, tg = figures["meets"], figures["targets"]
    lines.append(
        f"overhead_fraction {c['overhead_fraction']:.3f} (mean {c['overhead_fraction_mean']:.3f}; "
        f"target <= {tg['overhead_fraction_max']}: {'met' if m['overhead_fraction'] else 'NOT met'})"
    )
    lines.append(
        f"trl_over_chexrl {figures['trl_over_chexrl']:.3f} "
        f"(target >= {tg['trl_over_chexrl_min']}: {'met' if m['trl_over_chexrl'] else 'NOT met'})"
    )
    return "\n".join(lines)
