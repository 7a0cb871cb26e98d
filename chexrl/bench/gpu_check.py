"""The prepared GPU check (`scripts/gpu_check.sh`): the GRPO learner at MedGemma-4B's full size on CUDA,
TRL's GRPOTrainer on the same model and batch, and `chexrl plan`'s prediction beside each measurement.

Written for a GPU machine, which has torch, transformers, peft and accelerate but no vLLM, Ray or
network: neither side imports vLLM or Ray (random bf16 weights, the paper's batch: 8 prompts x 4
completions of 300 tokens, 256 image tokens). `--cpu` runs the same code end to end at the tiny preset's
size, so a test keeps the script from rotting. Writes OUT/gpu_check.json after each side finishes:

- settings: the batch and the gradient checkpointing both sides run with (chexrl's default);
- chexrl: for the chunked and the full-logits path, s/step, the training peak (CUDA: allocated; CPU: the
  process's growth), tokens/s of forward+backward (chexrl.bench.learner, one fresh process per path),
  the plan's predicted peak and predicted / measured; no generation (vLLM's, not on that machine);
- trl: TRL's step (generation with transformers `generate` + update), its update alone (step minus
  generation), the peak of generation and of training apart;
- a side that failed or could not run: `ran` false and the reason (the module really missing, or the
  error's last line and traceback); the script then exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from chexrl.bench.learner import run_path_in_subprocess


def _plan_learner(model_dir: Path, step: dict, *, chunk: int | None, gc: bool, cuda: bool) -> int:
    from transformers import AutoConfig

    from chexrl.models.memory_plan import PlanSettings, StepShape, model_shape, plan

    shape = model_shape(AutoConfig.from_pretrained(str(model_dir)))
    s = PlanSettings(gradient_checkpointing=gc, logprob_chunk_tokens=chunk, device="cuda" if cuda else "cpu")
    result = plan(shape, StepShape(**step), s)
    # measured peaks exclude the CUDA context (max_memory_allocated) and the interpreter (the RSS at start)
    return result["learner_peak"] - result["learner"]["cuda_context"]


def _trl(model_dir: Path, work: Path, settings: dict) -> dict:
    """TRL's GRPOTrainer on the same model, LoRA, batch, completion length and gradient checkpointing,
    transformers generation; `ran` False with the reason (the module really missing, or the error)."""
    try:
        import trl  # noqa: F401
    except ModuleNotFoundError as err:
        return {
            "ran": False,
            "reason": f"module {err.name!r} is not installed here (TRL's side needs it); "
            "carry its wheel (scripts/gpu_wheels.sh)",
        }
    import torch

    from chexrl.bench.step_setup import bench_config, prepare
    from chexrl.bench.step_trl import run_trl_isolated

    prompts, steps, warmup = settings["prompts"], settings["steps"], settings["warmup"]
    model, samples = prepare(
        work,
        preset=None,
        model=str(model_dir),
        data_dir=None,
        images=prompts * (warmup + steps),
        image_size=256,
    )
    cfg = bench_config(
        model,
        steps=steps,
        warmup=warmup,
        prompts=prompts,
        n=settings["n"],
        max_tokens=settings["completion_tokens"],
        micro_batch=settings["micro_batch"],
        max_model_len=4096,
        gradient_checkpointing=settings["gradient_checkpointing"],
    )
    out = run_trl_isolated(cfg, model, samples, work, warmup, "transformers")
    out["update_seconds"] = [
        s - g for s, g in zip(out["step_seconds"], out["generation_seconds"], strict=True)
    ]
    return {**out, "ran": True, "device": "cuda" if torch.cuda.is_available() else "cpu"}


def _side(measure) -> dict:
    """One side's figures, or `ran` False with the error's last line (the traceback under `error`)."""
    import traceback

    try:
        return measure()
    except Exception as err:  # recorded in the JSON; main() exits non-zero
        tb = traceback.format_exc()
        last = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
        return {"ran": False, "reason": last[-1], "error": tb}


def _chexrl_path(model_dir: Path, settings: dict, path: str, chunk: int | None, *, cuda: bool, cpu: bool):
    """One log-prob path of chexrl's learner in a fresh process, beside the plan's prediction."""
    r = run_path_in_subprocess(
        model_dir, {k: settings[k] for k in LEARNER_SETTINGS} | {"chunk_tokens": chunk}
    )
    # everything the learner allocated on the GPU (weights included), or its process's growth on the CPU
    measured = r["peak_gpu_bytes"] if cuda else r["peak_rss_bytes"] - r["rss_start_bytes"]
    image = 256 if not cpu else json.loads((model_dir / "config.json").read_text())["mm_tokens_per_image"]
    step = {k: settings[k] for k in ("prompts", "n", "completion_tokens", "micro_batch")}
    step |= {"image_tokens": image}
    step["prompt_tokens"] = (
        r["sequence_tokens"] // (settings["prompts"] * settings["n"]) - image - step["completion_tokens"]
    )
    gc = settings["gradient_checkpointing"]
    predicted = _plan_learner(model_dir, step, chunk=chunk, gc=gc, cuda=cuda)
    return {
        **r,
        "ran": True,
        "gradient_checkpointing": gc,
        # chexrl generates with vLLM, which this check does not run: the learner's peak is training only
        "generation_peak_bytes": None,
        "training_peak_bytes": measured,
        "measured_peak_bytes": measured,
        "plan_peak_bytes": predicted,
        "plan_over_measured": predicted / measured,
    }


LEARNER_SETTINGS = (
    "prompts",
    "n",
    "completion_tokens",
    "micro_batch",
    "gradient_checkpointing",
    "steps",
    "warmup",
)


def _write(out: Path, figures: dict) -> None:
    from chexrl.bench.common import write_json

    write_json(out / "gpu_check.json", figures)


def gpu_check(*, cpu: bool, out: Path, work: Path, steps: int, warmup: int, trl: bool) -> dict:
    """Both sides, each written to OUT/gpu_check.json as soon as it finishes (a failure of one side
    never loses the other's figures); `ran` False with the reason for a side that did not run."""
    import torch

    from chexrl.bench.common import device_description
    from chexrl.bench.learner import build_bench_model
    from chexrl.config import GRPOConfig

    cuda = torch.cuda.is_available() and not cpu
    if not cpu and not cuda:
        raise SystemExit("gpu_check: no CUDA device here; run it on a GPU machine, or with --cpu")
    # GPU: MedGemma-4B as published (34 layers, 896-px SigLIP tower); CPU: the tiny Gemma3, tiny batch
    started = time.perf_counter()
    model_dir, spec = build_bench_model("tiny-gemma3" if cpu else "medgemma-4b", None, work)
    prompts, n, tokens, micro = (2, 2, 16, 4) if cpu else (8, 4, 300, 4)
    g = GRPOConfig()  # the learner's settings: chexrl's defaults, TRL's side too
    settings = {"prompts": prompts, "n": n, "completion_tokens": tokens, "micro_batch": micro}
    settings |= {"gradient_checkpointing": g.gradient_checkpointing, "steps": steps, "warmup": warmup}
    figures = {"model": spec["name"], "build_seconds": time.perf_counter() - started, "settings": settings}
    figures |= {"device": device_description(), "trl": {"ran": False, "reason": "not run yet"}}
    chexrl = {
        path: _side(
            lambda path=path, chunk=chunk: _chexrl_path(model_dir, settings, path, chunk, cuda=cuda, cpu=cpu)
        )
        for path, chunk in (("chunked", g.logprob_chunk_tokens), ("full", None))
    }
    figures["chexrl"] = chexrl
    if chexrl["chunked"]["ran"] and chexrl["full"]["ran"]:
        figures["peak_mem_chunked_over_full"] = (
            chexrl["chunked"]["measured_peak_bytes"] / chexrl["full"]["measured_peak_bytes"]
        )
    _write(out, figures | {"wall_seconds": time.perf_counter() - started})
    figures["trl"] = (
        _side(lambda: _trl(model_dir, work, settings)) if trl else {"ran": False, "reason": "--no-trl"}
    )
    figures["wall_seconds"] = time.perf_counter() - started
    _write(out, figures)
    return figures


def _print_summary(figures: dict, out: Path) -> None:
    for path, r in figures["chexrl"].items():
        if not r["ran"]:
            print(f"chexrl {path:8s} FAILED: {r['reason']}")
            continue
        print(
            f"chexrl {path:8s} {r['step_seconds_median']:.2f} s/step  training peak "
            f"{r['training_peak_bytes'] / 2**30:.2f} GiB  plan {r['plan_peak_bytes'] / 2**30:.2f} GiB  "
            f"{r['tokens_per_second_fwd_bwd']:.0f} tok/s fwd+bwd"
        )
    t = figures["trl"]
    if t["ran"]:
        print(
            f"trl      {t['median']:.2f} s/step  generation peak {t['generation_peak_bytes'] / 2**30:.2f} GiB"
            f"  training peak {t['training_peak_bytes'] / 2**30:.2f} GiB"
        )
    else:
        print(f"trl      not run: {t['reason']}")
    print(
        f"gradient checkpointing {'on' if figures['settings']['gradient_checkpointing'] else 'off'} on both sides"
    )
    print(f"-> {out / 'gpu_check.json'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny preset on the CPU (the test's run)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/chexrl-gpu-check"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-trl", dest="trl", action="store_false")
    args = parser.parse_args(argv)
    figures = gpu_check(
        cpu=args.cpu, out=args.out, work=args.work, steps=args.steps, warmup=args.warmup, trl=args.trl
    )
    _print_summary(figures, args.out)
    sides = [*figures["chexrl"].values()] + ([figures["trl"]] if args.trl else [])
    if not all(side["ran"] for side in sides):
        sys.exit(1)  # a side that did not run is a failed check, whatever the other measured


if __name__ == "__main__":
    main()
