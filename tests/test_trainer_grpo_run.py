"""GRPO end to end with the real parts: vLLM worker actor, evaluator over HTTP, trainer actor, Ray."""

import json

import httpx
import pytest

from chexrl.config import ChexrlConfig
from chexrl.data.loaders import load_dataset
from trainer.checkpoint import latest_checkpoint
from trainer.loop import GRPORun, run_grpo
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow


def _config(evaluator_url: str, max_steps: int, reward: str = "nuanced") -> ChexrlConfig:
    return ChexrlConfig.model_validate(
        {
            "sampling": {"n": 4, "max_tokens": 16},
            "grpo": {
                "evaluator_url": evaluator_url,
                "max_steps": max_steps,
                "prompts_per_step": 2,
                "save_steps": 2,
                "reward": reward,
                "micro_batch_size": 8,
            },
        }
    )


def test_grpo_steps_checkpoint_and_resume(ray_session, evaluator, tiny_gemma3_dir, synth_mimic_dir, tmp_path):
    samples = load_dataset(f"mimic:{synth_mimic_dir}")[:12]
    run = GRPORun(str(tiny_gemma3_dir), samples, str(tmp_path / "run"), run_id="grpo-test")
    history = run_grpo(_config(evaluator.url, 3), run, progress=False)

    assert [h["step"] for h in history] == [1, 2, 3]
    for h in history:
        for key in (
            "reward/total",
            "loss/kl",
            "loss/clip_frac",
            "completion/length",
            "time/generation",
            "time/scoring",
            "time/training",
            "time/weight_sync",
            "reward/invalid_format",
        ):
            assert key in h, key  # fmt: skip
    # the rewards came from the evaluator: its window for this run holds every valid prediction
    window = httpx.get(f"{evaluator.url}/runs/grpo-test/window").json()["window"]
    valid = sum(round(h["reward/valid_fraction"] * 8) for h in history)
    assert len(window) == valid
    assert (tmp_path / "run" / "adapter-final" / "adapter_model.safetensors").exists()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000003"

    # resume from step 3 to 5: numbering continues, the log holds each step once
    resumed = run_grpo(_config(evaluator.url, 5), run, resume=True, progress=False)
    assert [h["step"] for h in resumed] == [4, 5]
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]
    meta = json.loads((latest_checkpoint(tmp_path / "run" / "checkpoints") / "meta.json").read_text())
    assert meta["step"] == 5 and meta["cursor"]["index"] == (5 * 2) % 12
