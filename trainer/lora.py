"""LoRA on the language model only (the paper: attention and feed-forward projections; vision frozen),
and the export of an adapter as in-memory tensors for the rollout workers."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model_state_dict

from rollout_worker.types import AdapterWeights

# Attention and feed-forward projections of both families' language models. The vision towers use other
# names or sit outside `language_model`, and the regex anchors on it, so they stay frozen.
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LANGUAGE_MODEL_TARGETS = rf".*language_model.*\.({'|'.join(LANGUAGE_PROJECTIONS)})"


def language_lora_config(rank: int = 16, alpha: int = 32, dropout: float = 0.1) -> LoraConfig:
    """The paper's adapter: rank 16, alpha 32, dropout 0.1 on the language model's projections."""
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=LANGUAGE_MODEL_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )


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
