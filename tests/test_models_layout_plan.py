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


def test_step_time_model_divides_generation_and_training_and_adds_the_allreduce():
    from chexrl.models.layout_plan import step_time_model

    median = {"generation": 0.4, "forward_backward": 0.6, "scoring": 0.01, "optimizer": 0.02}
    median |= {"weight_sync": 0.03, "other": 0.04}
    one = step_time_model(median, workers=1, learners=1, adapter_bytes=10**9, link_gb_per_s=10)
    assert one["allreduce"] == 0 and one["step"] == pytest.approx(1.1)
    four = step_time_model(
        median, workers=4, learners=4, adapter_bytes=10**9, link_gb_per_s=10, num_iterations=2
    )
    # ring all-reduce: 2 (N-1)/N of 1 GB at 10 GB/s, once per optimizer step
    assert four["allreduce"] == pytest.approx(2 * 1.5 * 0.1)
    assert four["step"] == pytest.approx(0.1 + 0.15 + 0.3 + 0.1)
    # split, same 4 GPUs as 2 + 2: slower than colocated on 4 (each phase uses half the GPUs)
    split = step_time_model(
        median, workers=2, learners=2, adapter_bytes=10**9, link_gb_per_s=10, num_iterations=2
    )
    assert split["step"] > four["step"]


def test_plan_command_models_the_step_time_from_bench_step_figures(tmp_path):
    median = {"step": 1.0, "generation": 0.4, "forward_backward": 0.5, "scoring": 0.0, "optimizer": 0.0}
    (tmp_path / "step.json").write_text(
        json.dumps({"chexrl": {"median": median | {"weight_sync": 0.1, "other": 0.0}}})
    )
    args = ["plan", "--preset", "medgemma-4b", "--gpus", "2", "--step-json"]
    out = CliRunner().invoke(app, [*args, str(tmp_path / "step.json"), "--json", str(tmp_path / "p.json")])
    assert out.exit_code == 0 and "modelled step" in out.output, out.output
    assert json.loads((tmp_path / "p.json").read_text())["step_time"]["generation"] == pytest.approx(0.2)
    (tmp_path / "bad.json").write_text("{}")
    bad = CliRunner().invoke(app, [*args, str(tmp_path / "bad.json")])
    text = " ".join(bad.output.replace("│", " ").split())  # the error box wraps long lines
    assert bad.exit_code == 2 and "not `chexrl bench step` figures" in text, bad.output
