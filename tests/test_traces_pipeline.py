"""The trace pipeline over real HTTP, against a small scripted OpenAI-compatible server (fast).

The server answers per gold-label set: transient 503s, garbage, wrong labels or a valid trace, so the
retry, back-off, rejection and resume paths run without a model. tests/test_traces_vllm.py runs the same
pipeline against a real vLLM server.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from chexrl.traces.generate import GenerateConfig, generate_traces
from chexrl.traces.store import TraceJob, read_jsonl, rejected_path

GOLD = re.compile(r"The ground-truth labels for this image, confirmed by expert review, are: (.*)\.\n")


class ScriptedServer:
    """behaviour by gold labels: 'ok', 'flaky' (503 twice, then ok), 'garbage', 'wrong', 'bad_request',
    'down' (503 always), 'slow' (ok after `slow_seconds`). With `token`, a request without that bearer token
    gets 401."""

    def __init__(self, script: dict[str, str], token: str | None = None, slow_seconds: float = 0.3):
        self.script = script
        self.token = token
        self.slow_seconds = slow_seconds
        self.calls: Counter = Counter()
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                    server.calls["unauthorized"] += 1
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(b'{"error": "invalid api key"}')
                    return
                server.bodies.append(body)
                text = body["messages"][1]["content"][1]["text"]
                gold = GOLD.search(text).group(1)
                server.calls[gold] += 1
                mode = server.script[gold]
                if mode == "slow":
                    time.sleep(server.slow_seconds)
                if mode in ("bad_request", "down") or (mode == "flaky" and server.calls[gold] <= 2):
                    self.send_response(400 if mode == "bad_request" else 503)
                    self.end_headers()
                    self.wfile.write(b"nope")
                    return
                content = {
                    "garbage": "I think it is fine",
                    "wrong": "<think>looks normal</think>\n<solution>No Finding</solution>",
                }.get(mode, f"<think>Evidence seen.</think>\n<solution>{gold}</solution>")
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client killed mid-request (the kill test) breaks the pipe; not an error here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("L", (8, 8), 128).save(path)
    return str(path)


SCRIPT = {
    "Edema": "ok",
    "Cardiomegaly, Pleural Effusion": "flaky",
    "Pneumothorax": "garbage",
    "Fracture": "wrong",
    "Lung Lesion": "bad_request",
    "Pleural Other": "down",
}


def _jobs(image):
    return [TraceJob(f"s{i}", image, tuple(gold.split(", "))) for i, gold in enumerate(SCRIPT)]


def test_accepts_retries_rejects_and_resumes(tmp_path, image):
    server = ScriptedServer(SCRIPT)
    sleeps: list[float] = []
    out = tmp_path / "traces.jsonl"
    cfg = GenerateConfig(
        endpoint=server.url, model="scripted", max_retries=2, concurrency=3, backoff_base_s=0.25
    )
    try:
        summary = generate_traces(_jobs(image), out, cfg, sleep=sleeps.append)
        assert summary.accepted == 2
        assert dict(summary.rejected) == {"unparseable": 1, "labels mismatch": 1}
        assert dict(summary.failed) == {"http error": 2}  # a 400 and a server that stays down: not final
        assert summary.retried == 4  # flaky, garbage, wrong, down
        assert server.calls["Cardiomegaly, Pleural Effusion"] == 3
        assert server.calls["Pneumothorax"] == 3 and server.calls["Fracture"] == 3
        assert server.calls["Lung Lesion"] == 1  # a 400 is not retried in the run
        assert server.calls["Pleural Other"] == 3
        assert len(sleeps) == 4 and sorted(sleeps)[0] >= 0.125  # flaky's and down's back-offs

        accepted = {r["sample_id"]: r for r in read_jsonl(out)}
        assert set(accepted) == {"s0", "s1"}
        assert accepted["s1"]["labels"] == ["Cardiomegaly", "Pleural Effusion"]
        assert accepted["s1"]["teacher"] == "scripted" and accepted["s1"]["format"] == "free_reasoning"
        rejected = {r["sample_id"]: r for r in read_jsonl(rejected_path(out))}
        assert set(rejected) == {"s2", "s3"}  # HTTP failures are never recorded as final
        assert rejected["s2"]["reason"] == "unparseable" and rejected["s2"]["attempts"] == 3
        assert rejected["s3"]["last_trace"].endswith("<solution>No Finding</solution>")

        # the request carries the image as a data URL, image first
        part = server.bodies[0]["messages"][1]["content"][0]
        assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")

        # a killed writer leaves a torn line: it is truncated, and nothing final is asked again
        with open(out, "ab") as f:
            f.write(b'{"sample_id": "s9", "tra')
        before = sum(server.calls.values())
        again = generate_traces(_jobs(image), out, cfg, sleep=sleeps.append)
        assert again.skipped == 4 and again.accepted == 0  # the two HTTP failures are asked again
        assert again.requests == 1 + 3 and dict(again.failed) == {"http error": 2}
        assert again.repaired_bytes == len(b'{"sample_id": "s9", "tra')
        assert sum(server.calls.values()) == before + 4
        assert len(read_jsonl(out)) == 2
    finally:
        server.close()


def test_cli_generate_and_template(tmp_path, image):
    from chexrl.cli import app

    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"image": image, "labels": [g], "sample_id": f"s{i}"}) + "\n"
            for i, g in enumerate(["Edema", "Pneumothorax"])
        )
    )
    server = ScriptedServer({"Edema": "ok", "Pneumothorax": "garbage"})
    runner = CliRunner()
    try:
        out = tmp_path / "t.jsonl"
        args = [
            "traces",
            "generate",
            "--samples-jsonl",
            str(samples),
            "--out",
            str(out),
            "--endpoint",
            server.url,
        ]
        result = runner.invoke(app, [*args, "--model", "m", "--max-retries", "1", "--backoff-base", "0.01"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout[result.stdout.index("{") :])
        assert summary["accepted"] == 1 and summary["rejected"] == {"unparseable": 1}
    finally:
        server.close()

    out = tmp_path / "tpl.jsonl"
    args = [
        "traces",
        "template",
        "--samples-jsonl",
        str(samples),
        "--out",
        str(out),
        "--format",
        "reasoning_a",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert [r["teacher"] for r in records] == ["template", "template"] and records[0][
        "format"
    ] == "reasoning_a"
    assert runner.invoke(app, args).exit_code == 0 and len(read_jsonl(out)) == 2  # resumes, no duplicates


@pytest.mark.parametrize("style,fixture", [("mimic", "synth_mimic_dir"), ("nih", "synth_nih_dir")])
def test_template_traces_from_a_synthetic_data_set(style, fixture, request, tmp_path):
    from chexrl.cli import app
    from chexrl.core.parsing import parse_completion
    from chexrl.core.schemas import SCHEMAS
    from chexrl.data.loaders import load_dataset

    spec = f"{style}:{request.getfixturevalue(fixture)}"
    samples = load_dataset(spec)
    out = tmp_path / "traces.jsonl"
    args = ["traces", "template", "--data", spec, "--out", str(out), "--format", "reasoning_narrative"]
    result = CliRunner().invoke(app, [*args, "--limit", "40"])
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert len(records) == min(40, len(samples))
    assert len({r["sample_id"] for r in records}) == len(records)
    for record, sample in zip(records, samples[: len(records)], strict=True):
        assert record["image"] == sample.image_path and record["schema"] == sample.schema
        parsed = parse_completion(record["trace"], SCHEMAS[sample.schema])
        assert parsed.valid and parsed.label_set == frozenset(sample.labels)


def test_a_killed_run_resumes_without_duplicates(tmp_path, image):
    """SIGKILL the CLI mid-run (a real process, real file), then re-run: every sample once, none re-asked."""
    import os
    import signal
    import subprocess

    labels, server, out, cmd = _slow_traces_cli(tmp_path, image, n_labels=10, concurrency=1)
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while len(read_jsonl(out)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        first = read_jsonl(out)
        assert 3 <= len(first) < len(labels)
        with open(out, "ab") as f:  # as if the kill had landed inside a write
            f.write(b'{"sample_id": "Edema", "trace": "<think>tor')

        cfg = GenerateConfig(endpoint=server.url, model="m", concurrency=4)
        summary = generate_traces([TraceJob(lab, image, (lab,)) for lab in labels], out, cfg)
        records = read_jsonl(out)
        assert sorted(r["sample_id"] for r in records) == sorted(labels)
        assert summary.skipped == len(first) and summary.accepted == len(labels) - len(first)
        assert summary.repaired_bytes > 0
        # only samples still pending were asked again (the one in flight at the kill may be asked twice)
        assert sum(server.calls.values()) <= len(labels) + 1
    finally:
        server.close()


def test_a_wrong_api_key_stops_the_run_records_nothing_and_a_rerun_retries(tmp_path, image):
    from chexrl.core.schemas import CHEXPERT14
    from chexrl.traces.generate import TeacherEndpointError

    labels = [lab for lab in CHEXPERT14 if lab != "No Finding"][:10]
    server = ScriptedServer(dict.fromkeys(labels, "ok"), token="right")
    jobs = [TraceJob(lab, image, (lab,)) for lab in labels]
    out = tmp_path / "traces.jsonl"
    cfg = GenerateConfig(endpoint=server.url, model="m", api_key="wrong", concurrency=2, max_retries=3)
    try:
        with pytest.raises(TeacherEndpointError, match="HTTP 401") as err:
            generate_traces(jobs, out, cfg, sleep=lambda s: None)
        assert server.calls["unauthorized"] <= 2  # at most the requests already in flight; none queued
        summary = err.value.summary
        assert summary.failed["http error"] == server.calls["unauthorized"]
        assert summary.cancelled == len(jobs) - server.calls["unauthorized"]
        assert read_jsonl(out) == [] and read_jsonl(rejected_path(out)) == []  # nothing final
        # the CLI: the summary and the error, exit 1, nothing final; a server that stays down: still pending
        samples = tmp_path / "samples.jsonl"
        samples.write_text(json.dumps({"image": image, "labels": ["Edema"], "sample_id": "e"}) + "\n")
        cli_out = tmp_path / "cli.jsonl"
        args = ["traces", "generate", "--samples-jsonl", str(samples), "--out", str(cli_out)]
        args += ["--endpoint", server.url, "--model", "m", "--api-key-env", "CHEXRL_TEST_TEACHER_KEY"]
        res = CliRunner().invoke(app_cli(), args, env={"CHEXRL_TEST_TEACHER_KEY": "wrong"})
        assert res.exit_code == 1 and "HTTP 401" in res.output and '"cancelled"' in res.output
        assert read_jsonl(rejected_path(cli_out)) == []
        cfg.api_key = "right"
        again = generate_traces(jobs, out, cfg)
        assert again.accepted == len(jobs) and again.skipped == 0
    finally:
        server.close()
    down = ScriptedServer({"Edema": "down"})
    try:
        args = ["traces", "generate", "--samples-jsonl", str(samples), "--out", str(cli_out)]
        args += ["--endpoint", down.url, "--model", "m", "--max-retries", "0"]
        res = CliRunner().invoke(app_cli(), args)
        assert res.exit_code == 1 and "still pending" in res.output
        assert read_jsonl(rejected_path(cli_out)) == [] and read_jsonl(cli_out) == []
    finally:
        down.close()


def app_cli():
    from chexrl.cli import app

    return app


def test_ctrl_c_cancels_queued_requests_and_keeps_the_answers_in_flight(tmp_path, image):
    """SIGINT the CLI mid-run: the queued requests are never sent, and every answer the server gave is
    written (before, the pool sent every queued request on exit and threw the answers away)."""
    import signal
    import subprocess

    # 1.5 s an answer: the whole run takes 9 s, so the interrupt lands mid-run even on a loaded machine
    labels, server, out, cmd = _slow_traces_cli(tmp_path, image, n_labels=12, concurrency=2, slow_seconds=1.5)
    try:
        # Ctrl-C's default action in the child, whatever this test process inherited or set (an earlier
        # test in the session can leave SIGINT ignored, and an ignored signal stays ignored across exec)
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while len(read_jsonl(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) != 0
        answered = sum(server.calls.values())
        assert answered <= len(read_jsonl(out)) + 2 < len(labels)  # queued ones were never sent
        assert answered == len(read_jsonl(out))  # the answers in flight were written, not discarded
        time.sleep(0.5)
        assert sum(server.calls.values()) == answered  # and nothing is sent after the exit either
    finally:
        server.close()


def _slow_traces_cli(tmp_path, image, *, n_labels: int, concurrency: int, slow_seconds: float = 0.3):
    """A teacher that answers slowly, one sample per label, and the `chexrl traces generate` command line
    that asks it: (labels, server, out file, command)."""
    import os
    import sys

    from chexrl.core.schemas import CHEXPERT14

    labels = [lab for lab in CHEXPERT14 if lab != "No Finding"][:n_labels]
    server = ScriptedServer(dict.fromkeys(labels, "slow"), slow_seconds=slow_seconds)
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"image": image, "labels": [lab], "sample_id": lab}) + "\n" for lab in labels)
    )
    out = tmp_path / "traces.jsonl"
    chexrl_bin = os.path.join(os.path.dirname(sys.executable), "chexrl")
    cmd = [chexrl_bin, "traces", "generate", "--samples-jsonl", str(samples)]
    cmd += ["--out", str(out), "--endpoint", server.url, "--model", "m", "--concurrency", str(concurrency)]
    return labels, server, out, cmd
