"""LoRA on the language model only (the paper: attention and feed-forward projections; vision frozen),
and the export of an adapter as in-memory tensors for the rollout workers."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model_state_dict

from chexrl.config import LoraSettings
from chexrl.models.adapter_io import AdapterWeights
from chexrl.models.loading import lora_target_modules
from chexrl.models.presets import FAMILIES

_PAPER = LoraSettings()  # the paper's adapter (the SFT defaults)


def language_lora_config(
    rank: int = _PAPER.rank,
    alpha: int = _PAPER.alpha,
    dropout: float = _PAPER.dropout,
    family: str = FAMILIES[0],
    trainable_token_ids: list[int] | None = None,
) -> LoraConfig:
    """The paper's adapter: rank 16, alpha 32, dropout 0.1 on the language model's attention and
    feed-forward projections (`chexrl.models.loading.lora_target_modules`); the vision tower stays frozen.

    `trainable_token_ids` also trains those rows of the input embedding (PEFT ties them into the output
    head when the model ties the two): LoRA on the projections cannot raise the logit of a token whose embedding pretraining
    pushed down, such as a tag the base never emitted."""
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(family),
        bias="none",
        task_type="CAUSAL_LM",
        trainable_token_indices=list(trainable_token_ids) if trainable_token_ids else None,
    )


def single_token_ids(tokenizer, tokens: list[str]) -> list[int]:
    """The vocabulary id of each token string; a string that is not exactly one token is an error."""
    ids = []
    for token in tokens:
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"trainable token {token!r} is {len(encoded)} tokens of this tokenizer, not one")
        ids.append(encoded[0])
    return ids


def export_adapter(peft_model, version: int) -> AdapterWeights:
    """The live adapter's weights as CPU tensors plus its PEFT config, ready for `push_adapter`."""
    state = get_peft_model_state_dict(peft_model)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    config = peft_model.peft_config["default"].to_dict()
    config["target_modules"] = (
        sorted(config["target_modules"])
        if isinstance(config["target_modules"], (set, list))
        else config["target_modules"]
    )
    return AdapterWeights(version=version, tensors=tensors, config=_jsonable(config))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value"):  # enums such as TaskType
        return value.value
    return value
