"""`ray job submit --working-dir . -- chexrl grpo --config FILE` against a real token-authenticated head."""

import httpx
import pytest
import yaml

from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow


def test_job_submit_needs_the_token(ray_head):
    refused = ray_head.submit("--", "python", "-c", "print(1)", token=None, timeout=120)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()
    wrong = ray_head.submit("--", "python", "-c", "print(1)", token="0" * 64, timeout=120)
    assert wrong.returncode != 0


def test_grpo_runs_as_a_ray_job(ray_head, evaluator, tiny_gemma3_dir, synth_mimic_dir, tmp_path):
    run_dir = tmp_path / "grpo-job"
    config = tmp_path / "grpo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sampling": {"n": 4, "max_tokens": 16},
                "grpo": {
                    "model": str(tiny_gemma3_dir),
                    "data": f"mimic:{synth_mimic_dir}",
                    "limit": 8,
                    "run_dir": str(run_dir),
                    "run_id": "ray-job-test",
                    "evaluator_url": evaluator.url,
                    "max_steps": 2,
                    "prompts_per_step": 2,
                    "save_steps": 1,
                    "reward": "nuanced",
                },
            }
        )
    )
    result = ray_head.submit("--working-dir", ".", "--", "chexrl", "grpo", "--config", str(config))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout + result.stderr
    steps = read_metrics(run_dir)
    assert [s["step"] for s in steps] == [1, 2]
    # the job's rewards came from this evaluator: it holds the run's window of valid predictions
    window = httpx.get(f"{evaluator.url}/runs/ray-job-test/window").json()["window"]
    assert len(window) == sum(round(s["reward/valid_fraction"] * 8) for s in steps)
    assert (run_dir / "adapter-final" / "adapter_model.safetensors").exists()
