"""Model inputs for (prompt + image, completion) pairs, and the per-token log-probabilities of the
completion: the one place SFT and GRPO turn examples into tensors.

A sequence is `prompt_ids + completion_ids`, where `prompt_ids` is the processor's tokenization of the
rendered prompt with its image (placeholder tokens expanded) and `completion_ids` are the tokens the
model would generate: for SFT the completion text tokenized on its own plus the end-of-turn token, for
GRPO the engine's sampled ids as they are. Only completion positions carry loss; the prompt, the image
placeholders and the padding never do (the paper's assistant-only loss). Building the sequence this way
makes the mask exact by construction; `tests/test_trainer_collate.py` checks that it equals the chat
template's own rendering of the whole conversation.

Batch layout (right padding, B rows, T = longest row):
  input_ids, attention_mask (B, T); token_type_ids / mm_token_type_ids (B, T) where the family has them;
  pixel_values (Gemma3: (B, 3, H, W); Qwen2.5-VL: (sum of patches, D)) and image_grid_thw (B, 3);
  labels (B, T): the input id at completion positions, -100 elsewhere;
  completion_start, completion_len (B,): where each row's completion sits.
"""

from __future__ import annotations

import contextlib
import io
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from chexrl.core.grpo import token_entropy
from chexrl.core.logprobs import chunked_token_logprobs
from chexrl.models.attention_masks import with_prebuilt_masks
from chexrl.traces.render import render_prompt, render_training_text

IGNORE_INDEX = -100
# Keys the processor returns per token (padded), as opposed to per image (concatenated).
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
# Keys the model's forward takes.
_MODEL_KEYS = (*_TOKEN_KEYS, "pixel_values", "image_grid_thw")


_EOT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: chat messages (image part first), the image, the target completion."""

    messages: list[dict]
    image: Any  # PIL image
    completion: str


def end_of_turn_token(processor: Any) -> str:
    """The token that closes the assistant turn (cached per processor); see `_end_of_turn_token`."""
    try:
        return _EOT_CACHE[processor]
    except (KeyError, TypeError):
        pass
    token = _end_of_turn_token(processor)
    with contextlib.suppress(TypeError):  # a processor that cannot be weakly referenced: no cache
        _EOT_CACHE[processor] = token
    return token


def _end_of_turn_token(processor: Any) -> str:
    """The token that closes the assistant turn in the family's chat template: what the suffix after
    the completion starts with (`<end_of_turn>` for Gemma3, `<|im_end|>` for Qwen2.5-VL)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    marker = "\x00COMPLETION\x00"
    full = render_training_text(processor, messages, marker)
    prompt = render_prompt(processor, messages)
    if not full.startswith(prompt) or marker not in full:
        raise ValueError("chat template: the training rendering does not extend the prompt rendering")
    suffix = full.split(marker, 1)[1]
    tokenizer = _tokenizer(processor)
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("chat template closes the assistant turn with nothing")
    return tokenizer.convert_ids_to_tokens(ids[0])


def completion_token_ids(processor: Any, completion: str) -> list[int]:
    """An SFT target as the model generates it: the completion's tokens then the end-of-turn token."""
    tokenizer = _tokenizer(processor)
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.convert_tokens_to_ids(end_of_turn_token(processor))]


def encode_prompt(processor: Any, prompt_text: str, image: Any) -> dict[str, torch.Tensor]:
    """The processor's encoding of one rendered prompt with its image (rows of batch size 1).

    The sequence starts with exactly one BOS where the tokenizer uses one (Gemma3), whether or not the
    rendered text holds it (chat templates write it; prompts sent to vLLM have it stripped).
    """
    tokenizer = _tokenizer(processor)
    bos = tokenizer.bos_token
    if bos and prompt_text.startswith(bos):
        prompt_text = prompt_text[len(bos) :]
    if bos and tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id:
        prompt_text = bos + prompt_text
    enc = processor(text=[prompt_text], images=[[image]], return_tensors="pt", add_special_tokens=False)
    return {k: v for k, v in enc.items() if k in _MODEL_KEYS}


def encode_row(processor: Any, prompt_text: str, image: Any, completion: list[int]) -> dict[str, Any]:
    """One sequence (batch size 1): the prompt's encoding with `completion` appended, its labels and
    its completion span. Rows can be cached and collated later (`collate_rows`)."""
    enc = encode_prompt(processor, prompt_text, image)
    n_prompt = enc["input_ids"].shape[1]
    comp = torch.tensor([completion], dtype=torch.long)
    row: dict[str, Any] = {"input_ids": torch.cat([enc["input_ids"], comp], dim=1)}
    row["attention_mask"] = torch.ones_like(row["input_ids"])
    for key in ("token_type_ids", "mm_token_type_ids"):  # completion tokens are text (type 0)
        if key in enc:
            row[key] = torch.cat([enc[key], torch.zeros_like(comp)], dim=1)
    row["labels"] = torch.cat([torch.full((1, n_prompt), IGNORE_INDEX), comp], dim=1)
    row["completion_start"], row["completion_len"] = n_prompt, len(completion)
    for key in ("pixel_values", "image_grid_thw"):
        if key in enc:
            row[key] = enc[key]
    return row


