"""The evaluator under hostile load, over real uvicorn on loopback: idle and trickling connections give
their slots back, /healthz answers while the request slots are full, a 413 closes its connection, a full
disk answers 507 and still lets a run be cleared, 10,000 run ids stay within the state's bounds, and the
lock refuses a symlink. Every loop here has a deadline."""

import contextlib
import os
import select
import socket
import threading
import time

import httpx
import pytest
import yaml

from chexrl.core.parsing import format_completion
from services.evaluator.process import EvaluatorProcess
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.window_store import StateDirUnsafe, WindowStore

pytestmark = pytest.mark.slow

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HARD = {"reward": "hard", "items": [{"completion": "x", "labels": []}]}
LIMITS = {"header_timeout_s": 3.0, "body_timeout_s": 3.0, "max_connections": 160, "max_body_bytes": 65536}


def start(work, settings: dict, state_dir=None, **kwargs) -> EvaluatorProcess:
    (work / "evaluator.yaml").write_text(yaml.safe_dump(settings))
    server = EvaluatorProcess(
        state_dir or work / "state",
        token=TOKEN,
        config=work / "evaluator.yaml",
        log=work / "evaluator.log",
        **kwargs,
    )
    return server.start()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """An evaluator with 3-second header and body deadlines and room for 160 connections."""
    server = start(tmp_path_factory.mktemp("guarded"), LIMITS)
    yield server
    server.stop()


def timed(call) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = call()
    return response, time.monotonic() - began


def assert_answers_promptly(server, tries: int = 3) -> None:
    """/healthz and an authenticated /score answer 200 every time, within a second at best of `tries`
    (the best, not each: the 2-core machine the tests share can stall any single request)."""
    health_s, score_s = [], []
    for _ in range(tries):
        health, seconds = timed(lambda: httpx.get(server.url + "/healthz", timeout=5))
        health_s.append(seconds)
        score, seconds = timed(lambda: httpx.post(server.url + "/score", json=HARD, headers=AUTH, timeout=5))
        score_s.append(seconds)
        assert (health.status_code, score.status_code) == (200, 200), (health.text, score.text)
    assert min(health_s) < 1 and min(score_s) < 1, (health_s, score_s)


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def closed_by_server(sockets: list[socket.socket], within_s: float) -> int:
    """How many of `sockets` the server closes (EOF or reset) within `within_s` seconds."""
    deadline, open_ = time.monotonic() + within_s, list(sockets)
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(open_, [], [], 0.1)
        for s in readable:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                open_.remove(s)
    return len(sockets) - len(open_)


