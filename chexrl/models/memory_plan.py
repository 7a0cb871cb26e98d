"""How much GPU memory a colocated GRPO run takes, phase by phase, before it runs (`chexrl plan`).

One GPU holds the rollout engine (vLLM) and the learner (HF + PEFT). The step's phases need:
- generation: the engine awake (its `gpu_memory_utilization` share: weights, activations, KV cache) and
  the learner's resident state (weights, LoRA adapter, AdamW moments);
- training: the engine asleep (level 1: weights copied to host memory, KV cache freed; a CUDA context
  stays) or, without sleep, still holding its share, plus the learner's gradients, activations and the
  log-prob computation's logits;
- weight sync: the engine awake again and the learner's resident state (gradients freed).

Everything here is arithmetic on the architecture's shapes (parameters counted exactly on the meta
device) and the batch shape; the terms are written out below, with what each counts. The learner's terms
are checked against `chexrl bench learner`'s measured peak memory on the CPU (tests/test_models_memory_plan.py);
the engine's are vLLM's own accounting (weights + KV cache inside the utilisation share; the KV cache's
bytes per token checked against the CPU engine's own count), the profiling workspace counted from the
config (max_num_seqs x vocabulary logits, max_num_batched_tokens of one layer's activations) and one
stated estimate (a CUDA context per process), never measured on a GPU.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from chexrl.config import GRPOConfig, RolloutConfig, SamplingConfig

GIB = 2**30
CUDA_CONTEXT_BYTES = int(0.5 * GIB)  # estimate: CUDA context + cuBLAS workspace of one process
# vLLM's start-up profiling pass (what it keeps out of the KV cache): a forward of
# `max_num_batched_tokens` tokens and a dummy sampler run over `max_num_seqs` x vocabulary logits.
# Bytes per logit of that sampler run, counted from its ops: the model's bf16 logits (2), their fp32
# copy (4), top-k/top-p's sorted values and int64 indices (4 + 8), the softmax probabilities (4) and the
# exponential noise of the random sample (4).
ENGINE_SAMPLER_BYTES_PER_LOGIT = 26
VLLM_MAX_NUM_SEQS = 1024  # vLLM 0.32's default for the LLM class on a GPU of 70 GiB or more
VLLM_MAX_NUM_BATCHED_TOKENS = 16384  # the same, tokens per forward
QWEN_DEFAULT_PIXELS = (3136, 12845056)  # Qwen2.5-VL-3B's published processor: min_pixels, max_pixels
# Bytes per (token x vocabulary) element of the log-prob computation, counted from its ops.
# Chunked (chexrl.core.logprobs, one chunk at a time, in place where it can): the forward's bf16
# projection (2) while its fp32 copy is made (4), then that copy and one fp32 temporary (logsumexp's exp,
# the entropy's softmax): 8; the backward's fp32 gradient of the logits (4) and its bf16 cast (2): 6.
# Full (one autograd graph over the batch): bf16 logits (2), fp32 logits / T kept for the backward (4),
# exp inside logsumexp (4), the softmax of the backward (4), the fp32 gradient of the logits (4), its
# bf16 cast into the LM head's backward (2), and the model's bf16 (B, T, V) logits and their gathered
# copy (2 + 2).
LOGITS_BYTES_CHUNKED = 8
LOGITS_BYTES_FULL = 24


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of an architecture."""

    family: str
    params_total: int
    params_vision: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    image_tokens: int | None  # Gemma3's fixed mm_tokens_per_image; None for Qwen2.5-VL (resolution-dependent)


