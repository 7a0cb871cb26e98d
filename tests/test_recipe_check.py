"""`chexrl run CONFIG --check`: every problem of a configuration in one run, each with its fix, exit 1; the
shipped paper configurations validate and their only problems are the placeholders a user supplies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.config import load_config
from chexrl.pipeline.preflight import preflight

CONFIGS = Path(__file__).resolve().parent.parent / "chexrl" / "configs"
PAPER_CONFIGS = ("paper-medgemma-4b.yaml", "paper-qwen2.5-vl-3b.yaml")


def broken_config(tmp_path: Path, tiny_gemma3_dir: Path, mimic: Path, nih: Path) -> Path:
    """Six different problems: a data root that does not exist, a label file that does not parse, a pool
    too small for the draws, a model folder without tokenizer, a teacher and an evaluator nobody serves."""
    chexpert = tmp_path / "chexpert"
    chexpert.mkdir()
    (chexpert / "valid.csv").write_text("Path,Sex\nnot,a label file\n")
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_gemma3_dir / "config.json", model / "config.json")
    config = {
        "recipe": {
            "model": str(model),
            "data": {
                "train": f"mimic:{mimic}",
                "id_test": f"chexpert:{chexpert}:valid",
                "ood_test": f"nih:{tmp_path / 'no-nih-here'}",
                "sft_images": 5000,
                "rl_images": 10,
            },
            "teacher": {"endpoint": "http://127.0.0.1:9/v1", "model": "teacher"},
            "evaluator_url": "http://127.0.0.1:9",
        },
    }
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_reports_every_problem_at_once_with_its_fix(
    tmp_path, tiny_gemma3_dir, synth_mimic_dir, synth_nih_dir
):
    config = broken_config(tmp_path, tiny_gemma3_dir, synth_mimic_dir, synth_nih_dir)
    args = ["run", str(config), "--out", str(tmp_path / "run"), "--check", "--gpu-gib", "80"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    failed = {c["subject"]: c for c in doc["checks"] if not c["ok"]}
    expected = {
        "recipe.data.train": "the draws need 5010",
        "recipe.data.id_test": "chexpert",
        "recipe.data.ood_test": "does not exist",
        "recipe.model": "lacks a tokenizer",
        "recipe.teacher.endpoint": "127.0.0.1:9",
        "recipe.evaluator_url": "/healthz",
    }
    assert set(expected) <= set(failed), failed
    for subject, found in expected.items():
        assert found in failed[subject]["detail"] and failed[subject]["fix"], failed[subject]
    assert not doc["ok"] and not (tmp_path / "run" / ".chexrl").exists()  # nothing ran
    table = CliRunner().invoke(app, args)  # the same as a table
    assert table.exit_code == 1 and "FAIL" in table.output and "problem(s)" in table.output
    # `chexrl run` runs the same checks first and stops before any stage
    run = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"), "--gpu-gib", "80"])
    assert run.exit_code == 1 and "no stage was run" in run.output
    assert not (tmp_path / "run" / ".chexrl").exists()


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_validate_and_only_their_placeholders_fail(name, tmp_path, monkeypatch):
    cfg = load_config(CONFIGS / name)
    assert cfg.sampling.n == 4 and cfg.sampling.temperature == 0.8 and cfg.sampling.top_p == 0.95
    assert (cfg.grpo.epsilon, cfg.grpo.epsilon_high, cfg.grpo.beta) == (0.15, 0.22, 0.15)
    assert (cfg.sft.lora.rank, cfg.sft.lora.alpha, cfg.sft.lora.dropout) == (16, 32, 0.1)
    assert (cfg.recipe.data.sft_images, cfg.recipe.data.rl_images) == (2000, 1000)
    assert cfg.recipe.data.ood_test.endswith(":nih9")
    monkeypatch.setenv(cfg.recipe.teacher.api_key_env, "a-key")
    checks = preflight(cfg, tmp_path / "run", gpu_gib=80)
    failed = [c for c in checks if not c.ok]
    assert {c.check for c in failed} == {"data", "model", "teacher"}, failed
    for c in failed:  # each names its placeholder
        assert "/path/to/" in c.detail or "example" in c.detail, c
    assert all(c.ok for c in checks if c.check in ("memory", "disk", "versions", "config"))


def test_print_config_prints_the_effective_configuration(tmp_path):
    result = CliRunner().invoke(app, ["run", str(CONFIGS / "demo.yaml"), "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["recipe"]["data"]["sft_images"] == 400
    assert printed["grpo"]["epsilon_high"] == 0.22  # a default the file leaves out, filled in
