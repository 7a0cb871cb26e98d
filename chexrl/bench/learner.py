"""`chexrl bench learner`: one GRPO learner step at a real model's width and vocabulary, with the
completion log-probs computed in chunks (`grpo.logprob_chunk_tokens`) against the full-logits path.

Each path runs in a fresh Python process (`python -m chexrl.bench.learner`), so its peak memory is its
own: peak resident memory on the CPU (`ru_maxrss`), peak allocated memory on CUDA. The learner is the real
`trainer.grpo.GRPOLearner` (PEFT LoRA, Dr. GRPO loss, reference pass, AdamW), called in-process without
Ray; the step's completions are random token ids of the paper's length (no engine is needed to measure
the update), its images synthetic X-rays at the model's own resolution, its rewards seeded random.

The model: `--preset medgemma-4b --layers 2` is MedGemma-4B's text width (hidden 2,560, vocabulary
262,208, its attention shapes) in 2 decoder layers and a one-layer vision tower that still gives 256 image
tokens (chexrl.models.presets.scaled_preset): what a 2-core CPU can step, with the vocabulary projection,
the part this benchmark is about, at full size.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {"peak_mem_chunked_over_full_max": 0.5}


def build_bench_model(preset: str, layers: int | None, work: Path) -> tuple[Path, dict]:
    """The benchmark's checkpoint under `work` (built once, reused while its config is the same)."""
    from chexrl.models.presets import PRESETS, scaled_preset
    from chexrl.models.tiny import build_model_dir

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    chosen = PRESETS[preset]
    if layers is not None:
        chosen = scaled_preset(chosen, layers=layers, small_vision=True)
    out = work / chosen.name
    stamp = out / "chexrl-preset.json"
    spec = {"name": chosen.name, "config": chosen.config, "processor": chosen.processor}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == spec):
        build_model_dir(out=out, preset=chosen)
        stamp.write_text(json.dumps(spec))
    return out, spec


def step_examples(processor, *, prompts: int, n: int, completion_tokens: int, seed: int):
    """`prompts` x `n` TrainingExamples: the default prompt rendered by the chat template with a synthetic
    X-ray (one per prompt), and `completion_tokens` random ordinary (non-special) token ids each."""
    from chexrl.core.prompts import build_messages
    from chexrl.models.vllm_check import synthetic_image
    from trainer.grpo import TrainingExample

    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)
    text = processor.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    examples = []
    for p in range(prompts):
        buf = io.BytesIO()
        synthetic_image(seed=seed + p).save(buf, format="PNG")
        for _ in range(n):
            ids = [rng.choice(ordinary) for _ in range(completion_tokens)]
            examples.append(TrainingExample(text, buf.getvalue(), ids, [0.0] * completion_tokens))
    return examples


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _reset_peak_rss() -> None:
    """Start the process's peak resident memory (VmHWM) afresh at its current size (Linux >= 4.0): the
    peak then measured is the steps', not loading's (a bf16 checkpoint converted to the CPU learner's
    fp32 holds both copies for a moment)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_learner(
    model_dir: str,
    *,
    chunk_tokens: int | None,
    prompts: int,
    n: int,
    completion_tokens: int,
    micro_batch: int,
    gradient_checkpointing: bool,
    steps: int,
    warmup: int,
    seed: int = 0,
) -> dict:
    """In this process: load the learner, run `warmup` + `steps` GRPO steps; times and peak memory."""
    import peft  # noqa: F401  (imported before the baseline: the learner's code is not its memory)
    import torch
    import transformers  # noqa: F401

    from chexrl.config import GRPOConfig, SamplingConfig
    from trainer.grpo import GRPOLearner

    cuda = torch.cuda.is_available()
    rss_start = _rss_bytes()
    cfg = GRPOConfig(
        micro_batch_size=micro_batch,
        gradient_checkpointing=gradient_checkpointing,
        logprob_chunk_tokens=chunk_tokens,
        max_steps=warmup + steps,
        seed=seed,
    )
    temperature = SamplingConfig().temperature  # the log-probs of the policy the engine samples from
    learner = GRPOLearner(model_dir, cfg, temperature=temperature, max_completion_tokens=completion_tokens)
    examples = step_examples(
        learner.processor, prompts=prompts, n=n, completion_tokens=completion_tokens, seed=seed
    )
    out = {"chunk_tokens": chunk_tokens, "rss_start_bytes": rss_start, "rss_loaded_bytes": _rss_bytes()}
    out["dtype"] = str(next(learner.model.parameters()).dtype).removeprefix("torch.")
    _reset_peak_rss()
    if cuda:
        torch.cuda.synchronize()
        out["gpu_loaded_bytes"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    out |= _timed_steps(learner, examples, n, warmup=warmup, steps=steps, seed=seed)
    out |= {
        "peak_rss_bytes": _status_bytes("VmHWM"),  # since the model loaded
        "trainable_params": sum(p.numel() for p in learner.model.parameters() if p.requires_grad),
        "device": "cuda" if cuda else "cpu",
    }
    if cuda:
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return out


def _timed_steps(learner, examples: list, n: int, *, warmup: int, steps: int, seed: int) -> dict:
    """`warmup` + `steps` learner steps on `examples` with seeded random rewards; the measured steps'
    times, and tokens per second of forward + backward."""
    from trainer.collate import build_policy_batch

    rng = random.Random(seed)
    step_seconds, fwd_bwd, metrics = [], [], {}
    for i in range(warmup + steps):
        rewards = [float(rng.random() < 0.5) for _ in examples]
        t0 = time.perf_counter()
        metrics = learner.step(examples, rewards, n)
        if i >= warmup:
            step_seconds.append(time.perf_counter() - t0)
            fwd_bwd.append(metrics["time/forward_backward"])
    row_tokens = int(build_policy_batch(learner.processor, examples[:1])["input_ids"].shape[1])
    sequence_tokens = row_tokens * len(examples)
    return {
        "step_seconds": step_seconds,
        "step_seconds_median": sorted(step_seconds)[len(step_seconds) // 2],
        "forward_backward_seconds": fwd_bwd,
        # every sequence token goes through each pass: the reference forward (beta > 0) and the policy's
        # forward + backward; tokens / fwd-bwd second counts the batch's tokens once
        "sequence_tokens": sequence_tokens,
        "tokens_per_second_fwd_bwd": sequence_tokens / (sum(fwd_bwd) / len(fwd_bwd)),
        "loss_total": metrics.get("loss/total"),
    }


def run_path_in_subprocess(model_dir: Path, settings: dict, timeout: float | None = None) -> dict:
    """`measure_learner(model_dir, **settings)` in a fresh interpreter: its peak memory is its own."""
    cmd = [sys.executable, "-m", "chexrl.bench.learner", str(model_dir), json.dumps(settings)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"learner benchmark process failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_learner(
    *,
    preset: str,
    layers: int | None,
    prompts: int,
    n: int,
    completion_tokens: int,
    micro_batch: int,
    chunk_tokens: int,
    gradient_checkpointing: bool,
    steps: int,
    warmup: int,
    work_dir: Path,
    paths: tuple[str, ...] = ("chunked", "full"),
) -> dict:
    """Both paths on the same model and batch; the figures and `peak_mem_chunked_over_full`."""
    from chexrl.bench.common import device_description
    from chexrl.models.loading import read_config

    model_dir, spec = build_bench_model(preset, layers, work_dir)
    settings = {
        "prompts": prompts,
        "n": n,
        "completion_tokens": completion_tokens,
        "micro_batch": micro_batch,
        "gradient_checkpointing": gradient_checkpointing,
        "steps": steps,
        "warmup": warmup,
    }
    results = {}
    for path in paths:
        chunk = chunk_tokens if path == "chunked" else None
        results[path] = run_path_in_subprocess(model_dir, {**settings, "chunk_tokens": chunk})
    config = read_config(model_dir)
    text = config.get("text_config", config)
    figures = {
        "model": {
            "preset": spec["name"],
            "hidden_size": text["hidden_size"],
            "vocab_size": text["vocab_size"],
            "layers": text["num_hidden_layers"],
            "dtype": config.get("dtype") or config.get("torch_dtype"),
        },
        "settings": {**settings, "chunk_tokens": chunk_tokens},
        "paths": results,
        "targets": TARGETS,
        "device": device_description(),
    }
    if "chunked" in results and "full" in results:
        key = "peak_gpu_bytes" if results["full"]["device"] == "cuda" else "peak_rss_bytes"
        c, f = results["chunked"], results["full"]
        figures["peak_mem_chunked_over_full"] = c[key] / f[key]
        loaded = "gpu_loaded_bytes" if key == "peak_gpu_bytes" else "rss_loaded_bytes"
        # the same ratio over what the step itself adds on top of the loaded model
        figures["step_mem_chunked_over_full"] = (c[key] - c[loaded]) / (f[key] - f[loaded])
        figures["step_seconds_chunked_over_full"] = c["step_seconds_median"] / f["step_seconds_median"]
    return figures


def summary_table(figures: dict) -> str:
    rows = [
        f"model {figures['model']['preset']} (hidden {figures['model']['hidden_size']}, "
        f"vocab {figures['model']['vocab_size']}, {figures['model']['layers']} layers)"
    ]
    for path, r in figures["paths"].items():
        peak = r.get("peak_gpu_bytes", r["peak_rss_bytes"]) / 2**30
        rows.append(
            f"{path:8s} step {r['step_seconds_median']:.2f} s  peak {peak:.2f} GiB  "
            f"{r['tokens_per_second_fwd_bwd']:.0f} tok/s fwd+bwd"
        )
    if "peak_mem_chunked_over_full" in figures:
        rows.append(
            f"peak_mem_chunked_over_full {figures['peak_mem_chunked_over_full']:.3f} "
            f"(target <= {TARGETS['peak_mem_chunked_over_full_max']})"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    # The per-path worker: python -m chexrl.bench.learner MODEL_DIR SETTINGS_JSON -> one JSON line.
    result = measure_learner(sys.argv[1], **json.loads(sys.argv[2]))
    print(json.dumps(result))
