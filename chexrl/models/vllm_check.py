"""Check that a checkpoint directory runs in vLLM with an image and a LoRA adapter.

    python -m chexrl.models.vllm_check MODEL_DIR [--lora DIR] [--image PNG] [--json OUT]

Steps: render a chat-template prompt holding one image; start an engine with enable_lora=True and
max_lora_rank=16; sample n=4 completions (temperature 0.8, top_p 0.95, fixed seed); sample again with
a LoRA adapter (a random one is written when --lora is not given) passed as a LoRARequest; then score
a fixed answer teacher-forced without the adapter, with it as a LoRARequest and with it merged into the
weights (the rollout worker's `merged` weight sync, `chexrl.models.merged_sync`); report as JSON and
exit non-zero unless the adapter changed the outputs and both ways of serving it give the same
log-probs. Run it as its own process: the engine core runs in it, and on the CPU its KV cache is sized
by VLLM_CPU_KVCACHE_SPACE (GiB).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chexrl.models.adapter_io import load_adapter_dir
from chexrl.models.adapters import make_random_lora
from chexrl.models.loading import load_processor
from chexrl.models.merged_sync import MergedWeightsSlot
from chexrl.models.vllm_env import set_vllm_env

# LoRA and merged weights run the same sums in another order, in bf16: their log-probs agree to this much
# (measured on the tiny models: 0.008-0.025 for Gemma3, 0.034-0.048 for Qwen2.5-VL; a random adapter moves
# them by 0.8 or more).
MERGED_TOLERANCE = 0.1
FIXED_ANSWER = "<think>The heart is enlarged.</think><solution>Cardiomegaly</solution>"


def synthetic_image(size: int = 64, seed: int = 0) -> Any:
    """A grayscale noise-and-blob image, as RGB (a stand-in radiograph)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-(((yy - size * 0.4) ** 2 + (xx - size * 0.6) ** 2) / (2 * (size / 6) ** 2)))
    pixels = np.clip(0.6 * blob + 0.4 * rng.random((size, size)), 0, 1)
    return Image.fromarray((pixels * 255).astype("uint8"), mode="L").convert("RGB")


def render_prompt(model_dir: str | Path, question: str) -> str:
    """The chat-template prompt for one image and a question, without the leading BOS (the engine's
    tokenizer adds it)."""
    processor = load_processor(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = processor.tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def run(model_dir: str, lora_dir: str | None, image_path: str | None, max_tokens: int = 16) -> dict[str, Any]:
    set_vllm_env(kv_cache_gib=1)  # 1 GiB unless set; the engine core in this process (merged weights)
    from PIL import Image
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    if lora_dir is None:
        lora_dir = str(make_random_lora(model_dir, tempfile.mkdtemp(prefix="chexrl-lora-")))
    image = Image.open(image_path).convert("RGB").resize((64, 64)) if image_path else synthetic_image()
    prompt = {
        "prompt": render_prompt(model_dir, "List the findings on this chest X-ray."),
        "multi_modal_data": {"image": image},
    }

    start = time.perf_counter()
    llm = LLM(
        model=model_dir,
        enable_lora=True,
        max_lora_rank=16,
        max_loras=1,
        max_model_len=1024,
        max_num_seqs=8,
        limit_mm_per_prompt={"image": 1},
        seed=0,
    )
    engine_s = time.perf_counter() - start
    params = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_tokens=max_tokens, seed=0)

    start = time.perf_counter()
    base = [c.token_ids for c in llm.generate([prompt], params, use_tqdm=False)[0].outputs]
    base_s = time.perf_counter() - start
    start = time.perf_counter()
    request = LoRARequest("random-adapter", 1, lora_dir)
    adapted = [
        c.token_ids for c in llm.generate([prompt], params, lora_request=request, use_tqdm=False)[0].outputs
    ]
    lora_s = time.perf_counter() - start
    merged = merged_against_lora(llm, model_dir, lora_dir, prompt, request)
    tokenizer = llm.get_tokenizer()
    return {
        "model_dir": model_dir,
        "engine_start_s": round(engine_s, 2),
        "generate_s": round(base_s, 3),
        "generate_lora_s": round(lora_s, 3),
        "base": [list(t) for t in base],
        "lora": [list(t) for t in adapted],
        "base_text": [tokenizer.decode(t) for t in base],
        "lora_text": [tokenizer.decode(t) for t in adapted],
        "lora_changed_outputs": [list(t) for t in base] != [list(t) for t in adapted],
        **merged,
    }


def merged_against_lora(llm, model_dir: str, lora_dir: str, prompt: dict, request) -> dict:
    """Log-probabilities of a fixed answer after the prompt, teacher-forced (`prompt_logprobs`): without
    the adapter, with it as a LoRARequest, then with it merged into the weights.

    Teacher forcing compares the same tokens in the same contexts: a tiny random model's top tokens are
    often within 0.01 of each other, so sampled or greedy paths may part on a rounding difference."""
    from vllm import SamplingParams

    scored = {**prompt, "prompt": prompt["prompt"] + FIXED_ANSWER}
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)

    def logprobs(**kwargs) -> list[float]:
        out = llm.generate([scored], params, use_tqdm=False, **kwargs)[0]
        return [next(iter(entry.values())).logprob for entry in out.prompt_logprobs[1:]]

    base = logprobs()
    lora = logprobs(lora_request=request)
    MergedWeightsSlot(llm, model_dir).install(load_adapter_dir(lora_dir, version=1))
    merged = logprobs()
    gaps = [abs(a - b) for a, b in zip(lora, merged, strict=True)]
    return {
        "scored_tokens": len(lora),
        "merged_vs_lora_max_logprob_diff": max(gaps),
        "merged_vs_lora_mean_logprob_diff": sum(gaps) / len(gaps),
        "base_vs_lora_max_logprob_diff": max(abs(a - b) for a, b in zip(base, lora, strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--lora", default=None, help="a PEFT adapter directory (default: a random one)")
    parser.add_argument("--image", default=None, help="an image file (default: a synthetic 64x64 one)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args.model_dir, args.lora, args.image, args.max_tokens)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    ok = (
        report["lora_changed_outputs"]
        and report["merged_vs_lora_max_logprob_diff"] < MERGED_TOLERANCE
        and report["base_vs_lora_max_logprob_diff"] > 5 * MERGED_TOLERANCE
        and all(len(t) > 0 for t in report["base"] + report["lora"])
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