def collate_rows(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of `encode_row` -> one right-padded batch (per-image tensors concatenated)."""
    if not rows:
        raise ValueError("need at least one row")
    longest = max(r["input_ids"].shape[1] for r in rows)
    pad_values = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    batch: dict[str, torch.Tensor] = {}
    for key in (*_TOKEN_KEYS, "labels"):
        if key in rows[0]:
            batch[key] = torch.cat([_pad_right(r[key], longest, pad_values.get(key, 0)) for r in rows])
    for key in ("pixel_values", "image_grid_thw"):
        if key in rows[0]:
            batch[key] = torch.cat([r[key] for r in rows])
    batch["completion_start"] = torch.tensor([r["completion_start"] for r in rows])
    batch["completion_len"] = torch.tensor([r["completion_len"] for r in rows])
    return batch


def assemble(
    processor: Any, prompt_texts: Sequence[str], images: Sequence[Any], completions: Sequence[list[int]]
) -> dict[str, torch.Tensor]:
    """Prompt encodings + completion ids -> one right-padded batch with labels and completion spans."""
    if not (len(prompt_texts) == len(images) == len(completions)) or not prompt_texts:
        raise ValueError("need equally many (>= 1) prompts, images and completions")
    rows = [
        encode_row(processor, text, image, list(comp))
        for text, image, comp in zip(prompt_texts, images, completions, strict=True)
    ]
    return collate_rows(rows, _tokenizer(processor).pad_token_id)


def encode_sft_example(processor: Any, example: SFTExample) -> dict[str, Any]:
    """An SFT example as one row (prompt rendered by the chat template, completion + end-of-turn)."""
    return encode_row(
        processor,
        render_prompt(processor, example.messages),
        example.image,
        completion_token_ids(processor, example.completion),
    )


def build_batch(processor: Any, examples: Sequence[SFTExample]) -> dict[str, torch.Tensor]:
    """SFT examples -> a batch whose labels are exactly the completion tokens plus end-of-turn."""
    rows = [encode_sft_example(processor, ex) for ex in examples]
    return collate_rows(rows, _tokenizer(processor).pad_token_id)


def build_policy_batch(processor: Any, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
    """GRPO examples (`prompt_text`, `image` as encoded bytes or a PIL image, sampled `completion_ids`)
    -> a batch; the completion is the engine's token ids exactly as sampled."""
    from PIL import Image

    images = [
        Image.open(io.BytesIO(ex.image)).convert("RGB") if isinstance(ex.image, bytes) else ex.image
        for ex in examples
    ]
    return assemble(
        processor, [ex.prompt_text for ex in examples], images, [list(ex.completion_ids) for ex in examples]
    )


def model_inputs(batch: dict[str, torch.Tensor], device: Any = None) -> dict[str, torch.Tensor]:
    """The subset of a batch the model's forward takes, moved to `device`."""
    return {k: (v.to(device) if device is not None else v) for k, v in batch.items() if k in _MODEL_KEYS}


def _completion_positions(batch: dict[str, torch.Tensor], device: Any, seq_len: int, keep: int):
    """Where each completion token sits. Returns (pos (B, Tc): the index, into the last `keep` positions,
    of the state that predicts completion token j of row i; targets (B, Tc); mask (B, Tc) bool)."""
    starts = batch["completion_start"].to(device)
    lens = batch["completion_len"].to(device)
    width = int(lens.max())
    cols = torch.arange(width, device=device)
    mask = cols[None, :] < lens[:, None]  # (B, Tc)
    # The state that predicts completion token j sits at start + j - 1, offset into the kept tail.
    pos = (starts[:, None] + cols[None, :] - 1 - (seq_len - keep)).clamp(0, keep - 1)
    target_pos = (starts[:, None] + cols[None, :]).clamp(max=seq_len - 1)
    targets = torch.gather(batch["input_ids"].to(device), 1, target_pos)
    return pos, torch.where(mask, targets, 0), mask


def _kept_tail(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    seq_len = batch["input_ids"].shape[1]
    return seq_len, seq_len - int(batch["completion_start"].min()) + 1  # positions start-1 .. T-1


def completion_logits(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits that predict each completion token, left-aligned per row.

    Returns (logits (B, Tc, V), targets (B, Tc), mask (B, Tc)) with Tc the longest completion; column j
    of row i predicts completion token j of row i. Only the tail of the sequence that holds completions
    is projected onto the vocabulary (`logits_to_keep`).
    """
    device = next(model.parameters()).device
    seq_len, keep = _kept_tail(batch)
    inputs = with_prebuilt_masks(model, model_inputs(batch, device))
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits  # (B, keep, V): positions T-keep .. T-1
    pos, targets, mask = _completion_positions(batch, device, seq_len, keep)
    picked = torch.gather(logits, 1, pos[..., None].expand(-1, -1, logits.shape[-1]))  # (B, Tc, V)
    return picked, targets, mask


def lm_backbone_and_head(model: Any) -> tuple[Any, torch.Tensor]:
    """(the model without its LM head, the head's (V, H) weight) of a family model, PEFT-wrapped or not.

    Both families' `forward` is `hidden = self.model(...)[0]; logits = self.lm_head(hidden)` (no final
    soft-capping in Gemma3ForConditionalGeneration), so the pair reproduces the logits exactly. LoRA layers
    live inside the backbone, so `disable_adapter()` acts on it as on the whole model.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if head is None or not hasattr(base, "model") or getattr(head, "bias", None) is not None:
        raise TypeError(f"{type(base).__name__}: expected a backbone `.model` and a bias-free LM head")
    return base.model, head.weight


def completion_hidden_states(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final hidden states that predict each completion token: no vocabulary projection at all.

    Returns (hidden (n, H) of the n = mask.sum() real completion tokens in row-major order,
    targets (B, Tc), mask (B, Tc), head weight (V, H)).
    """
    backbone, weight = lm_backbone_and_head(model)
    device = weight.device
    seq_len, keep = _kept_tail(batch)
    inputs = with_prebuilt_masks(backbone, model_inputs(batch, device))
    states = backbone(**inputs, use_cache=False)[0][:, seq_len - keep :]  # (B, keep, H)
    pos, targets, mask = _completion_positions(batch, device, seq_len, keep)
    rows = torch.arange(pos.shape[0], device=device)[:, None].expand_as(pos)
    return states[rows[mask], pos[mask]], targets, mask, weight


def completion_logprobs(
    model: Any,
    batch: dict[str, torch.Tensor],
    temperature: float = 1.0,
    *,
    entropy: bool = False,
    model_logprobs: bool = False,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """log pi(token | prompt, image, earlier completion tokens) of every completion token.

    Returns (logp (B, Tc) float32, zero where masked; mask (B, Tc) bool), left-aligned as in
    `completion_logits`. Logits are divided by `temperature` first, so the result is the log-prob
    under the sampling distribution the engine used (before top-p). With `entropy`, also the entropy of
    that distribution at each completion position (detached; zero where masked); with `model_logprobs`,
    also the log-probs of the model's own distribution (temperature 1, no top-p: what vLLM returns with
    logprobs_mode "raw_logprobs"; detached, zero where masked). Extra elements come in that order.

    `chunk_tokens`: None projects the whole batch onto the vocabulary at once, (B, Tc, V) fp32 logits;
    an int computes from the final hidden states and the LM head `chunk_tokens` tokens at a time
    (chexrl/core/logprobs.py), the same numbers without the (B, Tc, V) tensors (the GRPO learner's path:
    MedGemma-4B's 262,144-token vocabulary makes them gigabytes).
    """
    if chunk_tokens is None:
        return _full_logprobs(model, batch, temperature, entropy, model_logprobs)
    hidden, targets, mask, weight = completion_hidden_states(model, batch)
    extras = entropy or model_logprobs  # both come from the log-probs' own projection, at no extra cost
    flat = chunked_token_logprobs(
        hidden, weight, targets[mask], temperature=temperature, chunk_tokens=chunk_tokens, extras=extras
    )

    def unflatten(values: torch.Tensor) -> torch.Tensor:  # (n,) real tokens -> (B, Tc), zero where masked
        return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)

    out = [unflatten(flat.logp), mask]
    if entropy:
        out.append(unflatten(flat.entropy))
    if model_logprobs:
        out.append(unflatten(flat.model_logp))
    return tuple(out)


def _full_logprobs(model: Any, batch, temperature: float, entropy: bool, model_logprobs: bool):
    """`completion_logprobs` with the whole batch's (B, Tc, V) logits at once."""
    logits, targets, mask = completion_logits(model, batch)
    logits = logits.float() / temperature
    logp = torch.gather(logits, -1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = [logp * mask, mask]
    with torch.no_grad():
        if entropy:
            out.append(token_entropy(logits) * mask)
        if model_logprobs:  # temperature undone here, so no second (B, Tc, V) tensor lives through the pass
            raw = logits * temperature
            model_logp = torch.gather(raw, -1, targets[..., None]).squeeze(-1) - torch.logsumexp(raw, dim=-1)
            out.append(model_logp * mask)
    return tuple(out)


def sft_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed negative log-likelihood of the completion tokens (equation 1) and token counts.

    Returns (nll_sum, {"tokens", "correct"}): divide by the tokens of the whole accumulated batch for
    the token mean; `correct` counts argmax hits (token accuracy).
    """
    logits, targets, mask = completion_logits(model, batch)
    logits = logits.float()
    nll = torch.logsumexp(logits, -1) - torch.gather(logits, -1, targets[..., None]).squeeze(-1)
    correct = ((logits.argmax(-1) == targets) & mask).sum().item()
    return (nll * mask).sum(), {"tokens": float(mask.sum().item()), "correct": float(correct)}


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _pad_right(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)
