"""`chexrl run` end to end on synthetic data in the three real layouts (MIMIC-CXR-JPG, CheXpert, NIH),
through the real vLLM engine, Ray and the evaluator, for both model families; a rerun with every stage up
to date; a SIGKILL during GRPO, then a rerun that skips the finished stages (base and SFT's evaluation
among them), resumes GRPO from its checkpoint and ends with the uninterrupted run's figures. Sizes are the
smallest that exercise each stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def small_config(model_dir: Path, mimic: Path, chexpert: Path, nih: Path) -> dict:
    return {
        "recipe": {
            "model": str(model_dir),
            "data": {
                "train": f"mimic:{mimic}",
                "id_test": f"chexpert:{chexpert}",
                "ood_test": f"nih:{nih}",
                "sft_images": 16,
                "rl_images": 4,
                "eval_images": 4,
            },
            "teacher": {"kind": "template"},
            "pass_at_k": 2,
            "eval_max_model_len": 1024,
        },
        "sft": {"num_epochs": 1, "gradient_accumulation_steps": 4, "gradient_checkpointing": False},
        "sampling": {"max_tokens": 16},
        "grpo": {
            "max_steps": 3,
            "prompts_per_step": 2,
            "save_steps": 1,
            "eval_steps": 3,
            "eval_limit": 2,
            "micro_batch_size": 8,
            "gradient_checkpointing": False,
        },
    }


def chexrl_run(config: Path, out: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "chexrl.cli", "run", str(config), "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def figures(summary: dict) -> dict:
    """The summary without its timings."""
    return {k: v for k, v in summary.items() if k != "seconds"}


def demo_path_config() -> dict:
    """The demo's path at the smallest sizes: a tiny Gemma3 built, synthetic data in the three layouts
    written, and the emulated pretraining, all as stages."""
    cfg = small_config(Path("-"), Path("-"), Path("-"), Path("-"))
    recipe = cfg["recipe"]
    del recipe["model"]
    recipe["tiny_model"] = {"family": "gemma3", "seed": 0}
    recipe["synthetic_data"] = {"mimic_images": 120, "chexpert_images": 30, "nih_images": 30}
    recipe["pretrain"] = True
    recipe["data"] |= {
        "train": "mimic:{out}/data/mimic",
        "id_test": "chexpert:{out}/data/chexpert",
        "ood_test": "nih:{out}/data/nih-site-b",
        "pretrain_images": 16,
        "ood_name": "nih-site-b",
    }
    return cfg | {"pretrain": {"max_steps": 3, "batch_size": 4}}


def run_recipe(root: Path, cfg: dict, command: str = "run") -> tuple[Path, Path, str]:
    config = root / "recipe.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "chexrl.cli", command, *([str(config)] if command == "run" else [])]
    cmd += ["--out", str(root / "run"), *(["--config", str(config)] if command == "demo" else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return config, root / "run", result.stdout


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory):
    """`chexrl demo --config` (the alias of `chexrl run`) on the demo's path at the smallest sizes, in a
    folder where an earlier GRPO run and the user's own file are."""
    root = tmp_path_factory.mktemp("recipe-gemma3")
    (root / "run" / "grpo").mkdir(parents=True)
    (root / "run" / "grpo" / "metrics.jsonl").write_text('{"step": 7, "reward/total": 1.0}\n')
    (root / "run" / "notes.txt").write_text("the user's own file")
    return run_recipe(root, demo_path_config(), command="demo")


RECIPE = ("data", "traces", "sft", "evaluate_sft", "grpo", "evaluate", "report")
DEMO_ONLY = ("tiny_model", "synth_data", "pretrain")


def check_finished_run(out: Path, stdout: str, stages: tuple[str, ...], ood: str) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for stage in DEMO_ONLY + RECIPE:
        ran = f"] {stage}: done in" in stdout and (out / ".chexrl" / f"{stage}.json").is_file()
        assert ran == (stage in stages), stage  # the demo-only stages run only where the config turns them on
    for model in ("base", "sft", "grpo"):
        assert 0.0 <= summary[model]["id"] <= 1.0 and 0.0 <= summary[model]["ood"] <= 1.0
        assert summary[model]["pass_at_k"]["ood"]["k"] == 2
    assert summary["grpo_steps"] == 3 and len(summary["grpo_reward_per_step"]) == 3
    results = json.loads((out / "grpo" / "evaluation" / "results.json").read_text())
    entries = {(e["model"], e["dataset"]): e["metrics"] for e in results["entries"]}
    assert entries["grpo", "chexpert"]["macro"]["f1"] == summary["grpo"]["id"]
    assert entries["sft", ood]["macro"]["f1"] == summary["sft"]["ood"]
    samples = {name: (out / "samples" / f"{name}.jsonl").read_text().splitlines() for name in ("sft", "rl")}
    assert (len(samples["sft"]), len(samples["rl"])) == (16, 4)
    patients = [{json.loads(line)["patient_id"] for line in lines} for lines in samples.values()]
    assert not patients[0] & patients[1]  # the SFT and RL draws share no patient
    assert (out / "grpo" / "report" / "report.html").is_file() and "| base |" in stdout
    sft_results = json.loads((out / "sft-evaluation" / "results.json").read_text())
    assert [m["name"] for m in sft_results["models"]] == ["base", "sft"]  # before GRPO, GRPO's baseline
    assert sft_results["entries"] == results["entries"][: len(sft_results["entries"])]
    assert not list(out.rglob("*.partial"))  # every atomic output was renamed into place
    return summary


