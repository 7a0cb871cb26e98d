"""The check that the rollout engine serves the policy the learner trains: both sides' log-probs on the
same distribution (the model's own, temperature 1: vLLM's "raw_logprobs"), the mean and p99 of
|delta log p| per completion token, and a warning once per run, naming the step, when an engine serves
another version's weights under the new version's id (real vLLM worker, real learner)."""

from __future__ import annotations

import logging

import pytest
import torch

from chexrl.config import GRPOConfig, SamplingConfig
from trainer.engine_gap import MEAN, P99, EngineGapWatch
from trainer.grpo import GRPOLearner, TrainingExample, engine_logp_gaps


def test_the_watch_warns_once_naming_the_first_step_over_the_threshold(caplog):
    watch = EngineGapWatch(threshold=0.05)
    with caplog.at_level(logging.WARNING, logger="trainer.engine_gap"):
        assert watch.observe(1, {MEAN: 0.006, P99: 0.02}) is None
        assert watch.observe(2, {}) is None  # a step without an update has no gap
        message = watch.observe(3, {MEAN: 0.2, P99: 0.8})
        assert watch.observe(4, {MEAN: 0.3, P99: 0.9}) is None
    assert message is not None and message.startswith("step 3:") and "0.2000" in message
    assert [r.getMessage() for r in caplog.records] == [message]


def test_gaps_are_per_completion_token_where_the_engine_reported_one():
    model_logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    examples = [
        TrainingExample("p", b"", [1, 2, 3], [-1.5, -2.0, -2.0]),
        TrainingExample("p", b"", [4], [-0.25]),
        TrainingExample("p", b"", [], []),
    ]
    mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    model_logp = torch.cat([model_logp, torch.zeros(1, 3)])
    assert engine_logp_gaps(model_logp, mask, examples).tolist() == [0.5, 0.0, 1.0, 0.25]


@pytest.mark.parametrize("chunk", [None, 3])
def test_model_logprobs_are_the_temperature_one_distribution(chunk, tiny_gemma3_dir):
    """completion_logprobs' `model_logprobs` equal log_softmax of the plain logits (no temperature), on
    both the full-logits and the chunked path, while `logp` stays at the sampling temperature."""
    from chexrl.core.prompts import build_messages
    from chexrl.models.loading import load_model, load_processor
    from tests.fixtures.rollout import png_bytes
    from trainer.collate import build_policy_batch, completion_logits, completion_logprobs

    model, processor = load_model(tiny_gemma3_dir), load_processor(tiny_gemma3_dir)
    text = processor.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    examples = [
        TrainingExample(text, png_bytes(0), [5, 9, 13, 17], []),
        TrainingExample(text, png_bytes(1), [7, 8], []),
    ]
    batch = build_policy_batch(processor, examples)
    with torch.no_grad():
        logp, mask, model_logp = completion_logprobs(
            model, batch, 0.8, model_logprobs=True, chunk_tokens=chunk
        )
        logits, targets, _ = completion_logits(model, batch)
    plain = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1) * mask
    tempered = torch.log_softmax(logits.float() / 0.8, -1).gather(-1, targets[..., None]).squeeze(-1) * mask
    assert torch.allclose(model_logp, plain, atol=1e-5) and torch.allclose(logp, tempered, atol=1e-5)
    assert not torch.allclose(model_logp, logp, atol=1e-3)


def _step_gap(learner, router, images) -> dict:
    from tests.fixtures.rollout import image_prompt

    prompts = [image_prompt(f"gap-{i}", im) for i, im in enumerate(images)]
    groups = router.generate(prompts, SamplingConfig(n=2, max_tokens=24, seed=0))
    examples = [
        TrainingExample(g.prompt_text, images[i], c.token_ids, c.logprobs)
        for i, g in enumerate(groups)
        for c in g.completions
    ]
    return learner.step(examples, [float(i % 2) for i in range(len(examples))], 2)


def test_a_wrong_adapter_in_the_engine_is_warned_about(rollout_router, tiny_gemma3_dir, caplog):
    """The learner's adapter pushed as version v: the gap stays under grpo.engine_logp_diff_warn. Another
    version's weights pushed under the id v + 1: the gap passes it and the watch warns, naming the step."""
    from tests.fixtures.rollout import make_adapter, png_bytes

    cfg = GRPOConfig(learning_rate=1e-7)
    learner = GRPOLearner(str(tiny_gemma3_dir), cfg, temperature=0.8, max_completion_tokens=24)
    with torch.no_grad():  # a trained-looking adapter, not the all-zero start
        gen = torch.Generator().manual_seed(1)
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    images = [png_bytes(40 + i) for i in range(2)]
    watch = EngineGapWatch(cfg.engine_logp_diff_warn)
    right = rollout_router.version + 1
    rollout_router.push_adapter(learner.export(right))
    metrics = _step_gap(learner, rollout_router, images)
    assert 0 < metrics[MEAN] < cfg.engine_logp_diff_warn and metrics[P99] >= metrics[MEAN]
    assert watch.observe(1, metrics) is None
    wrong = make_adapter(tiny_gemma3_dir, right + 1, seed=7)  # other weights under the new version's id
    rollout_router.push_adapter(wrong)
    with caplog.at_level(logging.WARNING, logger="trainer.engine_gap"):
        metrics = _step_gap(learner, rollout_router, images)
        message = watch.observe(2, metrics)
    assert metrics[MEAN] > cfg.engine_logp_diff_warn
    assert message is not None and message.startswith("step 2:")
    assert any(r.getMessage() == message for r in caplog.records)
