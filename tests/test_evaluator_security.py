"""Who may reach the evaluator and what a request may cost it, over real uvicorn servers: the token checked
before the body is read, the API document protected, no non-loopback bind without a token, bounded
requests in flight, short 422s, and large requests scored off the event loop."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
import yaml

from chexrl.core.parsing import format_completion
from services.evaluator import app as evaluator_app
from services.evaluator.process import EvaluatorProcess, free_port
from services.evaluator.security import InsecureBindError, check_exposure, is_loopback
from services.evaluator.server import server_config
from services.evaluator.settings import EvaluatorSettings

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HARD = {"reward": "hard", "items": [{"completion": "x", "labels": []}]}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A token-protected evaluator with room for 4 requests in flight."""
    work = tmp_path_factory.mktemp("secured")
    (work / "evaluator.yaml").write_text(yaml.safe_dump({"max_concurrency": 4}))
    server = EvaluatorProcess(
        work / "state", token=TOKEN, config=work / "evaluator.yaml", log=work / "evaluator.log"
    ).start()
    yield server
    server.stop()


def peak_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):  # noqa: SIM115 - read at once
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_unauthenticated_request_is_refused_before_its_body_is_read(secured):
    # Headers that declare 7 MB, then 9 bytes: a server that reads the body before checking the token
    # waits for the rest and never answers.
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as s:
        s.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 7000000\r\n\r\n{"items":'
        )
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head
    # Whole 7.8 MB bodies of small JSON values (the costliest kind to parse): the server's memory stays
    # where it was, because nothing of them is read.
    body = b'{"reward": "hard", "items": [' + b",".join([b"1"] * 3_900_000) + b"]}"
    before = peak_rss_kib(secured.proc.pid)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(secured.url + "/score", content=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert peak_rss_kib(secured.proc.pid) - before < 20 * 1024  # parsing one such body takes ~55 MB


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("POST", "/score"),
        ("POST", "/evaluate"),
        ("GET", "/runs/r1/window"),
        ("PUT", "/runs/r1/window"),
        ("DELETE", "/runs/r1/window"),
        ("GET", "/no-such-route"),
    ],
)
def test_every_route_but_healthz_needs_the_token(secured, method, path):
    assert httpx.request(method, secured.url + path).status_code == 401
    wrong = httpx.request(method, secured.url + path, headers={"Authorization": "Bearer s3cret"})
    assert wrong.status_code == 401
    right = httpx.request(method, secured.url + path, headers=AUTH)
    assert right.status_code != 401  # 200, or 422/404 for these bodiless calls: past the token check
    assert httpx.get(secured.url + "/healthz").status_code == 200


def test_concurrency_is_bounded(secured):
    # Idle keep-alive connections take no request slot; 4 requests in flight (bodies still coming) take
    # all of them: a fifth gets 503 at once, /healthz still answers, and closing them frees the slots.
    idle, stalled = [], []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", secured.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")  # accepted and kept open
            idle.append(s)
        assert httpx.post(secured.url + "/score", json=HARD, headers=AUTH).status_code == 200
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", secured.port), timeout=5)
            s.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
            )
            stalled.append(s)
        deadline = time.monotonic() + 10
        while httpx.post(secured.url + "/score", json=HARD, headers=AUTH).status_code != 503:
            assert time.monotonic() < deadline, "four requests in flight did not fill the slots"
            time.sleep(0.05)
        assert httpx.get(secured.url + "/healthz").status_code == 200
    finally:
        for s in idle + stalled:
            s.close()
    deadline = time.monotonic() + 10
    while httpx.post(secured.url + "/score", json=HARD, headers=AUTH).status_code == 503:
        assert time.monotonic() < deadline, "still refused after the connections closed"
        time.sleep(0.1)


def test_exposure_rule():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_exposure(host, None, insecure=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "evaluator"):
        assert not is_loopback(host)
        with pytest.raises(InsecureBindError, match="CHEXRL_EVALUATOR_TOKEN"):
            check_exposure(host, None, insecure=False)
        check_exposure(host, "token", insecure=False)
        check_exposure(host, None, insecure=True)


def test_non_loopback_bind_without_token_refuses_to_start(tmp_path):
    cmd = [sys.executable, "-m", "chexrl.cli", "serve-evaluator", "--host", "0.0.0.0", "--port"]
    cmd += [str(free_port()), "--state-dir", str(tmp_path / "state")]
    for blank in (None, "  "):  # unset, or set to nothing usable
        env = {k: v for k, v in os.environ.items() if k != "CHEXRL_EVALUATOR_TOKEN"}
        if blank is not None:
            env["CHEXRL_EVALUATOR_TOKEN"] = blank
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "refusing to serve '0.0.0.0' without a token" in done.stderr and "--insecure" in done.stderr
    # --insecure: the operator's explicit choice
    server = EvaluatorProcess(tmp_path / "state", host="0.0.0.0", args=("--insecure",)).start()
    try:
        assert httpx.post(server.url + "/score", json=HARD).status_code == 200
    finally:
        server.stop()


def test_a_422_lists_at_most_the_cap_and_echoes_little(evaluator):
    body = {"reward": "hard", "items": [{"completion": 3, "labels": []}] * 1000}
    r = httpx.post(evaluator.url + "/score", json=body, timeout=30)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) == 21  # the default max_validation_errors, then the count of the rest
    assert detail[0]["loc"] == ["body", "items", 0, "completion"]
    assert detail[-1] == {
        "type": "too_many_errors",
        "loc": ["body"],
        "msg": "980 more errors not listed (1000 in all)",
    }
    long = {"reward": "hard", "items": [{"completion": "x" * 16385, "labels": []}]}
    r = httpx.post(evaluator.url + "/score", json=long, timeout=30)
    assert r.status_code == 422 and len(r.content) < 1000  # the 16 KiB input is not sent back


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    """The app under a real uvicorn in this process, so a spy can see which thread scores."""
    settings = EvaluatorSettings(
        state_dir=str(tmp_path_factory.mktemp("inprocess")), offload_chars=1000, port=free_port()
    )
    config = server_config(evaluator_app.create_app(settings), settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "in-process uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(30)


def test_large_requests_are_scored_off_the_event_loop(inprocess, monkeypatch):
    seen = []

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def spy(real):
        def wrapper(*args, **kwargs):
            seen.append(on_loop())
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(evaluator_app, "score_completion", spy(evaluator_app.score_completion))
    monkeypatch.setattr(evaluator_app, "completion_metrics", spy(evaluator_app.completion_metrics))
    small = [{"completion": format_completion("short", ["Edema"]), "labels": ["Edema"]}]
    large = [{"completion": format_completion("x" * 2000, ["Edema"]), "labels": ["Edema"]}]

    def call(path, body):
        seen.clear()
        assert httpx.post(inprocess + path, json=body, timeout=30).status_code == 200
        return set(seen)

    assert call("/score", {"reward": "hard", "items": small}) == {True}  # cheap: stays on the loop
    assert call("/score", {"reward": "hard", "items": large}) == {False}
    assert call("/score", {"reward": "nuanced", "run_id": "off-loop", "items": small}) == {False}
    assert call("/evaluate", {"schema": "chexpert14", "items": large}) == {False}