def test_gemma3_recipe_end_to_end_then_every_stage_up_to_date(gemma_run):
    config, out, stdout = gemma_run
    summary = check_finished_run(out, stdout, DEMO_ONLY + RECIPE, "nih-site-b")
    assert "GRPO mean reward (3 steps" in stdout and str(out / "summary.json") in stdout
    assert (out / "notes.txt").read_text() == "the user's own file"  # the earlier GRPO run is gone
    # each model against its parent with its 95% paired interval, printed and in the summary; the trade-off
    # printed as a warning or a note (with its evidence) when there is one; what the machine was
    diffs = {(d["system"], d["dataset"]): d for d in summary["comparison"]["differences"]}
    iv = diffs["grpo", "nih-site-b"]["macro_f1"]
    assert f"{iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]" in stdout
    assert "transfer gap change grpo - sft (chexpert -> nih-site-b)" in stdout
    for text in summary["comparison"]["warnings"] + summary["comparison"]["notes"]:
        assert text in stdout
    env = summary["environment"]
    assert env["cpu_model"] and env["torch_threads"] >= 1 and env["versions"]["torch"]
    start = time.perf_counter()
    again = chexrl_run(config, out)
    seconds = time.perf_counter() - start
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in DEMO_ONLY + RECIPE:
        assert f"] {stage}: up to date" in again.stdout
    assert "running" not in again.stdout and seconds < 60
    assert figures(json.loads((out / "summary.json").read_text())) == figures(summary)


def test_qwen2_5_vl_recipe_end_to_end(
    tmp_path_factory, tiny_qwen_dir, synth_mimic_dir, synth_chexpert_dir, synth_nih_dir
):
    """A given model folder and data sets in their own folders: the path of a real run."""
    cfg = small_config(tiny_qwen_dir, synth_mimic_dir, synth_chexpert_dir, synth_nih_dir)
    _, out, stdout = run_recipe(tmp_path_factory.mktemp("recipe-qwen"), cfg)
    check_finished_run(out, stdout, RECIPE, "nih")
    sft_history = json.loads((out / "sft" / "history.json").read_text())
    assert sft_history["n_train"] > 0 and sft_history["epochs"]
    rows = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]


def wait_for_first_checkpoint(proc: subprocess.Popen, metrics: Path, timeout: float = 1200) -> None:
    """Until GRPO has logged step 1 (its checkpoint is written before the step is logged)."""
    deadline = time.monotonic() + timeout
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert proc.poll() is None, "chexrl run ended before GRPO's first checkpoint"
        assert time.monotonic() < deadline, "no GRPO step logged in time"
        time.sleep(0.5)


def test_sigkill_during_grpo_then_rerun_resumes_to_the_same_figures(gemma_run):
    config, out, _ = gemma_run
    uninterrupted = json.loads((out / "summary.json").read_text())
    (out / "grpo" / "metrics.jsonl").unlink()  # the rerun's GRPO starts its run folder afresh
    cmd = [sys.executable, "-m", "chexrl.cli", "run", str(config), "--out", str(out), "--from", "grpo"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_first_checkpoint(proc, out / "grpo" / "metrics.jsonl")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / ".chexrl" / "grpo.json").exists() and (out / ".chexrl" / "grpo.running").exists()
    assert not (out / ".chexrl" / "evaluate.json").exists()  # what came after GRPO is out of date
    rerun = chexrl_run(config, out)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    for stage in (
        *DEMO_ONLY,
        "data",
        "traces",
        "sft",
        "evaluate_sft",
    ):  # base and SFT are not evaluated again
        assert f"] {stage}: up to date" in rerun.stdout
    assert "] grpo: resuming" in rerun.stdout and "] evaluate: running" in rerun.stdout
    steps = [json.loads(line)["step"] for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert figures(json.loads((out / "summary.json").read_text())) == figures(uninterrupted)
