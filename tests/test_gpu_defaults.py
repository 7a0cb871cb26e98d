"""What a GPU run starts with, decided on any machine: CUDA graphs on CUDA (eager on the CPU), a rollout
engine sized to the step's batch on CUDA instead of vLLM's 1,024 sequences, and SFT's base in bf16 on a bf16 GPU
with fp32 LoRA weights."""

from __future__ import annotations

import pytest
import torch

from chexrl.config import ChexrlConfig, RolloutConfig, SFTConfig
from rollout_worker.engine import engine_kwargs


def _config(grpo: dict | None = None, **rollout) -> ChexrlConfig:
    grpo = {"prompts_per_step": 5, **(grpo or {})}
    return ChexrlConfig.model_validate(
        {"rollout": {"model": "m", **rollout}, "grpo": grpo, "sampling": {"n": 4}}
    )


def test_cuda_graphs_on_cuda_and_eager_on_the_cpu_unless_set():
    rollout = _config().rollout
    assert engine_kwargs(rollout, cuda=True, sleep=True)["enforce_eager"] is False
    assert engine_kwargs(rollout, cuda=False, sleep=False)["enforce_eager"] is True
    forced = _config(enforce_eager=True).rollout
    assert engine_kwargs(forced, cuda=True, sleep=True)["enforce_eager"] is True


def test_the_engine_schedules_one_workers_share_of_a_step_on_cuda():
    assert _config().rollout.step_sequences == 5 * 4
    assert engine_kwargs(_config().rollout, cuda=True, sleep=True)["max_num_seqs"] == 20
    # two workers split 5 prompts 3 + 2: each engine holds at most 3 x 4 sequences
    assert _config({"layout": "split"}, num_workers=2).rollout.resolved_max_num_seqs(cuda=True) == 3 * 4
    # on the CPU vLLM's own default stays (evaluation batches keep their concurrency) unless set
    assert "max_num_seqs" not in engine_kwargs(_config().rollout, cuda=False, sleep=False)
    assert engine_kwargs(_config(max_num_seqs=7).rollout, cuda=False, sleep=False)["max_num_seqs"] == 7
    assert engine_kwargs(_config(max_num_seqs=7).rollout, cuda=True, sleep=True)["max_num_seqs"] == 7
    # a RolloutConfig outside a run's config leaves vLLM's own default
    assert "max_num_seqs" not in engine_kwargs(RolloutConfig(model="m"), cuda=True, sleep=True)


def test_sft_loads_the_base_in_bf16_only_on_a_bf16_gpu(monkeypatch):
    from trainer.sft import base_dtype

    cuda = torch.device("cuda")  # a device object only: nothing is allocated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert base_dtype("auto", cuda) is torch.bfloat16 and base_dtype("bf16", cuda) is torch.bfloat16
    assert base_dtype("fp32", cuda) is torch.float32
    assert base_dtype("auto", torch.device("cpu")) is torch.float32
    assert base_dtype("bf16", torch.device("cpu")) is torch.float32  # CPU bf16 autocast keeps fp32 masters
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert base_dtype("auto", cuda) is torch.float32


@pytest.mark.parametrize("chosen", [torch.bfloat16, torch.float32])
def test_sft_trains_fp32_weights_over_the_chosen_base(chosen, monkeypatch, tiny_gemma3_dir):
    """prepare_model with the base in `chosen` (bf16: what a bf16 GPU gets): the frozen base in that dtype,
    every trainable weight (LoRA, trained token rows) in fp32."""
    import trainer.sft as sft

    monkeypatch.setattr(sft, "base_dtype", lambda precision, device: chosen)
    model, _ = sft.prepare_model(tiny_gemma3_dir, SFTConfig(), device="cpu")
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and "lora" not in n}
    assert trainable and set(trainable.values()) == {torch.float32}, trainable
    assert frozen == {chosen}
