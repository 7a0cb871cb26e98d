"""`chexrl plan`: its terms against exact counts (LoRA parameters against PEFT's own, parameters against
the built model), its phases and verdicts, the command's errors; and its learner estimate against what
`chexrl bench learner` measures on the CPU at MedGemma-4B's width and vocabulary (within 25%)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.models.memory_plan import (
    GIB,
    PlanSettings,
    StepShape,
    kv_cache_bytes_per_token,
    lora_parameters,
    model_shape,
    plan,
)


def test_shape_and_lora_count_match_the_real_model(tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoConfig

    from chexrl.models.loading import load_model
    from trainer.lora import language_lora_config

    shape = model_shape(AutoConfig.from_pretrained(str(tiny_model_dir)))
    model = load_model(tiny_model_dir)
    assert shape.params_total == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, language_lora_config(16, 32, 0.0))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameters(shape, 16) == trainable


def _medgemma():
    from chexrl.models.presets import MEDGEMMA_4B
    from chexrl.models.tiny import build_tokenizer, make_config

    return model_shape(make_config(MEDGEMMA_4B, build_tokenizer(MEDGEMMA_4B)))


def test_medgemma_plan_phases_and_verdicts():
    shape = _medgemma()
    assert shape.vocab == 262208 and shape.hidden == 2560 and shape.layers == 34
    assert 4.2e9 < shape.params_total < 4.4e9  # MedGemma-4B: 4.3 B with its vision tower
    # 34 layers x K and V x 4 KV heads x 256 x bf16
    assert kv_cache_bytes_per_token(shape) == 34 * 2 * 4 * 256 * 2
    step = StepShape(prompts=8, n=4, prompt_tokens=400, completion_tokens=300, micro_batch=4)
    slept = plan(shape, step, PlanSettings(gpu_gib=80))
    assert slept["fits"] and not slept["problems"]
    phases = slept["phases"]
    assert phases["training"]["engine"] < GIB  # asleep: only the engine's CUDA context stays
    assert phases["generation"]["engine"] == int(0.35 * 80 * GIB)
    # the logits term: one chunk of 256 tokens, not the micro-batch's 1,200 completion tokens
    assert slept["learner"]["logits"] == 256 * 262208 * 8
    full = plan(shape, step, PlanSettings(gpu_gib=80, logprob_chunk_tokens=None))
    assert full["learner"]["logits"] == 4 * 300 * 262208 * 24 > 4 * slept["learner"]["logits"]
    no_ckpt = plan(shape, step, PlanSettings(gpu_gib=80, gradient_checkpointing=False))
    assert no_ckpt["learner"]["activations"] > 10 * slept["learner"]["activations"]
    # without sleep the engine keeps its share through the update; on a 24 GiB card nothing fits
    awake = plan(shape, step, PlanSettings(gpu_gib=80, sleep=False))
    assert awake["phases"]["training"]["engine"] == phases["generation"]["engine"]
    small = plan(shape, step, PlanSettings(gpu_gib=24))
    assert not small["fits"] and any(p.startswith("generation") for p in small["problems"])


def test_plan_command_table_json_and_errors(tmp_path, tiny_gemma3_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--preset", "medgemma-4b", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "training" in result.output and "fits" in result.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["fits"] and doc["model"]["vocab"] == 262208
    assert runner.invoke(app, ["plan", "--model", str(tiny_gemma3_dir)]).exit_code == 0
    too_small = runner.invoke(app, ["plan", "--preset", "medgemma-4b", "--gpu-gib", "16"])
    assert too_small.exit_code == 1 and "DOES NOT FIT" in too_small.output
    for bad, message in (
        (["plan"], "give --preset or --model"),
        (["plan", "--preset", "gpt-5"], "unknown preset"),
        (["plan", "--model", str(tmp_path)], "no config.json"),
    ):
        out = runner.invoke(app, bad)
        assert out.exit_code == 2 and message in out.output, out.output


@pytest.mark.slow
def test_plan_learner_estimate_within_25_percent_of_bench_learner(tmp_path_factory):
    """One learner step of MedGemma-4B's width and vocabulary (1 layer) on the CPU, both paths, through
    `chexrl bench learner`; the plan's learner peak for the same shape against the measured growth of the
    process (peak RSS during the steps - RSS before the model loads)."""
    from transformers import AutoConfig

    work = tmp_path_factory.mktemp("bench-learner")
    out = work / "learner.json"
    args = ["bench", "learner", "--json", str(out), "--work-dir", str(work), "--prompts", "1", "--n", "2"]
    args += ["--layers", "1"]
    # 2 x 128 completion tokens in 32-token chunks: chunking shows at half the lm-head work of 256
    args += ["--completion-tokens", "128", "--micro-batch", "2", "--chunk-tokens", "32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    figures = json.loads(out.read_text())
    assert figures["model"]["vocab_size"] == 262208 and figures["model"]["hidden_size"] == 2560
    chunked, full = figures["paths"]["chunked"], figures["paths"]["full"]
    assert figures["peak_mem_chunked_over_full"] == pytest.approx(
        chunked["peak_rss_bytes"] / full["peak_rss_bytes"]
    )
    assert figures["peak_mem_chunked_over_full"] < 1.0

    shape = model_shape(AutoConfig.from_pretrained(str(work / figures["model"]["preset"])))
    image = shape.image_tokens
    step = StepShape(
        prompts=1,
        n=2,
        image_tokens=image,
        completion_tokens=128,
        micro_batch=2,
        prompt_tokens=chunked["sequence_tokens"] // 2 - image - 128,
    )
    # the CPU learner computes in fp32 (trainer.grpo: the CPU's bf16 backward is ~200x slower)
    assert chunked["dtype"] == full["dtype"] == "float32"
    cpu = PlanSettings(device="cpu", weight_bytes=4, logprob_chunk_tokens=32)
    predicted = plan(shape, step, cpu)["learner_peak"]
    measured = chunked["peak_rss_bytes"] - chunked["rss_start_bytes"]
    assert predicted == pytest.approx(measured, rel=0.25), (predicted / GIB, measured / GIB)
    full_predicted = plan(shape, step, replace(cpu, logprob_chunk_tokens=None))["learner_peak"]
    full_measured = full["peak_rss_bytes"] - full["rss_start_bytes"]
    assert full_predicted == pytest.approx(full_measured, rel=0.25), (
        full_predicted / GIB,
        full_measured / GIB,
    )


def _qwen():
    from chexrl.models.presets import PRESETS
    from chexrl.models.tiny import build_tokenizer, make_config

    chosen = PRESETS["qwen2.5-vl-3b"]
    return model_shape(make_config(chosen, build_tokenizer(chosen)))


def test_engine_workspace_is_max_num_seqs_by_vocabulary_plus_one_layers_forward():
    from chexrl.models.memory_plan import ENGINE_SAMPLER_BYTES_PER_LOGIT, engine_workspace_bytes

    shape = _medgemma()
    sized = engine_workspace_bytes(shape, PlanSettings(max_num_seqs=16, max_num_batched_tokens=8192))
    assert ENGINE_SAMPLER_BYTES_PER_LOGIT == 2 + 4 + 4 + 8 + 4 + 4
    assert sized["sampler"] == 16 * 262208 * 26
    q, kv = 8 * 256, 4 * 256  # MedGemma-4B: 8 query heads, 4 KV heads of 256
    assert sized["forward"] == 8192 * 2 * (4 * 2560 + q + 2 * kv + 3 * 10240)
    default = engine_workspace_bytes(shape, PlanSettings())  # vLLM's 1,024 sequences: 6.5 GiB of logits
    assert default["sampler"] == 64 * sized["sampler"] and default["sampler"] > 6 * GIB
    terms = plan(shape, StepShape(), PlanSettings(max_num_seqs=16))["engine"]
    assert terms["workspace"] == terms["workspace_sampler"] + terms["workspace_forward"]
    assert terms["kv_cache"] == terms["share"] - terms["weights"] - terms["workspace"] - terms["cuda_context"]


def test_image_tokens_from_the_image_size_and_the_visual_token_budget():
    from chexrl.data.images import visual_token_budget, visual_tokens
    from chexrl.models.memory_plan import image_tokens

    qwen = _qwen()
    assert qwen.image_tokens is None
    # 1,024 px: 1,036 px after rounding to 28, 37 x 37 tokens (the processor's own bounds allow it)
    assert image_tokens(qwen, 1024) == 37 * 37
    assert image_tokens(qwen, 512) == 18 * 18
    budget = visual_token_budget("qwen2_5_vl", 256, 512)
    assert image_tokens(qwen, 1024, budget) == visual_tokens("qwen", 1024, 1024, 256, 512) == 22 * 22
    assert image_tokens(_medgemma(), 1024, budget) == 256  # Gemma3: fixed


def test_plan_follows_the_configs_own_values(tmp_path):
    """A config's sampling.max_tokens, batch and mm_processor_kwargs reach the plan: completion tokens,
    the engine's max_num_seqs (its sampler workspace) and Qwen2.5-VL's image tokens."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "rollout: {model: m, num_workers: 1, mm_processor_kwargs: {min_pixels: 200704, max_pixels: 401408}}\n"
        "sampling: {n: 4, max_tokens: 384}\ngrpo: {prompts_per_step: 6}\n"
    )
    out = tmp_path / "plan.json"
    args = ["plan", "--preset", "qwen2.5-vl-3b", "--config", str(config), "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(out.read_text())
    assert doc["step"]["completion_tokens"] == 384 and doc["step"]["image_tokens"] == 22 * 22
    assert doc["settings"]["max_num_seqs"] == 6 * 4
    assert doc["engine"]["workspace_sampler"] == 24 * doc["model"]["vocab"] * 26
    default = CliRunner().invoke(app, ["plan", "--preset", "qwen2.5-vl-3b", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert default.exit_code in (0, 1) and doc["step"]["completion_tokens"] == 512  # sampling.max_tokens
    assert doc["step"]["image_tokens"] == 37 * 37  # a 1,024-px image, no budget set


def test_the_kv_cache_term_matches_the_cpu_engine(rollout_router, rollout_config):
    """The plan's KV bytes per token (K and V of every layer), applied to the CPU engine's cache
    (VLLM_CPU_KVCACHE_SPACE = rollout.kv_cache_gib), give the tokens the real engine's block pool holds
    with every layer keeping every token: blocks x block size / layer groups (tiny Gemma3: a
    sliding-window and a full-attention group drawing from one pool), to within one block. (1 GiB on the
    tiny Gemma3 in bf16: 32,768 blocks of 128 tokens in 2 groups = 2,097,152 tokens of 512 bytes.)"""
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(rollout_config.model))
    kv = rollout_router.info()[0]["kv_cache"]
    assert kv is not None and kv["groups"] >= 1
    # vLLM's "auto" dtype serves the fp32 tiny checkpoint in bf16, its KV cache too
    weight_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[kv["dtype"]]
    engine_tokens = kv["blocks"] * kv["block_size"] // kv["groups"]
    planned = int(rollout_config.kv_cache_gib * GIB) // kv_cache_bytes_per_token(shape, weight_bytes)
    assert abs(engine_tokens - planned) <= kv["block_size"], (kv, planned)
    # vLLM's own capacity reserves a sliding-window group's blocks per request from the scheduling
    # budget, not the window: close to, not equal to, the every-layer-every-token count here
    assert 0.9 * planned <= kv["tokens"] <= 1.1 * planned
