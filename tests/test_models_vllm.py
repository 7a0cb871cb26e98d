"""Each tiny checkpoint in a real vLLM engine (own process): one image per prompt, n=4 samples at
temperature 0.8 / top_p 0.95, then the same with a random rank-16 PEFT LoRA adapter as a LoRARequest,
which must change the outputs; then a fixed answer scored with that adapter as a LoRARequest and merged into
the weights (the rollout worker's `merged` weight sync), whose log-probabilities must agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chexrl.models.vllm_check import MERGED_TOLERANCE

NIH_SAMPLE = Path("/work/shared/data/nih-samples/00000001_000.png")


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_gemma3_dir", "tiny_qwen_dir"])
def test_vllm_image_and_lora(request, fixture, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "chexrl.models.vllm_check", str(model_dir), "--json", str(report_path)]
    if fixture == "tiny_gemma3_dir" and NIH_SAMPLE.is_file():
        cmd += ["--image", str(NIH_SAMPLE)]  # a real radiograph, resized to 64x64
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads(report_path.read_text())
    assert len(report["base"]) == len(report["lora"]) == 4
    assert all(len(tokens) > 0 for tokens in report["base"] + report["lora"])
    assert report["lora_changed_outputs"]
    # the adapter moves log-probs far more than serving it merged instead of as a LoRA does
    assert report["merged_vs_lora_max_logprob_diff"] < MERGED_TOLERANCE
    assert report["base_vs_lora_max_logprob_diff"] > 5 * MERGED_TOLERANCE
    assert report["scored_tokens"] > 20
    print(f"{fixture}: engine start {report['engine_start_s']} s, 4 samples in {report['generate_s']} s")