@dataclass(frozen=True)
class StepShape:
    """One GRPO step's batch: `prompts` x `n` sequences of prompt text, image and completion tokens."""

    prompts: int = 8
    n: int = SamplingConfig.model_fields["n"].default
    prompt_tokens: int = 120  # text of the rendered prompt, without the image's tokens
    image_tokens: int = 256  # Gemma3's fixed count; Qwen2.5-VL's from the image (`image_tokens`)
    # micro-batches pad to their longest completion, and a GRPO step samples up to max_tokens
    completion_tokens: int = SamplingConfig.model_fields["max_tokens"].default
    micro_batch: int = GRPOConfig.model_fields["micro_batch_size"].default

    @property
    def sequence_tokens(self) -> int:
        return self.prompt_tokens + self.image_tokens + self.completion_tokens


@dataclass(frozen=True)
class PlanSettings:
    gpu_gib: float = 80.0
    gpu_memory_utilization: float = RolloutConfig.model_fields["gpu_memory_utilization"].default
    sleep: bool = True
    gradient_checkpointing: bool = GRPOConfig.model_fields["gradient_checkpointing"].default
    logprob_chunk_tokens: int | None = GRPOConfig.model_fields["logprob_chunk_tokens"].default
    lora_rank: int = GRPOConfig().lora.rank
    weight_bytes: int = 2  # bf16 weights (and activations) in the engine and the learner; 4: fp32
    device: str = "cuda"  # "cpu": no CUDA contexts (how `chexrl bench learner` measures on the CPU)
    max_num_seqs: int = VLLM_MAX_NUM_SEQS  # the engine's (RolloutConfig.max_num_seqs)
    max_num_batched_tokens: int = VLLM_MAX_NUM_BATCHED_TOKENS


def model_shape(config: Any) -> ModelShape:
    """The shape of a transformers config of either family (parameters counted on the meta device)."""
    import torch
    import transformers

    family = config.model_type
    cls = {
        "gemma3": transformers.Gemma3ForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    }.get(family)
    if cls is None:
        raise ValueError(f"model_type {family!r} is not supported; expected gemma3 or qwen2_5_vl")
    with torch.device("meta"):
        model = cls(copy.deepcopy(config))
    total = sum(p.numel() for p in model.parameters())
    vision = sum(
        p.numel() for n, p in model.named_parameters() if ".vision_tower." in f".{n}" or ".visual." in f".{n}"
    )
    text = config.text_config
    heads = text.num_attention_heads
    return ModelShape(
        family=family,
        params_total=total,
        params_vision=vision,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
        image_tokens=getattr(config, "mm_tokens_per_image", None),
    )


def lora_parameters(shape: ModelShape, rank: int) -> int:
    """LoRA A and B of rank r on the language model's q, k, v, o, gate, up and down projections."""
    h, i, q, kv = (
        shape.hidden,
        shape.intermediate,
        shape.heads * shape.head_dim,
        shape.kv_heads * shape.head_dim,
    )
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)  # in + out features of each
    return rank * per_layer * shape.layers


def layer_activation_bytes_per_token(shape: ModelShape, element_bytes: int = 2) -> int:
    """Tensors one decoder layer keeps for its backward, per token, in the weights' dtype
    (`element_bytes`: 2 for bf16): hidden-size tensors (input, two
    norms' outputs, attention output, residuals, post-norms: ~10), the MLP's intermediate-size tensors
    (gate, up, activation, product: 4), q and the attention output (heads x head_dim each), k and v after
    RoPE (kv_heads x head_dim, twice: projected and rotated); and PEFT's fp32 copies of each LoRA input
    (q/k/v/gate/up take the hidden state, o the attention output, down the intermediate)."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    in_weights_dtype = element_bytes * (10 * h + 4 * i + 2 * q + 4 * kv)
    lora_fp32 = 4 * (5 * h + q + i)
    return in_weights_dtype + lora_fp32


def kv_cache_bytes_per_token(shape: ModelShape, weight_bytes: int = 2) -> int:
    """K and V of every layer for one token (an upper bound for Gemma3, whose sliding-window layers vLLM
    may keep shorter)."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * weight_bytes


