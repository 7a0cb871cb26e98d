"""The assistant-only loss mask, exactly, on real tokenized examples of both families; the completion
log-probs two ways (gathered vs. a plain full-vocabulary log-softmax, and batched vs. one row); the
adapter sits on the language model's projections only."""

from __future__ import annotations

import pytest
import torch

from chexrl.core.prompts import build_messages
from chexrl.models.loading import image_token_id, load_model, load_processor
from chexrl.models.vllm_check import synthetic_image
from chexrl.traces.render import render_prompt, render_training_text
from trainer.collate import IGNORE_INDEX, SFTExample, build_batch, completion_logprobs

END_OF_TURN = {"gemma3": "<end_of_turn>", "qwen2_5_vl": "<|im_end|>"}
COMPLETIONS = [
    "<think>Enlarged cardiac silhouette. No effusion.</think>\n<solution>Cardiomegaly</solution>",
    "<think>Clear lungs.</think>\n<solution>No Finding</solution>",
]


def _family(model_dir) -> str:
    from chexrl.models.loading import detect_family

    return detect_family(model_dir)


def _examples():
    return [SFTExample(build_messages(), synthetic_image(seed=i), c) for i, c in enumerate(COMPLETIONS)]


def _ids(processor, text, image) -> list[int]:
    enc = processor(text=[text], images=[[image]], add_special_tokens=False, return_tensors="pt")
    return enc["input_ids"][0].tolist()


def test_assistant_only_mask_is_exact(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids(END_OF_TURN[_family(tiny_model_dir)])
    examples = _examples()
    batch = build_batch(processor, examples)
    assert batch["input_ids"].shape[0] == 2
    padded_rows = 0
    for row, ex in enumerate(examples):
        # Independently: the chat template's prompt-only and whole-conversation renderings.
        prompt_ids = _ids(processor, render_prompt(processor, ex.messages), ex.image)
        full_ids = _ids(processor, render_training_text(processor, ex.messages, ex.completion), ex.image)
        assert full_ids[: len(prompt_ids)] == prompt_ids
        end = full_ids.index(eot, len(prompt_ids))  # the assistant turn's end-of-turn token
        expected = set(range(len(prompt_ids), end + 1))

        ids = batch["input_ids"][row].tolist()
        labels = batch["labels"][row]
        got = set(torch.nonzero(labels != IGNORE_INDEX).flatten().tolist())
        assert got == expected
        assert ids[: end + 1] == full_ids[: end + 1]  # same tokens as the template's rendering
        assert labels[sorted(got)].tolist() == ids[len(prompt_ids) : end + 1]
        assert (
            tok.decode(ids[len(prompt_ids) : end + 1]) == ex.completion + END_OF_TURN[_family(tiny_model_dir)]
        )
        # No image placeholder, prompt or padding token carries loss.
        image_positions = {i for i, t in enumerate(ids) if t == image_token_id(tiny_model_dir)}
        assert image_positions and not image_positions & got
        assert all(i < len(prompt_ids) for i in image_positions)
        attn = batch["attention_mask"][row].tolist()
        padding = {i for i, a in enumerate(attn) if a == 0}
        padded_rows += bool(padding)
        assert not padding & got and all(i > end for i in padding)
        if tok.bos_token:
            assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert padded_rows == 1  # the shorter completion is right-padded


def test_completion_logprobs_two_ways(tiny_model_dir):
    model = load_model(tiny_model_dir, dtype=torch.float32)
    processor = load_processor(tiny_model_dir)
    examples = _examples()
    batch = build_batch(processor, examples)
    with torch.no_grad():
        logp, mask = completion_logprobs(model, batch, temperature=0.8)
        inputs = {k: batch[k] for k in batch if k not in ("labels", "completion_start", "completion_len")}
        full = torch.log_softmax(model(**inputs).logits.float() / 0.8, dim=-1)  # (B, T, V)
    assert mask.sum().item() == (batch["labels"] != IGNORE_INDEX).sum().item()
    for row in range(2):
        start, n = int(batch["completion_start"][row]), int(batch["completion_len"][row])
        ids = batch["input_ids"][row]
        naive = full[row, start - 1 : start + n - 1].gather(-1, ids[start : start + n, None]).squeeze(-1)
        torch.testing.assert_close(logp[row, :n], naive, atol=1e-4, rtol=1e-4)
        assert (logp[row, n:] == 0).all() and not mask[row, n:].any()
        with torch.no_grad():  # padding in the batch does not change a row's log-probs
            alone, _ = completion_logprobs(model, build_batch(processor, [examples[row]]), temperature=0.8)
        torch.testing.assert_close(logp[row, :n], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_lora_on_language_projections_only(request, family):
    from peft import get_peft_model

    from trainer.lora import language_lora_config

    model_dir = request.getfixturevalue({"gemma3": "tiny_gemma3_dir", "qwen2_5_vl": "tiny_qwen_dir"}[family])
    peft_model = get_peft_model(load_model(model_dir), language_lora_config(16, 32, 0.1, family))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{proj}.lora_A" in n for n in trainable), proj
    vision = [n for n, _ in peft_model.named_parameters() if "vision_tower" in n or ".visual." in n]
    assert vision and not any("lora_" in n for n in vision)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if n in vision)
    assert peft_model.peft_config["default"].r == 16 and peft_model.peft_config["default"].lora_alpha == 32


def test_chunked_logprobs_equal_the_full_logits_path_with_gradients(tiny_model_dir):
    """The GRPO learner's path (final hidden states x LM head, in chunks) against the model's own logits,
    through a LoRA-wrapped model: log-probs, entropy and the adapter's gradients to 1e-5."""
    from peft import get_peft_model

    from trainer.lora import language_lora_config

    model = get_peft_model(load_model(tiny_model_dir, dtype=torch.float32), language_lora_config(16, 32, 0.0))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a non-zero adapter, so the adapter's gradients flow through both paths
            torch.nn.init.normal_(p, std=0.05)
    batch = build_batch(load_processor(tiny_model_dir), _examples())
    results = {}
    for chunk in (None, 5):
        model.zero_grad()
        logp, mask, ent = completion_logprobs(model, batch, 0.8, entropy=True, chunk_tokens=chunk)
        weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)  # an arbitrary upstream gradient
        (logp * weights).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results[chunk] = (logp.detach(), mask, ent, grads)
    (full, full_mask, full_ent, full_grads), (got, mask, ent, grads) = results[None], results[5]
    assert torch.equal(mask, full_mask)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, full_ent, atol=1e-5, rtol=0)
    assert full_grads.abs().max() > 0.1
    torch.testing.assert_close(grads, full_grads, atol=1e-5, rtol=0)
    assert (got[~mask] == 0).all() and (ent[~mask] == 0).all()
