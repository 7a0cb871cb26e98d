"""`chexrl demo` end to end at the smallest sizes: every stage runs through the real parts and the
summary has the promised keys. (The full-size demo is `make demo`; its figures are in the README.)"""

import json
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_demo_pipeline_runs_and_writes_the_summary(tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "demo": {
                    "mimic_images": 120,
                    "chexpert_images": 20,
                    "nih_images": 30,
                    "pretrain_images": 30,
                    "sft_images": 20,
                    "rl_images": 8,
                    "eval_images": 8,
                },
                "pretrain": {"max_steps": 5, "batch_size": 4},
                "sft": {"num_epochs": 1, "gradient_accumulation_steps": 4, "gradient_checkpointing": False},
                "sampling": {"max_tokens": 24},
                "grpo": {
                    "max_steps": 2,
                    "prompts_per_step": 2,
                    "save_steps": 1,
                    "eval_steps": 2,
                    "eval_limit": 4,
                },
            }
        )
    )
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "chexrl.cli", "demo", "--out", str(out), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    for model in ("base", "sft", "grpo"):
        assert 0.0 <= summary[model]["id"] <= 1.0 and 0.0 <= summary[model]["ood"] <= 1.0
    assert summary["grpo_steps"] == 2
    assert isinstance(summary["grpo_reward_first"], float) and isinstance(summary["grpo_reward_last"], float)
    assert "| base |" in result.stdout and str(out / "summary.json") in result.stdout
