"""The GRPO learner on the tiny Gemma3: one update moves the adapter in the direction of the advantages."""

import pytest
import torch

from chexrl.config import GRPOConfig
from chexrl.core.parsing import format_completion
from chexrl.core.prompts import build_messages
from tests.fixtures.rollout import png_bytes
from trainer.grpo import GRPOLearner, TrainingExample


def _examples(learner, completions):
    messages = build_messages()
    prompt = learner.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tok = learner.processor.tokenizer
    image = png_bytes(0)
    return [
        TrainingExample(prompt, image, tok(text, add_special_tokens=False)["input_ids"], [])
        for text in completions
    ]


@pytest.fixture(scope="module")
def learner(tiny_gemma3_dir):
    cfg = GRPOConfig(learning_rate=1e-2, micro_batch_size=2, lora={"dropout": 0.0})
    return GRPOLearner(str(tiny_gemma3_dir), cfg, temperature=0.8, max_completion_tokens=64)


def _sequence_logp(learner, examples):
    from trainer.collate import build_policy_batch, completion_logprobs

    learner.model.eval()
    with torch.no_grad():
        logp, mask = completion_logprobs(learner.model, build_policy_batch(learner.processor, examples), 0.8)
    learner.model.train()
    return (logp * mask).sum(dim=1)


def test_update_raises_the_likelihood_of_rewarded_completions(learner):
    good = format_completion("Enlarged heart.", ["Cardiomegaly"])
    bad = format_completion("Clear.", ["No Finding"])
    examples = _examples(learner, [good, bad, good, bad])
    before = _sequence_logp(learner, examples)
    metrics = learner.step(examples, rewards=[1.0, 0.0, 1.0, 0.0], group_size=4)
    after = _sequence_logp(learner, examples)
    # the first step starts from the reference (LoRA B = 0): KL is exactly zero
    assert metrics["loss/kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["policy/clip_frac"] == 0.0  # one pass: ratio == 1
    assert (after[0] - before[0]) > 0 and (after[1] - before[1]) < 0
    assert metrics["optim/grad_norm"] > 0


def test_zero_advantage_and_zero_kl_leave_the_policy(learner, tiny_gemma3_dir):
    fresh = GRPOLearner(
        str(tiny_gemma3_dir), GRPOConfig(lora={"dropout": 0.0}), temperature=1.0, max_completion_tokens=8
    )
    examples = _examples(fresh, [format_completion("x", ["Edema"])] * 4)
    state = {k: v.clone() for k, v in fresh.state()["adapter"].items()}
    metrics = fresh.step(examples, rewards=[0.5] * 4, group_size=4)
    assert metrics["loss/total"] == pytest.approx(0.0, abs=1e-7)
    after = fresh.state()["adapter"]
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_state_round_trip(learner):
    saved = learner.state()
    adapter = learner.export(version=7)
    assert adapter.version == 7 and adapter.nbytes > 0
    learner.load_state(saved)
    assert all(torch.equal(saved["adapter"][k], v) for k, v in learner.state()["adapter"].items())


def test_entropy_is_the_masked_token_mean(learner):
    """`policy/entropy` equals the entropy of softmax(logits / T) at each completion position, averaged over
    every completion token of the step (micro-batches of unequal lengths weighted by tokens, padding
    excluded), computed here from a plain full-sequence forward."""
    from trainer.collate import build_policy_batch, model_inputs

    short, long = format_completion("x", ["Edema"]), format_completion("A long finding. " * 4, ["Edema"])
    # micro_batch_size 2: chunk 1 pads its short row, chunk 2 has more tokens than chunk 1
    examples = _examples(learner, [short, long, long, long])
    batch = build_policy_batch(learner.processor, examples)
    assert len({len(e.completion_ids) for e in examples}) == 2
    with torch.no_grad():  # lora dropout is 0: train mode is deterministic
        logits = learner.model(**model_inputs(batch)).logits  # every position, no logits_to_keep
    entropies = []
    for row, ex in enumerate(examples):
        start = int(batch["completion_start"][row])
        picked = logits[row, start - 1 : start - 1 + len(ex.completion_ids)].float() / learner.temperature
        entropies.append(torch.distributions.Categorical(logits=picked).entropy())
    expected = float(torch.cat(entropies).mean())

    metrics = learner.step(examples, rewards=[1.0, 0.0, 0.0, 1.0], group_size=2)
    assert metrics["policy/entropy"] == pytest.approx(expected, rel=1e-5)
    assert metrics["policy/entropy"] > 0.0


def test_masked_truncated_completions_carry_no_gradient(tiny_gemma3_dir):
    """mask_truncated_completions (DAPO's overlong filtering): a truncated completion with the only
    non-zero advantage gives no gradient; unmasked, the same batch does."""
    cfg = GRPOConfig(beta=0.0, mask_truncated_completions=True, micro_batch_size=4)
    masked = GRPOLearner(str(tiny_gemma3_dir), cfg, temperature=1.0, max_completion_tokens=16)
    texts = [format_completion("a", ["Edema"]), format_completion("b", ["Edema"])]
    examples = _examples(masked, [texts[0], texts[1], texts[1], texts[1]])
    # every completion cut off at max_tokens: nothing to learn from, the adapter stays where it was
    truncated = [
        TrainingExample(e.prompt_text, e.image, e.completion_ids, [], truncated=True) for e in examples
    ]
    before = {k: v.clone() for k, v in masked.state()["adapter"].items()}
    metrics = masked.step(truncated, rewards=[1.0, 0.0, 0.0, 0.0], group_size=4)
    assert metrics["optim/grad_norm"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in masked.state()["adapter"].items())

    # the same rollouts with only the first one truncated: the other three still train
    partly = [truncated[0], *examples[1:]]
    metrics = masked.step(partly, rewards=[1.0, 0.0, 0.0, 0.0], group_size=4)
    assert metrics["optim/grad_norm"] > 0.0


@pytest.mark.parametrize(
    ("kind", "warmup_ratio", "expected"),
    [
        ("linear", 0.0, [1.0, 0.75, 0.5, 0.25]),
        ("constant", 0.0, [1.0, 1.0, 1.0, 1.0]),
        ("constant", 0.25, [0.0, 1.0, 1.0, 1.0]),  # transformers' plain "constant" would skip the warmup
        ("cosine", 0.0, [1.0, 0.5 + 0.5 * 2**-0.5, 0.5, 0.5 - 0.5 * 2**-0.5]),
    ],
)
def test_learning_rate_schedule_per_grpo_step(kind, warmup_ratio, expected):
    from trainer.grpo import learning_rate_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2.0)
    cfg = GRPOConfig(max_steps=4, learning_rate=2.0, lr_scheduler_type=kind, warmup_ratio=warmup_ratio)
    schedule = learning_rate_schedule(optimizer, cfg)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([2.0 * f for f in expected])


