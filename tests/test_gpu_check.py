"""scripts/gpu_check.sh, the prepared GPU check, end to end on the CPU at the tiny preset's size (so the
script a lent GPU runs cannot rot), and the promise it rests on: the learner's side imports no vLLM, Ray,
FastAPI or HTTP client, none of which the GPU machine has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        [
            "bash",
            "scripts/gpu_check.sh",
            "--cpu",
            "--out",
            str(out),
            "--work",
            str(work),
            "--steps",
            "1",
            "--warmup",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    figures = json.loads((out / "gpu_check.json").read_text())
    for path in ("chunked", "full"):
        r = figures["chexrl"][path]
        assert r["chunk_tokens"] == (256 if path == "chunked" else None)
        assert len(r["step_seconds"]) == 1 and r["tokens_per_second_fwd_bwd"] > 0
        assert r["plan_peak_bytes"] > 0 and r["plan_over_measured"] == pytest.approx(
            r["plan_peak_bytes"] / r["measured_peak_bytes"]
        )
    trl = figures["trl"]
    assert trl["ran"] and len(trl["step_seconds"]) == 1 and len(trl["update_seconds"]) == 1
    assert 0 < trl["update_seconds"][0] < trl["step_seconds"][0]
    assert "chexrl chunked" in proc.stdout and "trl" in proc.stdout


def test_the_learner_side_needs_no_engine_cluster_or_server():
    code = (
        "import sys; import chexrl.bench.gpu_check, chexrl.bench.learner, chexrl.models.memory_plan, trainer.grpo;"
        "bad = sorted(m for m in ('vllm', 'ray', 'fastapi', 'uvicorn', 'httpx') if m in sys.modules); print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_gpu_check_refuses_to_run_without_a_gpu_unless_told(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "chexrl.bench.gpu_check", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr
