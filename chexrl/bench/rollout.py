"""`chexrl bench rollout` and `chexrl bench sync`: the rollout worker's throughput and adapter sync time.

rollout: the same batch and sampling (ignore_eos, so every engine produces exactly the same number of
tokens) through (a) the Ray actor, (b) the same engine class in-process, (c) Hugging Face `generate`.
sync: time from handing an adapter to the router until the first completion produced with it.
"""

from __future__ import annotations

import os
import time

from chexrl.bench.common import device_description, percentile
from chexrl.config import RolloutConfig, SamplingConfig
from chexrl.models.vllm_env import set_vllm_env


def bench_prompts(count: int, image_size: int = 64):
    """`count` chat prompts, each with its own synthetic grayscale image."""
    import io

    import numpy as np
    from PIL import Image

    from rollout_worker.types import RolloutPrompt

    prompts = []
    for i in range(count):
        rng = np.random.default_rng(i)
        buf = io.BytesIO()
        Image.fromarray((rng.random((image_size, image_size)) * 255).astype("uint8"), mode="L").save(
            buf, "PNG"
        )
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "List the findings."}]}
        ]
        prompts.append(RolloutPrompt(f"bench-{i}", messages, [buf.getvalue()]))
    return prompts


def _timed_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_rollout(cfg: RolloutConfig, num_prompts: int, n: int, max_tokens: int, repeats: int) -> dict:
    """Runs the three paths in rounds (actor, in-process, HF, actor, ...) so that load from other processes
    on a shared machine hits all three alike; ratios are medians of per-round ratios."""
    import ray

    from rollout_worker.engine import RolloutEngine, has_cuda
    from rollout_worker.router import RolloutRouter

    prompts = bench_prompts(num_prompts)
    sampling = SamplingConfig(n=n, max_tokens=max_tokens, ignore_eos=True, seed=0)
    tokens = num_prompts * n * max_tokens

    set_vllm_env(cfg.kv_cache_gib)  # the in-process engine: same engine layout as inside the actor
    ray.init(num_cpus=max(2, os.cpu_count() or 2), object_store_memory=512 * 1024**2, include_dashboard=False)
    engine = router = None
    try:
        router = RolloutRouter(cfg)
        engine = RolloutEngine(cfg)
        hf_generate = _hf_generate(cfg.model, prompts, sampling)
        paths = {
            "actor": lambda: router.generate(prompts, sampling),
            "inprocess": lambda: engine.generate(prompts, sampling),
            "hf": hf_generate,
        }
        for fn in paths.values():
            fn()  # warm-up: compilation, caches, first-touch allocations
        walls: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(repeats):
            for name, fn in paths.items():
                walls[name].append(_timed_once(fn))
    finally:
        if engine is not None:
            engine.close()
        if router is not None:
            router.shutdown()
        ray.shutdown()

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    ratio = [a / i for a, i in zip(walls["actor"], walls["inprocess"], strict=True)]
    hf_ratio = [h / a for h, a in zip(walls["hf"], walls["actor"], strict=True)]
    return {
        "prompts": num_prompts,
        "group_size": n,
        "max_tokens": max_tokens,
        "tokens_per_batch": tokens,
        "repeats": repeats,
        "model": cfg.model,
        "weight_sync": cfg.resolved_weight_sync(has_cuda()),
        "actor_tokens_per_s": tokens / median(walls["actor"]),
        "inprocess_tokens_per_s": tokens / median(walls["inprocess"]),
        "hf_generate_tokens_per_s": tokens / median(walls["hf"]),
        "actor_over_inprocess": median(ratio),
        "hf_over_actor": median(hf_ratio),
        "wall_s": walls,
        **device_description(),
    }


def _hf_generate(model_dir: str, prompts, sampling: SamplingConfig):
    """A closure running Hugging Face `generate` on the same prompts and sampling (n, temperature, top-p,
    exactly max_tokens tokens)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rollout_worker.engine import decode_image

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    texts = [
        processor.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    images = [[decode_image(b) for b in p.images] for p in prompts]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)

    def run():
        with torch.no_grad():
            model.generate(
                **inputs,
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                num_return_sequences=sampling.n,
                max_new_tokens=sampling.max_tokens,
                min_new_tokens=sampling.max_tokens,
            )

    return run


def bench_sync(cfg: RolloutConfig, iterations: int) -> dict:
    import ray
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from rollout_worker.router import RolloutRouter
    from trainer.lora import export_adapter, language_lora_config

    peft_model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(cfg.model), language_lora_config()
    )
    prompt = bench_prompts(1)
    first_token = SamplingConfig(greedy=True, max_tokens=1)
    ray.init(num_cpus=max(2, os.cpu_count() or 2), object_store_memory=512 * 1024**2, include_dashboard=False)
    try:
        router = RolloutRouter(cfg)
        router.generate(prompt, first_token)  # warm-up
        times_ms, nbytes = [], 0
        for version in range(1, iterations + 1):
            with torch.no_grad():  # a new policy each time, as after an optimizer step
                for name, p in peft_model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.01)
            adapter = export_adapter(peft_model, version)
            nbytes = adapter.nbytes
            start = time.perf_counter()
            router.push_adapter(adapter)
            groups = router.generate(prompt, first_token)
            times_ms.append((time.perf_counter() - start) * 1000)
            assert groups[0].adapter_version == version and groups[0].error is None
        router.shutdown()
    finally:
        ray.shutdown()
    return {
        "iterations": iterations,
        "p50_ms": percentile(times_ms, 50),
        "p95_ms": percentile(times_ms, 95),
        "bytes": nbytes,
        "model": cfg.model,
        "weight_sync": cfg.resolved_weight_sync(torch.cuda.is_available()),
        "times_ms": times_ms,
        "medgemma_4b_rank16": medgemma_adapter_size(),
        **device_description(),
    }


def lora_parameter_count(text_config: dict, rank: int) -> int:
    """LoRA parameters on every attention and MLP projection of a decoder: rank x (in + out) each."""
    h = text_config["hidden_size"]
    inter = text_config["intermediate_size"]
    heads = text_config["num_attention_heads"]
    kv = text_config.get("num_key_value_heads", heads)
    hd = text_config.get("head_dim") or h // heads
    shapes = [
        (h, heads * hd),
        (h, kv * hd),
        (h, kv * hd),
        (heads * hd, h),
        (h, inter),
        (h, inter),
        (inter, h),
    ]
    return text_config["num_hidden_layers"] * sum(rank * (i + o) for i, o in shapes)


def language_model_parameter_count(text_config: dict) -> int:
    """Decoder weights: embeddings plus per-layer projections and norms (tied output head)."""
    h = text_config["hidden_size"]
    inter = text_config["intermediate_size"]
    heads = text_config["num_attention_heads"]
    kv = text_config.get("num_key_value_heads", heads)
    hd = text_config.get("head_dim") or h // heads
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter + 4 * h + 2 * hd
    return text_config["vocab_size"] * h + text_config["num_hidden_layers"] * per_layer + h


def medgemma_adapter_size(rank: int = 16) -> dict:
    """The paper's adapter on MedGemma-4B against its language model, from the published config."""
    from chexrl.models.presets import MEDGEMMA_4B

    text = MEDGEMMA_4B.config["text_config"]
    lora = lora_parameter_count(text, rank)
    full = language_model_parameter_count(text)
    return {
        "rank": rank,
        "adapter_params": lora,
        "adapter_bytes_bf16": 2 * lora,
        "language_model_params": full,
        "language_model_bytes_bf16": 2 * full,
        "adapter_fraction": lora / full,
    }
