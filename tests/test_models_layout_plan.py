"""`chexrl plan --gpus N`: each GPU of a multi-GPU layout planned with the one-GPU terms (pure arithmetic
at MedGemma-4B's published dimensions)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.models.layout_plan import layout_budget
from chexrl.models.memory_plan import PlanSettings, StepShape, lora_parameters, model_shape, plan

STEP = StepShape(prompts=8, n=4, prompt_tokens=400, completion_tokens=300, micro_batch=4)


def _medgemma():
    from chexrl.models.presets import MEDGEMMA_4B
    from chexrl.models.tiny import build_tokenizer, make_config

    return model_shape(make_config(MEDGEMMA_4B, build_tokenizer(MEDGEMMA_4B)))


def test_colocated_gpus_split_the_prompts_and_add_the_allreduce_buffer():
    shape, settings = _medgemma(), PlanSettings(gpu_gib=80)
    one = layout_budget(shape, STEP, settings, layout="colocated", gpus=1)
    four = layout_budget(shape, STEP, settings, layout="colocated", gpus=4, nodes=2)
    assert one["allreduce_bytes"] == 0 and one["prompts_per_engine"] == 8
    assert four["prompts_per_engine"] == 2 and four["gpus_per_node"] == 2
    # each engine holds a quarter of the step's sequences in its KV cache
    assert four["one_gpu_plan"]["engine"]["kv_needed"] * 4 == one["one_gpu_plan"]["engine"]["kv_needed"]
    adapter = lora_parameters(shape, settings.lora_rank) * 4
    assert four["allreduce_bytes"] == adapter and four["allreduce_traffic_bytes"] == int(1.5 * adapter)
    gpu1, gpu4 = (
        one["per_gpu"]["rollout worker + learner rank"],
        four["per_gpu"]["rollout worker + learner rank"],
    )
    # one GPU: the one-GPU plan's worst phase exactly
    worst = max(p["total"] for p in plan(shape, STEP, settings)["phases"].values())
    assert gpu1["total"] == worst and four["fits"]
    assert gpu4["total"] <= gpu1["total"] + adapter


def test_split_gpus_hold_an_engine_or_a_learner_rank():
    shape = _medgemma()
    budget = layout_budget(shape, STEP, PlanSettings(gpu_gib=80), layout="split", gpus=6, learners=2)
    assert (budget["rollout_workers"], budget["learner_ranks"], budget["gpus"]) == (4, 2, 6)
    rollout, learner = budget["per_gpu"]["rollout worker"], budget["per_gpu"]["learner rank"]
    assert rollout["learner"] == 0 and learner["engine"] == 0
    assert learner["total"] == budget["one_gpu_plan"]["learner_peak"] + budget["allreduce_bytes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "3", "--nodes", "2"], "whole number of GPUs per node"),
        (["--gpus", "1", "--layout", "split"], "at least 2 GPUs"),
        (["--gpus", "4", "--layout", "split", "--learners", "4"], "leaves no rollout GPU"),
        (["--gpus", "4", "--layout", "ring"], "colocated or split"),
    ],
)
def test_plan_command_refuses_layouts_that_cannot_be_placed(args, message):
    out = CliRunner().invoke(app, ["plan", "--preset", "medgemma-4b", *args])
    assert out.exit_code == 2 and message in out.output, out.output


def test_plan_command_prints_and_writes_each_gpus_budget(tmp_path):
    runner = CliRunner()
    args = ["plan", "--preset", "medgemma-4b", "--gpus", "4", "--nodes", "2", "--layout", "split"]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "rollout worker" in result.output and "gradient all-reduce" in result.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["layout"] == "split" and doc["gpus"] == 4 and doc["fits"]
    small = runner.invoke(app, [*args[:-2], "--gpu-gib", "16"])
    assert small.exit_code == 1 and "DOES NOT FIT" in small.output
