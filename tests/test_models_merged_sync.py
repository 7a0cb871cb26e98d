"""Merged-weight sync's pure part: folding a PEFT adapter into base weights, checked against PEFT's own
merge on the tiny Gemma3 model, and the adapters it must refuse."""

import pytest
import torch

from chexrl.models.adapter_io import AdapterWeights
from chexrl.models.merged_sync import lora_modules, lora_scale, merged_weights


def _peft_model(model_dir, **lora_kwargs):
    from peft import LoraConfig, get_peft_model

    from chexrl.models.loading import load_model
    from trainer.lora import language_lora_config

    torch.manual_seed(0)
    config = language_lora_config()
    if lora_kwargs:
        config = LoraConfig(**{**config.to_dict(), **lora_kwargs})
    model = get_peft_model(load_model(model_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    return model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_merge_equals_peft_merge_and_unload(tiny_gemma3_dir, use_rslora):
    from trainer.lora import export_adapter

    model = _peft_model(tiny_gemma3_dir, use_rslora=use_rslora)
    adapter = export_adapter(model, 1)
    base = {
        n: m.weight.detach().clone()
        for n, m in model.base_model.model.named_modules()
        if hasattr(m, "weight")
    }
    base = {n.replace(".base_layer", ""): w for n, w in base.items()}
    merged = dict(merged_weights(base, adapter))
    expected = model.merge_and_unload().state_dict()

    names = {n[: -len(".weight")] for n in merged}
    assert len(names) == 7 * 2  # q k v o gate up down in each of the tiny model's two language layers
    assert all(".language_model." in n for n in names)  # the vision tower is never touched
    for name, weight in merged.items():
        assert weight.dtype == base[name[: -len(".weight")]].dtype
        assert not torch.equal(weight, base[name[: -len(".weight")]])
        torch.testing.assert_close(weight, expected[name], rtol=1e-5, atol=1e-5)


def test_scale():
    assert lora_scale({"r": 16, "lora_alpha": 32}) == 2.0
    assert lora_scale({"r": 16, "lora_alpha": 32, "use_rslora": True}) == 8.0


def _adapter(tensors, **config):
    return AdapterWeights(1, tensors, {"r": 2, "lora_alpha": 4, **config})


A = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
B = A.replace("lora_A", "lora_B")


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (_adapter({A: torch.zeros(2, 4), B: torch.zeros(4, 2)}, use_dora=True), "use_dora=True"),
        (
            _adapter({A: torch.zeros(2, 4), B: torch.zeros(4, 2)}, trainable_token_indices=[5]),
            "trainable_token",
        ),
        (_adapter({A: torch.zeros(2, 4)}), "no 'base_model"),
        (_adapter({"base_model.model.lm_head.weight": torch.zeros(4, 4)}), "plain LoRA only"),
        (_adapter({}), "no LoRA tensors"),
    ],
)
def test_refuses_what_it_cannot_fold(adapter, message):
    with pytest.raises(ValueError, match=message):
        lora_modules(adapter)


def test_names_a_module_the_base_lacks_and_a_shape_mismatch():
    adapter = _adapter({A: torch.ones(2, 4), B: torch.ones(4, 2)})
    with pytest.raises(
        ValueError, match=r"no projection 'model\.language_model\.layers\.0\.self_attn\.q_proj'"
    ):
        merged_weights({}, adapter)
    with pytest.raises(ValueError, match=r"B @ A is \(4, 4\), base is \(4, 8\)"):
        merged_weights({"model.language_model.layers.0.self_attn.q_proj": torch.zeros(4, 8)}, adapter)
    ((name, weight),) = merged_weights(
        {"model.language_model.layers.0.self_attn.q_proj": torch.zeros(4, 4)}, adapter
    )
    assert name.endswith("q_proj.weight") and torch.equal(weight, torch.full((4, 4), 4.0))  # 2 x (B @ A)