def learner_terms(shape: ModelShape, step: StepShape, s: PlanSettings) -> dict[str, int]:
    """The learner's memory in bytes, term by term, at its peak (the policy's backward of a micro-batch)."""
    lora = lora_parameters(shape, s.lora_rank)
    m, seq = step.micro_batch, step.sequence_tokens
    tokens = m * seq
    layer = layer_activation_bytes_per_token(shape, s.weight_bytes)
    if s.gradient_checkpointing:  # each layer's input kept; one layer's activations rebuilt at a time
        activations = shape.layers * tokens * shape.hidden * s.weight_bytes + tokens * layer
    else:
        activations = shape.layers * tokens * layer
    completion = m * step.completion_tokens
    if s.logprob_chunk_tokens is None:
        logits = completion * shape.vocab * LOGITS_BYTES_FULL
    else:
        logits = min(s.logprob_chunk_tokens, completion) * shape.vocab * LOGITS_BYTES_CHUNKED
    return {
        "cuda_context": CUDA_CONTEXT_BYTES if s.device == "cuda" else 0,
        "weights": shape.params_total * s.weight_bytes,
        "adapter_fp32": lora * 4,
        "adamw_state": lora * 8,
        "gradients": lora * 4,
        "activations": activations + tokens * shape.hidden * s.weight_bytes,  # + the final hidden states
        "logits": logits,
    }