def _one_step(model_dir, **settings):
    """A fresh learner's metrics and adapter after one step on a fixed, non-trivial batch (beta > 0 and a
    non-zero adapter start, so the KL and ratio terms are not all zero)."""
    cfg = GRPOConfig(learning_rate=1e-2, beta=0.15, num_iterations=2, lora={"dropout": 0.0}, **settings)
    learner = GRPOLearner(str(model_dir), cfg, temperature=0.8, max_completion_tokens=64)
    torch.manual_seed(3)
    for name, p in learner.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    texts = [format_completion("x" * k, ["Edema"] if k % 2 else ["Cardiomegaly"]) for k in range(1, 9)]
    metrics = learner.step(_examples(learner, texts), rewards=[1, 0, 0.5, 0, 1, 1, 0, 0.2], group_size=4)
    return metrics, learner.state()["adapter"]


def test_micro_batches_chunks_and_checkpointing_change_nothing(tiny_gemma3_dir):
    """One micro-batch of 8 and four of 2 log the same step (the Dr. GRPO parts add up, token means are
    weighted); chunked log-probs and gradient checkpointing give the same update as the full path."""
    base_metrics, base_adapter = _one_step(
        tiny_gemma3_dir, micro_batch_size=8, logprob_chunk_tokens=None, gradient_checkpointing=False
    )
    for settings in (
        {"micro_batch_size": 2, "logprob_chunk_tokens": None, "gradient_checkpointing": False},
        {"micro_batch_size": 2, "logprob_chunk_tokens": 16, "gradient_checkpointing": True},
    ):
        metrics, adapter = _one_step(tiny_gemma3_dir, **settings)
        for key in (
            "loss/total",
            "loss/policy",
            "loss/kl",
            "policy/ratio_mean",
            "policy/entropy",
            "optim/grad_norm",
        ):
            assert metrics[key] == pytest.approx(base_metrics[key], rel=1e-4, abs=1e-6), (settings, key)
        for key, value in base_adapter.items():
            # Two AdamW steps of lr 1e-2. Adam divides each gradient by its own magnitude, so float-order
            # differences of near-zero gradients show up to ~1e-4 in a few weights: 1% of one step's size.
            torch.testing.assert_close(adapter[key], value, atol=5e-4, rtol=1e-4)
    assert base_metrics["loss/kl"] > 0 and base_metrics["loss/policy"] != 0


def test_nothing_leaves_the_learner_off_the_cpu(learner):
    """The checkpoint state (adapter, AdamW moments after a step, scheduler, RNG states), the exported
    adapter and the step's metrics hold no tensor outside CPU memory: the driver may have no GPU."""
    from trainer.grpo import off_cpu_tensors

    examples = _examples(learner, [format_completion("x", ["Edema"]), format_completion("y", ["Edema"])])
    metrics = learner.step(examples, rewards=[1.0, 0.0], group_size=2)
    state = learner.state()
    assert state["optimizer"]["state"], "AdamW has moments after a step"
    adapter = learner.export(version=3)
    assert off_cpu_tensors({"state": state, "adapter": adapter, "metrics": metrics}) == []
    assert all(isinstance(v, float) for v in metrics.values())


def test_the_walker_finds_tensors_off_the_cpu_and_to_cpu_copies():
    """`off_cpu_tensors` names a tensor on another device however deep it sits (meta stands in for an
    accelerator here); `to_cpu` returns copies that share no storage with the learner's live tensors."""
    from chexrl.models.adapter_io import AdapterWeights
    from trainer.grpo import off_cpu_tensors, to_cpu

    moment = torch.empty(3, device="meta")
    state = {
        "optimizer": {"state": {0: {"exp_avg": moment, "step": torch.tensor(1.0)}}},
        "rng": [(1, moment)],
    }
    assert off_cpu_tensors(state) == [
        "/optimizer/state/0/exp_avg (meta)",
        "/rng/0/1 (meta)",
    ]
    assert off_cpu_tensors(AdapterWeights(1, {"a": moment}, {})) == ["/tensors/a (meta)"]
    live = {"w": [torch.ones(2)], "lr": 0.1, "t": (torch.zeros(1),)}
    copied = to_cpu(live)
    assert off_cpu_tensors(copied) == [] and copied["lr"] == 0.1 and isinstance(copied["t"], tuple)
    copied["w"][0].add_(1)
    assert torch.equal(live["w"][0], torch.ones(2))
