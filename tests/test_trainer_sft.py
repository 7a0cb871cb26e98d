"""LoRA SFT: a short run lowers the loss and writes adapter, history and TensorBoard scalars; early
stopping with patience stops a run whose validation loss only rises; config errors name the bad key."""

from __future__ import annotations

import json

import pytest

from chexrl.config import SFTConfig, load_config
from trainer.sft import should_stop, split_validation


def test_short_sft_run_lowers_loss_and_writes_outputs(sft_run):
    result, out = sft_run
    history = json.loads((out / "history.json").read_text())
    epochs = history["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and history["steps"] == 8  # 16 examples / 4 per step
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert min(e["val_loss"] for e in epochs) < history["initial_val_loss"]
    assert 0 <= epochs[-1]["val_token_accuracy"] <= 1 and history["best_epoch"] in (1, 2)
    assert history["n_train"] == 16 and history["n_val"] == 4
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 16 and adapter_cfg["lora_alpha"] == 32 and adapter_cfg["lora_dropout"] == 0.1
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "metrics.jsonl").read_text().count("loss/train") == 8


def test_early_stopping_on_rising_validation_loss(tiny_gemma3_dir, tmp_path):
    """Train on one answer, validate on another that shares no token with it but the end of turn: the
    training pushes the validation answer down, so its loss never beats epoch 1 and, with patience 2,
    the run stops after epoch 3 and keeps epoch 1's adapter."""
    from chexrl.models.vllm_check import synthetic_image
    from trainer.sft import run_sft

    path = tmp_path / "x.png"
    synthetic_image().save(path)
    train = [
        {"image": str(path), "trace": " ".join(["Edema"] * 20), "sample_id": f"s:{i}:v"} for i in range(4)
    ]
    val = [{"image": str(path), "trace": " ".join(["Fracture"] * 20), "sample_id": "v:0:v"}]
    cfg = SFTConfig(
        learning_rate=5e-3,
        gradient_accumulation_steps=2,
        warmup_ratio=0.0,
        early_stopping_patience=2,
        merge=False,
        gradient_checkpointing=False,
    )
    history = run_sft(cfg, train, val, tiny_gemma3_dir, tmp_path / "run").history
    losses = [e["val_loss"] for e in history["epochs"]]
    assert len(losses) == 3 and losses[0] > history["initial_val_loss"] and min(losses) == losses[0]
    assert history["early_stop_epoch"] == 3 and history["best_epoch"] == 1


def test_trainable_tokens_must_be_single_tokens(tiny_gemma3_dir):
    from chexrl.models.loading import load_processor
    from trainer.lora import single_token_ids

    tokenizer = load_processor(tiny_gemma3_dir).tokenizer
    assert len(set(single_token_ids(tokenizer, ["<think>", "</solution>"]))) == 2
    with pytest.raises(ValueError, match=r"'Pleural Effusion' is [0-9]+ tokens"):
        single_token_ids(tokenizer, ["<think>", "Pleural Effusion"])


def test_demo_trains_the_tags_and_every_token_that_opens_a_label_answer(tiny_gemma3_dir):
    """The demo's `trainable_tokens` must stay single tokens of the tiny tokenizer and cover the first token
    of every CheXpert label written right after <solution> (the form the emulated pretraining never
    emitted, docs/sft.md), or SFT leaves that label unreachable when sampling."""
    import yaml

    from chexrl.config import ChexrlConfig
    from chexrl.core.parsing import SOLUTION_OPEN
    from chexrl.core.schemas import CHEXPERT14
    from chexrl.demo import demo_config_text
    from chexrl.models.loading import load_processor
    from trainer.lora import single_token_ids

    tokenizer = load_processor(tiny_gemma3_dir).tokenizer
    trained = set(
        single_token_ids(
            tokenizer, ChexrlConfig.model_validate(yaml.safe_load(demo_config_text())).sft.trainable_tokens
        )
    )
    tag = tokenizer.convert_tokens_to_ids(SOLUTION_OPEN)
    assert tag in trained
    for label in CHEXPERT14:
        ids = tokenizer.encode(SOLUTION_OPEN + label, add_special_tokens=False)
        assert ids[0] == tag and ids[1] in trained, (label, tokenizer.convert_ids_to_tokens(ids))


def test_should_stop_and_split():
    assert not should_stop([3.0, 2.0, 1.0], 2)
    assert should_stop([3.0, 2.0, 2.5, 2.0], 2)  # equal is not an improvement
    assert not should_stop([3.0, 2.0, 2.5, 1.9], 2)
    assert should_stop([1.0, 1.5], 1)
    records = [{"image": f"/x/{i}.png", "sample_id": f"mimic:s{i // 2}:v{i}"} for i in range(40)]
    train, val = split_validation(records, 0.1, seed=0)
    assert len(val) == 4 and len(train) == 36
    assert not {r["sample_id"].split(":")[1] for r in train} & {r["sample_id"].split(":")[1] for r in val}
    assert split_validation(records, 0.1, seed=0) == (train, val)


def test_config_defaults_are_the_papers():
    cfg = SFTConfig()
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.1)
    assert (cfg.learning_rate, cfg.warmup_ratio, cfg.weight_decay, cfg.max_grad_norm) == (
        5e-5,
        0.05,
        0.01,
        5.0,
    )
    assert cfg.per_device_batch_size * cfg.gradient_accumulation_steps == 8
    assert (cfg.num_epochs, cfg.early_stopping_patience, cfg.val_fraction) == (6, 2, 0.1)
    assert cfg.precision == "auto" and cfg.gradient_checkpointing


@pytest.mark.parametrize(
    ("yaml_text", "names"),
    [
        ("sft:\n  learning_rte: 0.1\n", ["learning_rte"]),
        ("sft:\n  lora:\n    rank: 0\n", ["rank"]),
        ("sft:\n  precision: fp8\n", ["precision"]),
        ("pretrain:\n  max_step: 3\n", ["max_step"]),
    ],
)
def test_config_errors_name_the_key(tmp_path, yaml_text, names):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError) as err:
        load_config(path)
    for name in names:
        assert name in str(err.value)


def test_encoded_examples_give_build_batch_tensors_kept_or_not(tiny_gemma3_dir):
    """Kept across epochs (the demo's small images) or encoded per batch (over the byte budget, a real
    run's): the same tensors as `build_batch`; examples over max_length are dropped and counted."""
    import torch

    from chexrl.core.prompts import build_messages
    from chexrl.models.loading import load_processor
    from chexrl.models.vllm_check import synthetic_image
    from trainer.collate import SFTExample, build_batch
    from trainer.sft import EncodedExamples

    processor = load_processor(tiny_gemma3_dir)
    examples = [
        SFTExample(build_messages(), synthetic_image(seed=i), "<think>Clear.</think> " + "No Finding " * n)
        for i, n in enumerate((1, 3, 40, 2))
    ]
    lengths = [build_batch(processor, [ex])["input_ids"].shape[1] for ex in examples]
    max_length = sorted(lengths)[-2]  # drops the one long example
    kept = EncodedExamples(processor, examples, max_length)
    per_batch = EncodedExamples(processor, examples, max_length, keep_bytes=0)
    assert kept.kept_encoded and not per_batch.kept_encoded
    for data in (kept, per_batch):
        assert len(data) == 3 and data.skipped == 1 and examples[2] not in data.examples
        got, expected = data.batch([2, 0]), build_batch(processor, [data.examples[2], data.examples[0]])
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got)
