"""`chexrl grpo` checks the evaluator before any actor starts: none at grpo.evaluator_url, or one that
refuses the run's token, is a usage error that says how to fix it; the real evaluator over HTTP (uvicorn on
loopback), with Ray and the training loop replaced by stubs that record whether they were reached."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

import chexrl.commands.grpo as grpo_command
import trainer.loop
from chexrl.cli import app
from services.evaluator.process import EvaluatorProcess, free_port
from services.evaluator.security import TOKEN_ENV


@pytest.fixture
def reached(monkeypatch) -> list[str]:
    """What `chexrl grpo` got to after its checks: Ray and the training loop, stubbed."""
    seen: list[str] = []
    monkeypatch.setattr(grpo_command, "connect_ray", lambda: seen.append("ray"))
    monkeypatch.setattr(trainer.loop, "run_grpo", lambda *a, **k: seen.append("run_grpo") or [])
    return seen


def _grpo(tmp_path, synth_mimic_dir, url: str) -> tuple[int, str]:
    config = tmp_path / "grpo.yaml"
    grpo = {"model": str(tmp_path), "data": f"mimic:{synth_mimic_dir}", "sft_data": [], "limit": 4}
    grpo |= {"run_dir": str(tmp_path / "run"), "evaluator_url": url, "scoring_client": {"retries": 0}}
    config.write_text(yaml.safe_dump({"grpo": grpo}))
    result = CliRunner().invoke(app, ["grpo", "--config", str(config)])
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


def test_no_evaluator_is_a_usage_error_that_says_how_to_start_one(tmp_path, synth_mimic_dir, reached):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, output = _grpo(tmp_path, synth_mimic_dir, url)
    assert code == 2 and f"no usable evaluator at {url}" in output and "ConnectError" in output
    assert "chexrl serve-evaluator --port 8000" in output
    assert reached == []  # before Ray and before any actor


def test_the_run_token_is_checked_before_any_actor(tmp_path, synth_mimic_dir, reached, monkeypatch):
    server = EvaluatorProcess(tmp_path / "state", token="the-right-token").start()
    try:
        monkeypatch.setenv(TOKEN_ENV, "a-wrong-token")
        code, output = _grpo(tmp_path, synth_mimic_dir, server.url)
        assert code == 2 and "401" in output and TOKEN_ENV in output and reached == []
        monkeypatch.setenv(TOKEN_ENV, "the-right-token")
        code, output = _grpo(tmp_path, synth_mimic_dir, server.url)
        assert code == 0 and reached == ["ray", "run_grpo"], output
    finally:
        server.stop()
