"""Gemma3's training-time attention masks, built with plain broadcasting.

Gemma3 lets the tokens of one image attend to each other both ways and everything else causally, and
half its layers see only a sliding window. transformers (5.x) builds the sliding-window layers' mask by
`torch.vmap`-ing a Python mask function over every (batch, query, key) triple; on a CPU that costs more
than the whole forward pass of a small model (8.7 of 19 s of the demo's SFT forwards, profiled). The
same masks are three broadcast comparisons. The forward accepts them ready-made (a dict keyed by layer
type, as `generate` passes them), so the learner, SFT and pretraining hand them in and get exactly the
tensors transformers would have built: `tests/test_models_attention_masks.py` compares the two
element by element and the model's logits to the last bit.

Only the case this project trains is taken over: a full sequence without a KV cache, the `sdpa`
attention, a Gemma3 text config without bidirectional attention. Anything else returns None and
transformers builds its own masks as before.
"""

from __future__ import annotations

from typing import Any

import torch


def gemma3_attention_masks(
    config: Any, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
) -> dict[str, torch.Tensor] | None:
    """{"full_attention", "sliding_attention"}: boolean (B, 1, T, T) masks, True where a query may
    attend to a key; None where transformers must build them (see the module's docstring).

    Full layers: key is not padding AND (key <= query OR both are tokens of the same image).
    Sliding layers: the same AND key > query - sliding_window.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if (
        getattr(text, "model_type", None) not in ("gemma3_text", "gemma3")
        or getattr(text, "_attn_implementation", None) != "sdpa"
        or getattr(text, "use_bidirectional_attention", False)
    ):
        return None
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    device = attention_mask.device
    length = attention_mask.shape[1]
    query = torch.arange(length, device=device)[:, None]
    key = torch.arange(length, device=device)[None, :]
    # transformers' own numbering: each image's tokens share its index within the row, text is -1
    blocks = get_block_sequence_ids_for_mask(token_type_ids, device=device)
    same_image = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)  # (B, T, T)
    visible = ((key <= query)[None] | same_image) & attention_mask.to(device).bool()[:, None, :]
    return {
        "full_attention": visible[:, None],
        "sliding_attention": (visible & (key > query - text.sliding_window)[None])[:, None],
    }


def with_prebuilt_masks(model: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`inputs` for `model`'s forward with the attention mask replaced by the prebuilt masks where
    `gemma3_attention_masks` covers the model; unchanged otherwise."""
    if "token_type_ids" not in inputs or "attention_mask" not in inputs:
        return inputs
    masks = gemma3_attention_masks(model.config, inputs["attention_mask"], inputs["token_type_ids"])
    return inputs if masks is None else {**inputs, "attention_mask": masks}