def test_idle_and_trickling_connections_give_their_slots_back(guarded):
    idle = [connect(guarded) for _ in range(64)]
    trickling = [connect(guarded) for _ in range(64)]
    stop = threading.Event()

    def trickle():
        # one header line at a time, never the blank line that ends the headers
        lines = iter([b"GET /healthz HTTP/1.1\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(1000)])
        while not stop.wait(0.2):
            line = next(lines)
            for s in trickling:
                with contextlib.suppress(OSError):  # closed by the server: the point of the test
                    s.sendall(line)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert_answers_promptly(guarded)  # 128 connections held open, well before their deadline
        # the deadline (3 s) closes every one of them, though the trickling ones keep sending
        assert closed_by_server(idle + trickling, within_s=6) == 128
    finally:
        stop.set()
        thread.join(5)
        for s in idle + trickling:
            s.close()
    assert_answers_promptly(guarded)


def test_past_the_connection_cap_the_oldest_waiting_connection_goes(guarded):
    held = [connect(guarded) for _ in range(200)]  # 40 over max_connections
    try:
        assert_answers_promptly(guarded)
        # the oldest 40 made room at once, well before the header deadline: the newest are still open
        assert closed_by_server(held[:40], within_s=2) == 40
        assert select.select(held[-100:], [], [], 0)[0] == []
    finally:
        for s in held:
            s.close()


def test_healthz_answers_while_every_request_slot_is_taken(guarded):
    # 64 authenticated requests whose bodies never complete: every request slot is in flight
    head = (
        b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
    )
    stalled = []
    try:
        for _ in range(64):
            s = connect(guarded)
            s.sendall(head % TOKEN.encode() + b"Content-Length: 100\r\n\r\n" + b'{"reward": ')
            stalled.append(s)
        deadline = time.monotonic() + 5
        while (busy := httpx.post(guarded.url + "/score", json=HARD, headers=AUTH)).status_code != 503:
            assert time.monotonic() < deadline, "the stalled requests never filled the slots"
            time.sleep(0.05)
        assert "64 requests in flight" in busy.json()["detail"]
        health, seconds = timed(lambda: httpx.get(guarded.url + "/healthz", timeout=5))
        assert health.status_code == 200 and seconds < 1
        assert closed_by_server(stalled, within_s=6) == 64  # the body deadline (3 s) frees the slots
    finally:
        for s in stalled:
            s.close()
    assert_answers_promptly(guarded)


def test_a_413_on_a_chunked_body_closes_the_connection(guarded):
    with connect(guarded) as s:
        s.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
        answer, sent = b"", 0
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            s.sendall(chunk)  # 64 KiB is the limit: the fifth chunk passes it
            sent += 1
            if select.select([s], [], [], 0.05)[0]:
                answer += s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower(), answer
        assert sent <= 8
        # the server closed its end: more of the body goes nowhere and the socket reads EOF
        with pytest.raises(OSError):
            for _ in range(200):
                s.sendall(chunk)
                time.sleep(0.005)
        assert closed_by_server([s], within_s=2) == 1


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (state / "evaluator.lock").symlink_to(victim)
    with pytest.raises(StateDirUnsafe, match=r"evaluator\.lock is a symlink: refusing to open it"):
        WindowStore.from_settings(EvaluatorSettings(state_dir=str(state)))
    assert victim.read_text() == "keep me"
    (state / "evaluator.lock").unlink()
    (state / "windows.sqlite3").symlink_to(victim)  # the database is opened the same way
    with pytest.raises(StateDirUnsafe, match=r"windows\.sqlite3 is a symlink"):
        WindowStore.from_settings(EvaluatorSettings(state_dir=str(state)))
    assert victim.read_text() == "keep me"


def test_the_state_directory_and_its_files_are_private(guarded):
    assert httpx.post(guarded.url + "/score", json={**HARD, "reward": "nuanced", "run_id": "p"}, headers=AUTH)
    assert os.stat(guarded.state_dir).st_mode & 0o777 == 0o700
    files = sorted(p.name for p in guarded.state_dir.iterdir())
    assert {"evaluator.lock", "windows.sqlite3", "windows.sqlite3-wal", "reserve.bin"} <= set(files)
    assert {p.name: p.stat().st_mode & 0o777 for p in guarded.state_dir.iterdir()} == dict.fromkeys(
        files, 0o600
    )


NORMAL = {
    "completion": format_completion("A careful look at the film.", ["No Finding"]),
    "labels": ["No Finding"],
}


def private_tmpfs(mountpoint, size: str) -> tuple[str, ...]:
    """A launcher that mounts a tmpfs of `size` at `mountpoint` in a mount namespace of the evaluator's
    own (it vanishes with the process, whatever happens to the test), then execs the evaluator."""
    namespace = ("--mount", "--propagation", "private") if os.geteuid() == 0 else ("-Urm",)
    script = 'mount -t tmpfs -o size="$1" tmpfs "$0" && shift && exec "$@"'
    return ("unshare", *namespace, "sh", "-c", script, str(mountpoint), size)


def test_a_full_disk_answers_507_and_a_run_can_still_be_cleared(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (tmp_path / "evaluator.yaml").write_text(yaml.safe_dump({"reserve_bytes": 256 * 1024}))
    server = EvaluatorProcess(
        small / "state",
        token=TOKEN,
        config=tmp_path / "evaluator.yaml",
        log=tmp_path / "evaluator.log",
        launcher=private_tmpfs(small, "3m"),
    ).start()
    labels = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia"]
    full_window = {"window": [labels] * 100}
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            for i in range(400):  # about 10 KB a run: 3 MiB fills within a few hundred
                refused = client.put(f"/runs/fill-{i}/window", json=full_window)
                if refused.status_code != 200:
                    break
            assert refused.status_code == 507, refused.text
            assert "no space for the run state" in refused.json()["detail"]
            scored = client.post("/score", json={"reward": "nuanced", "run_id": "late", "items": [NORMAL]})
            assert scored.status_code == 507
            assert client.post("/score", json=HARD).status_code == 200  # the hard reward needs no disk
            full = httpx.get(server.url + "/healthz")  # without the token
            detailed = client.get("/healthz").json()
            assert client.delete("/runs/fill-0/window").status_code == 200  # the reserve makes room
            assert client.get("/runs/fill-0/window").json()["window"] == []
            recovered = client.get("/healthz").json()  # the delete gave the log's space back
            assert client.put("/runs/after/window", json=full_window).status_code == 200
    finally:
        server.stop()
    body = full.json()
    assert (body["state"], body["reason"]) == ("full", "write_refused_no_space")
    assert body["headroom"]["disk_free_bytes"] < 256 * 1024
    assert str(tmp_path) not in full.text and "detail" not in body  # no path, no error text
    assert "no space for the run state" in detailed["detail"] and str(small) in detailed["detail"]
    assert (recovered["state"], recovered["reason"]) == ("ok", None)


def test_ten_thousand_run_ids_stay_within_the_bounds(tmp_path):
    # On a tmpfs of the evaluator's own: SQLite's fsync per request would make this 10x slower on disk.
    memory = tmp_path / "memory"
    memory.mkdir()
    bounds = {"max_runs": 500, "max_state_bytes": 256 * 1024, "answers_per_run": 4}
    server = start(tmp_path, bounds, launcher=private_tmpfs(memory, "64m"), state_dir=memory / "state")

    def score(first: int, count: int, items: int) -> None:
        """Runs first..first+count-1, one nuanced request each, from 4 clients at once."""

        def client_share(k: int) -> None:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
                for i in range(first + k, first + count, 4):
                    body = {
                        "reward": "nuanced",
                        "run_id": f"run-{i}",
                        "request_id": "q",
                        "items": [NORMAL] * items,
                    }
                    codes.append(client.post("/score", json=body).status_code)

        codes: list[int] = []
        threads = [threading.Thread(target=client_share, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert codes == [200] * count

    try:
        score(0, 5_000, items=1)  # small runs (about 200 bytes each): the count binds
        by_count = httpx.get(server.url + "/healthz").json()["headroom"]
        score(5_000, 5_000, items=32)  # larger ones (about 1 KB): the bytes bind
        by_bytes = httpx.get(server.url + "/healthz").json()["headroom"]
        last = httpx.get(server.url + "/runs/run-9999/window", headers=AUTH).json()["window"]
        first = httpx.get(server.url + "/runs/run-0/window", headers=AUTH).json()["window"]
    finally:
        server.stop()
    assert by_count["runs"] == 500 and by_count["state_bytes"] < 256 * 1024
    assert by_bytes["runs"] < 500 and 250 * 1024 < by_bytes["state_bytes"] <= 256 * 1024
    assert last == [["No Finding"]] * 32 and first == []  # the least recently used were dropped