def image_tokens(shape: ModelShape, image_px: int, pixels: dict | None = None) -> int:
    """Image tokens of one square `image_px` image: Gemma3's fixed mm_tokens_per_image; Qwen2.5-VL's from
    its resize rule (28 px per token side) within `pixels`' min_pixels/max_pixels (the checkpoint's
    processor settings overridden by `rollout.mm_processor_kwargs`, such as
    `chexrl.data.images.visual_token_budget`; the published processor's bounds where absent)."""
    from chexrl.data.images import QWEN_FACTOR, smart_resize

    if shape.image_tokens is not None:
        return shape.image_tokens
    pixels = pixels or {}
    low = pixels.get("min_pixels", QWEN_DEFAULT_PIXELS[0])
    high = pixels.get("max_pixels", QWEN_DEFAULT_PIXELS[1])
    h, w = smart_resize(image_px, image_px, QWEN_FACTOR, low, high)
    return (h // QWEN_FACTOR) * (w // QWEN_FACTOR)


def engine_workspace_bytes(shape: ModelShape, s: PlanSettings) -> dict[str, int]:
    """What vLLM's profiling pass takes besides weights and KV cache: the sampler's max_num_seqs x vocabulary
    logits (`ENGINE_SAMPLER_BYTES_PER_LOGIT`) and one decoder layer's activations over max_num_batched_tokens
    (bf16 hidden-size tensors: input, norm, attention output, residual (4); q, k, v; the MLP's gate, up and
    product (3 x intermediate))."""
    sampler = s.max_num_seqs * shape.vocab * ENGINE_SAMPLER_BYTES_PER_LOGIT
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_token = 2 * (4 * shape.hidden + q + 2 * kv + 3 * shape.intermediate)
    return {"sampler": sampler, "forward": s.max_num_batched_tokens * per_token}


def engine_terms(shape: ModelShape, step: StepShape, s: PlanSettings) -> dict:
    share = int(s.gpu_memory_utilization * s.gpu_gib * GIB)
    weights = shape.params_total * s.weight_bytes
    workspace = engine_workspace_bytes(shape, s)
    kv_cache = share - weights - sum(workspace.values()) - CUDA_CONTEXT_BYTES
    per_token = kv_cache_bytes_per_token(shape, s.weight_bytes)
    needed = step.prompts * step.n * step.sequence_tokens * per_token
    return {
        "share": share,
        "weights": weights,
        "workspace": sum(workspace.values()),
        "workspace_sampler": workspace["sampler"],
        "workspace_forward": workspace["forward"],
        "cuda_context": CUDA_CONTEXT_BYTES,
        "kv_cache": kv_cache,
        "kv_bytes_per_token": per_token,
        "kv_needed": needed,
        "kv_tokens": max(kv_cache, 0) // per_token,
        "asleep": CUDA_CONTEXT_BYTES,  # level 1: weights to host memory, KV cache freed
    }


def plan(shape: ModelShape, step: StepShape, s: PlanSettings) -> dict:
    """The per-phase budget, whether each phase fits in `gpu_gib`, and the terms behind it (bytes)."""
    learner = learner_terms(shape, step, s)
    engine = engine_terms(shape, step, s)
    resident = sum(learner[k] for k in ("cuda_context", "weights", "adapter_fp32", "adamw_state"))
    training_learner = resident + learner["gradients"] + learner["activations"] + learner["logits"]
    engine_training = engine["asleep"] if s.sleep else engine["share"]
    phases = {
        "generation": {"engine": engine["share"], "learner": resident},
        "training": {"engine": engine_training, "learner": training_learner},
        "weight_sync": {"engine": engine["share"], "learner": resident},
    }
    capacity = int(s.gpu_gib * GIB)
    for p in phases.values():
        p["total"] = p["engine"] + p["learner"]
        p["fits"] = p["total"] <= capacity
    problems = [
        f"{name}: needs {p['total'] / GIB:.1f} GiB of {s.gpu_gib:g}"
        for name, p in phases.items()
        if not p["fits"]
    ]
    if engine["kv_cache"] < engine["kv_needed"]:
        problems.append(
            f"generation: the KV cache holds {engine['kv_tokens']:,} tokens, the step's "
            f"{step.prompts * step.n} sequences need {step.prompts * step.n * step.sequence_tokens:,} "
            "(raise gpu_memory_utilization or sample fewer at once)"
        )
    return {
        "model": asdict(shape),
        "step": {**asdict(step), "sequence_tokens": step.sequence_tokens},
        "settings": asdict(s),
        "learner": learner,
        "learner_peak": training_learner,
        "engine": engine,
        "phases": phases,
        "fits": not problems,
        "problems": problems,
    }


def render_table(result: dict) -> str:
    """The plan as a plain-text table (GiB)."""
    g = lambda b: f"{b / GIB:7.2f}"  # noqa: E731
    s, m = result["settings"], result["model"]
    lines = [
        f"{m['family']}: {m['params_total'] / 1e9:.2f} B parameters, hidden {m['hidden']}, vocabulary "
        f"{m['vocab']:,}, {m['layers']} layers; GPU {s['gpu_gib']:g} GiB, vLLM share {s['gpu_memory_utilization']}, "
        f"sleep {'on' if s['sleep'] else 'off'}",
        "",
        f"{'phase':12s} {'engine':>7s} {'learner':>7s} {'total':>7s}  fits",
    ]
    for name, p in result["phases"].items():
        lines.append(
            f"{name:12s} {g(p['engine'])} {g(p['learner'])} {g(p['total'])}  {'yes' if p['fits'] else 'NO'}"
        )
    lines += ["", "learner at its peak (training):"]
    lines += [f"  {k:14s} {g(v)}" for k, v in result["learner"].items()]
    e = result["engine"]
    lines += [
        "engine (awake):",
        f"  {'weights':14s} {g(e['weights'])}",
        f"  {'workspace':14s} {g(e['workspace'])}  (profiling: sampler {g(e['workspace_sampler']).strip()}"
        f" GiB for max_num_seqs {s['max_num_seqs']:,} x vocabulary, forward {g(e['workspace_forward']).strip()} GiB)",
        f"  {'kv_cache':14s} {g(e['kv_cache'])}  = {e['kv_tokens']:,} tokens; the step needs {g(e['kv_needed']).strip()} GiB",
        "",
        "fits" if result["fits"] else "DOES NOT FIT: " + "; ".join(result["problems"]),
    ]
    return "\n".join(lines)
