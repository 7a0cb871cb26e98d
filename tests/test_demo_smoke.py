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
                    "pass_at_k": 2,
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
    # what an earlier run leaves behind must not stop or leak into this one
    (out / "grpo").mkdir(parents=True)
    (out / "grpo" / "evals.jsonl").write_text('{"step": 0}\n')
    (out / "grpo" / "metrics.jsonl").write_text('{"step": 7, "reward/total": 1.0}\n')
    (out / "notes.txt").write_text("the user's own file")
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
    logged = [json.loads(line)["step"] for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2] and (out / "notes.txt").read_text() == "the user's own file"
    rewards = summary["grpo_reward_per_step"]
    assert len(rewards) == 2 and summary["grpo_reward_window"] == 1
    assert (summary["grpo_reward_first"], summary["grpo_reward_last"]) == (rewards[0], rewards[-1])
    assert "| base |" in result.stdout and str(out / "summary.json") in result.stdout
    # the generalization report of the run, its path printed, with the side-by-side table of all three
    report = out / "grpo" / "report" / "report.html"
    assert summary["report"] == str(report) and str(report) in result.stdout
    page = report.read_text()
    assert all(name in page for name in ("base", "sft", "grpo", "chexpert", "nih-site-b"))
    results = json.loads((out / "grpo" / "evaluation" / "results.json").read_text())
    entries = {(e["model"], e["dataset"]): e["metrics"] for e in results["entries"]}
    assert entries["grpo", "chexpert"]["macro"]["f1"] == summary["grpo"]["id"]
    assert entries["sft", "nih-site-b"]["macro"]["f1"] == summary["sft"]["ood"]
    # Acc@1 against Pass@K: in the summary per model and set, from the same entries, and printed
    passes = {(e["model"], e["dataset"]): e["pass_at_k"] for e in results["entries"]}
    for model in ("base", "sft", "grpo"):
        got = summary[model]["pass_at_k"]["ood"]
        assert got["k"] == 2 and got["pass_at_k"] == passes[model, "nih-site-b"]["pass_at_k"]["mean"]
        assert got["acc_at_1"] == passes[model, "nih-site-b"]["acc_at_1"]["mean"]
    assert "Pass@2 (exact)" in result.stdout and "| grpo | OOD |" in result.stdout
    # each model against its parent with its 95% paired interval, printed and in the summary; the trade-off
    # printed as a warning or a note (with its evidence) when there is one; what the machine was
    diffs = {(d["system"], d["dataset"]): d for d in summary["comparison"]["differences"]}
    iv = diffs["grpo", "nih-site-b"]["macro_f1"]
    row = f"| grpo - sft | nih-site-b | 8 | {iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}] |"
    assert row in result.stdout and "transfer gap change grpo - sft (chexpert -> nih-site-b)" in result.stdout
    for text in summary["comparison"]["warnings"] + summary["comparison"]["notes"]:
        assert text in result.stdout
    env = summary["environment"]
    assert env["cpu_model"] and env["torch_threads"] >= 1 and env["versions"]["torch"]
