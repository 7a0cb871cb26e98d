"""The prepared GPU check (`scripts/gpu_check.sh`): the GRPO learner at MedGemma-4B's full size on CUDA,
TRL's GRPOTrainer on the same model and batch, and `chexrl plan`'s prediction beside each measurement.

Written for the lent GPU machine, which has torch, transformers, peft and accelerate but no vLLM, Ray or
network: only the learner runs there (random bf16 weights, the paper's batch: 8 prompts x 4 completions
of 300 tokens, 256 image tokens). `--cpu` runs the same code end to end at the tiny preset's size, so a
test keeps the script from rotting. Writes one JSON file:

- chexrl: for the chunked and the full-logits path, s/step, peak GPU memory (allocated), tokens/s of
  forward+backward (chexrl.bench.learner, one fresh process per path);
- trl: TRL's step (generation with transformers `generate` + update) and its update alone (step minus
  generation), peak GPU memory, or the reason it did not run (no trl installed);
- plan: the learner's predicted peak for each path, and predicted / measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _plan_learner(model_dir: Path, step: dict, *, chunk: int | None, gc: bool, cuda: bool) -> int:
    from transformers import AutoConfig

    from chexrl.models.memory_plan import PlanSettings, StepShape, model_shape, plan

    shape = model_shape(AutoConfig.from_pretrained(str(model_dir)))
    s = PlanSettings(gradient_checkpointing=gc, logprob_chunk_tokens=chunk, device="cuda" if cuda else "cpu")
    result = plan(shape, StepShape(**step), s)
    # measured peaks exclude the CUDA context (max_memory_allocated) and the interpreter (the RSS at start)
    return result["learner_peak"] - result["learner"]["cuda_context"]


def _trl(
    model_dir: Path, work: Path, *, prompts: int, n: int, tokens: int, micro: int, steps: int, warmup: int
):
    """TRL's GRPOTrainer on the same model, LoRA, batch and completion length, transformers generation."""
    import torch

    from chexrl.bench.step import bench_config, prepare
    from chexrl.bench.step_trl import run_trl_isolated

    try:
        import trl  # noqa: F401
    except ImportError as err:
        return {
            "ran": False,
            "reason": f"trl is not installed here ({err}); carry its wheel (scripts/gpu_wheels.sh)",
        }
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
        n=n,
        max_tokens=tokens,
        micro_batch=micro,
        max_model_len=4096,
    )
    out = run_trl_isolated(cfg, model, samples, work, warmup, "transformers")
    out["update_seconds"] = [
        s - g for s, g in zip(out["step_seconds"], out["generation_seconds"], strict=True)
    ]
    out["ran"] = True
    out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return out


def gpu_check(*, cpu: bool, out: Path, work: Path, steps: int, warmup: int, trl: bool) -> dict:
    import torch

    from chexrl.bench.common import device_description
    from chexrl.bench.learner import build_bench_model, run_path_in_subprocess
    from chexrl.config import GRPOConfig

    cuda = torch.cuda.is_available() and not cpu
    if not cpu and not cuda:
        raise SystemExit("gpu_check: no CUDA device here; run it on the lent GPU, or with --cpu")
    # GPU: MedGemma-4B as published (34 layers, 896-px SigLIP tower); CPU: the tiny Gemma3, tiny batch
    preset, layers = ("tiny-gemma3", None) if cpu else ("medgemma-4b", None)
    prompts, n, tokens, micro = (2, 2, 16, 4) if cpu else (8, 4, 300, 4)
    started = time.perf_counter()
    model_dir, spec = build_bench_model(preset, layers, work)
    build_s = time.perf_counter() - started
    settings = {"prompts": prompts, "n": n, "completion_tokens": tokens, "micro_batch": micro}
    g = GRPOConfig()  # the learner's settings: chexrl's defaults
    settings.update(gradient_checkpointing=g.gradient_checkpointing, steps=steps, warmup=warmup)
    chexrl = {}
    for path, chunk in (("chunked", g.logprob_chunk_tokens), ("full", None)):
        r = run_path_in_subprocess(model_dir, {**settings, "chunk_tokens": chunk})
        # everything the learner allocated on the GPU (weights included), or its process's growth on the CPU
        measured = r["peak_gpu_bytes"] if cuda else r["peak_rss_bytes"] - r["rss_start_bytes"]
        image = 256 if not cpu else json.loads((model_dir / "config.json").read_text())["mm_tokens_per_image"]
        step = {
            "prompts": prompts,
            "n": n,
            "completion_tokens": tokens,
            "micro_batch": micro,
            "image_tokens": image,
        }
        step["prompt_tokens"] = r["sequence_tokens"] // (prompts * n) - image - tokens
        predicted = _plan_learner(model_dir, step, chunk=chunk, gc=g.gradient_checkpointing, cuda=cuda)
        chexrl[path] = {
            **r,
            "measured_peak_bytes": measured,
            "plan_peak_bytes": predicted,
            "plan_over_measured": predicted / measured,
        }
    figures = {
        "model": spec["name"],
        "build_seconds": build_s,
        "settings": settings,
        "chexrl": chexrl,
        "peak_mem_chunked_over_full": chexrl["chunked"]["measured_peak_bytes"]
        / chexrl["full"]["measured_peak_bytes"],
        "trl": _trl(
            model_dir, work, prompts=prompts, n=n, tokens=tokens, micro=micro, steps=steps, warmup=warmup
        )
        if trl
        else {"ran": False, "reason": "--no-trl"},
        "device": device_description(),
        "wall_seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return figures


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
    for path, r in figures["chexrl"].items():
        print(
            f"chexrl {path:8s} {r['step_seconds_median']:.2f} s/step  peak {r['measured_peak_bytes'] / 2**30:.2f} GiB"
            f"  plan {r['plan_peak_bytes'] / 2**30:.2f} GiB  {r['tokens_per_second_fwd_bwd']:.0f} tok/s fwd+bwd"
        )
    t = figures["trl"]
    print(f"trl      {t['median']:.2f} s/step" if t["ran"] else f"trl      not run: {t['reason']}")
    print(f"-> {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
