"""The evaluator's run state: a fresh run's reset, the one run-id pattern, bounded memory and stored
answers, the state directory's lock, rollback of a failed COMMIT, and a corrupt database that fails only
the state routes. HTTP behaviour over real uvicorn servers; the store's rollback directly on SQLite."""

import sqlite3
import time

import httpx
import pytest
import yaml

from chexrl.core.parsing import format_completion
from chexrl.core.run_ids import check_run_id
from services.evaluator.client import EvaluatorClient, ScoringError
from services.evaluator.process import EvaluatorProcess
from services.evaluator.security import read_token
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.window_store import StateDirInUse, StateFull, StateUnavailable, WindowStore

pytestmark = pytest.mark.slow

NORMAL = {
    "completion": format_completion("A careful look at the film.", ["No Finding"]),
    "labels": ["No Finding"],
}


def store_at(path, **limits) -> WindowStore:
    """A store with the evaluator's default limits (and `limits`), on `path`."""
    return WindowStore.from_settings(EvaluatorSettings(state_dir=str(path), **limits))


def nuanced(server, run_id, n=1, request_id=None):
    body = {"reward": "nuanced", "run_id": run_id, "items": [NORMAL] * n}
    if request_id:
        body["request_id"] = request_id
    return httpx.post(server.url + "/score", json=body, timeout=30)


def window(server, run_id):
    return httpx.get(f"{server.url}/runs/{run_id}/window").json()["window"]


def test_a_fresh_run_resets_its_window(evaluator):
    # A previous run named "grpo" left 25 predictions: a new run of that name would be penalised for the
    # old run's mode collapse from its first completion.
    assert nuanced(evaluator, "grpo-fresh", 25, request_id="old-step-1").status_code == 200
    client = EvaluatorClient(evaluator.url, retries=0)
    try:
        client.reset_run("grpo-fresh")  # what the trainer does at a fresh (not resumed) start
        assert client.get_window("grpo-fresh") == []
        assert nuanced(evaluator, "grpo-fresh").json()["rewards"] == [150.0]
        # the old run's stored answers are gone too: a reused request id is scored anew
        assert nuanced(evaluator, "grpo-fresh", 2, request_id="old-step-1").json()["rewards"] == [150.0] * 2
        assert len(client.get_window("grpo-fresh")) == 3
        client.reset_run("never-seen")  # resetting an unknown run is fine
    finally:
        client.close()


@pytest.mark.parametrize("bad", ["a/b", "..", ".hidden", "-x", "a b", "ä", "x" * 129, ""])
def test_one_run_id_pattern_everywhere(evaluator, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        check_run_id(bad)
    r = nuanced(evaluator, bad)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "run_id"], r.text
    client = EvaluatorClient(evaluator.url, retries=0)
    try:
        for call in (
            lambda: client.score("nuanced", [NORMAL], run_id=bad),
            lambda: client.get_window(bad),
            lambda: client.put_window(bad, []),
            lambda: client.reset_run(bad),
        ):
            with pytest.raises(ValueError, match="invalid run id"):  # refused before anything is sent
                call()
    finally:
        client.close()


def test_window_routes_refuse_a_slash_with_a_422(evaluator):
    for path in ("/runs/a%2Fb/window", "/runs/a/b/window"):
        r = httpx.get(evaluator.url + path)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "run"], r.text


def test_client_quotes_run_ids_in_urls(evaluator):
    client = EvaluatorClient(evaluator.url, retries=0)
    try:
        for run_id in ("r:1@host", "run.2_x-y"):
            client.put_window(run_id, [["Edema"]])
            assert client.get_window(run_id) == [["Edema"]]
            client.score("nuanced", [NORMAL], run_id=run_id)
            assert client.get_window(run_id) == [["Edema"], ["No Finding"]]
    finally:
        client.close()


def test_memory_and_stored_answers_are_bounded(tmp_path):
    (tmp_path / "evaluator.yaml").write_text(yaml.safe_dump({"max_cached_runs": 2, "answers_per_run": 3}))
    server = EvaluatorProcess(tmp_path / "state", config=tmp_path / "evaluator.yaml").start()
    try:
        for i in range(5):
            assert nuanced(server, f"run-{i}").status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert "chexrl_evaluator_cached_runs 2.0" in metrics
        # an evicted run continues from SQLite
        assert nuanced(server, "run-0").status_code == 200 and len(window(server, "run-0")) == 2

        answers = [nuanced(server, "answers", request_id=f"step-{i}").json() for i in range(6)]
        with sqlite3.connect(tmp_path / "state" / "windows.sqlite3") as db:
            kept = db.execute(
                "SELECT request_id FROM answers WHERE run_id = 'answers' ORDER BY rowid"
            ).fetchall()
        assert [k for (k,) in kept] == ["step-3", "step-4", "step-5"]
        assert nuanced(server, "answers", request_id="step-5").json() == answers[5]  # a retry: same answer
        assert len(window(server, "answers")) == 6
    finally:
        server.stop()


def test_a_second_evaluator_on_one_state_directory_fails_to_start(evaluator, tmp_path):
    second = EvaluatorProcess(evaluator.state_dir, log=tmp_path / "second.log")
    try:
        with pytest.raises(RuntimeError, match="exited with 2") as caught:
            second.start()
    finally:
        second.stop()  # had it started, it would be left serving the shared directory
    message = str(caught.value)
    assert f"state directory {evaluator.state_dir} is in use by another evaluator" in message
    assert f"pid {evaluator.proc.pid}" in message
    assert httpx.get(evaluator.url + "/healthz").json()["state"] == "ok"  # the first one is unharmed
    with pytest.raises(StateDirInUse):  # in-process too: one store per directory
        store_at(evaluator.state_dir)


class FailingCommit:
    """A real connection whose next COMMIT fails, as on a full disk or an I/O error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.fail = db, True

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_failed_commit_is_rolled_back(tmp_path):
    store = store_at(tmp_path)

    def push(label):
        def score(w):
            w.push(frozenset({label}))
            return {"label": label}

        return score

    store._db = FailingCommit(store._db)
    with pytest.raises(StateUnavailable, match="disk I/O error"):
        store.apply("run", "step-1", push("Edema"))
    # the connection is usable again (no transaction left open) and the failed update is gone
    assert store.apply("run", "step-2", push("Atelectasis")) == {"label": "Atelectasis"}
    assert store.get("run") == [["Atelectasis"]]
    store.close()
    reopened = store_at(tmp_path)
    assert reopened.get("run") == [["Atelectasis"]]
    assert reopened.apply("run", "step-1", push("Edema")) == {"label": "Edema"}  # step-1 never stored
    reopened.close()


def test_a_corrupt_database_fails_only_the_state_routes(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "windows.sqlite3").write_bytes(b"not a database, whatever it was " * 256)
    server = EvaluatorProcess(state, log=tmp_path / "evaluator.log").start()
    try:
        health = httpx.get(server.url + "/healthz").json()  # no token configured: the details too
        assert (health["status"], health["state"], health["reason"]) == (
            "ok",
            "unavailable",
            "database_unreadable",
        )
        assert "windows.sqlite3 is unusable" in health["detail"]
        hard = {"reward": "hard", "items": [NORMAL]}
        assert httpx.post(server.url + "/score", json=hard).status_code == 200
        evaluate = {"schema": "chexpert14", "items": [NORMAL]}
        assert httpx.post(server.url + "/evaluate", json=evaluate).json()["n"] == 1
        for r in (
            nuanced(server, "run"),
            httpx.get(server.url + "/runs/run/window"),
            httpx.put(server.url + "/runs/run/window", json={"window": []}),
            httpx.delete(server.url + "/runs/run/window"),
        ):
            assert r.status_code == 503
            detail = r.json()["detail"]
            assert str(state / "windows.sqlite3") in detail and "file is not a database" in detail
            assert "move the file away" in detail
        # the trainer's client retries a 503, then names the problem
        client = EvaluatorClient(server.url, retries=1, backoff_s=0.01)
        with pytest.raises(ScoringError, match=r"HTTP 503 .*file is not a database"):
            client.get_window("run")
        client.close()
    finally:
        server.stop()


def test_an_unreadable_stored_window_is_a_clear_error(tmp_path):
    store = store_at(tmp_path)
    store.put("good", [["Edema"]])
    store.close()
    with sqlite3.connect(tmp_path / "windows.sqlite3") as db:
        db.execute("INSERT INTO windows (run_id, items) VALUES ('torn', '[[\"Edema\"], ')")
        db.execute("INSERT INTO windows (run_id, items) VALUES ('typed', '[[1, 2]]')")
    store = store_at(tmp_path)
    for run_id in ("torn", "typed"):
        with pytest.raises(StateUnavailable, match=f"stored window of run '{run_id}' in .* is unreadable"):
            store.get(run_id)
    assert store.get("good") == [["Edema"]]  # one bad row fails its run only
    store.reset("torn")
    assert store.get("torn") == []
    store.close()


def test_the_config_refuses_a_run_id_the_evaluator_would_refuse():
    """Checked once at the edge: a `grpo.run_id` with "/" fails when the config loads, not at the first
    checkpoint of a running job."""
    from pydantic import ValidationError

    from chexrl.config import GRPOConfig

    assert GRPOConfig(run_id="grpo-2026.11:a@b").run_id == "grpo-2026.11:a@b"
    for bad in ("a/b", ".hidden", "", "x" * 129):
        with pytest.raises(ValidationError, match="invalid run id"):
            GRPOConfig(run_id=bad)


def push(label):
    def score(w):
        w.push(frozenset({label}))
        return {"label": label}

    return score


def test_idle_runs_expire(tmp_path):
    store = store_at(tmp_path, run_idle_expiry_s=0.3)
    store.apply("old", None, push("Edema"))
    time.sleep(0.4)
    store.apply("new", None, push("Edema"))  # every write drops the runs idle past the expiry
    assert (store.runs, store.get("old"), store.get("new")) == (1, [], [["Edema"]])
    store.close()


def test_sqlite_reporting_a_full_disk_is_a_507_reason_and_a_reset_still_works(tmp_path):
    # SQLite's own limit on the file's pages fails a write exactly as ENOSPC does (SQLITE_FULL)
    store = store_at(tmp_path, reserve_bytes=0)
    store.apply("kept", "step-1", push("Edema"))
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StateFull, match="SQLite: database or disk is full") as caught:
        for i in range(1000):
            store.put(f"run-{i}", [["Edema", "Atelectasis", "Cardiomegaly"]] * 100)
    assert str(tmp_path) in str(caught.value) and store.health() == ("full", "write_refused_no_space")
    store.reset("kept")  # a delete frees pages, it never needs new ones
    assert store.get("kept") == []
    store.close()


def test_a_reset_on_a_full_disk_gives_up_the_reserve_then_takes_it_back(tmp_path, monkeypatch):
    store = store_at(tmp_path, reserve_bytes=64 * 1024)
    store.put("run", [["Edema"]])
    assert (tmp_path / "reserve.bin").stat().st_size == 64 * 1024
    delete, calls = store._delete, []

    def full_until_the_reserve_is_gone(run_id):
        calls.append((tmp_path / "reserve.bin").exists())
        if calls[-1]:
            raise store._full("simulated ENOSPC")
        delete(run_id)

    monkeypatch.setattr(store, "_delete", full_until_the_reserve_is_gone)
    store.reset("run")
    assert calls == [True, False] and store.get("run") == []
    assert (tmp_path / "reserve.bin").stat().st_size == 64 * 1024  # taken back once there was room
    assert store.health() == ("ok", None)
    store.close()


def test_a_database_of_the_previous_version_is_upgraded(tmp_path):
    with sqlite3.connect(tmp_path / "windows.sqlite3") as db:
        db.execute("CREATE TABLE windows (run_id TEXT PRIMARY KEY, items TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE answers (run_id TEXT NOT NULL, request_id TEXT NOT NULL, answer TEXT NOT NULL, "
            "PRIMARY KEY (run_id, request_id))"
        )
        db.execute("""INSERT INTO windows VALUES ('run', '[["Edema"]]')""")
        db.execute("""INSERT INTO answers VALUES ('run', 'step-1', '{"label": "Edema"}')""")
    store = store_at(tmp_path)
    assert (store.runs, store.state_bytes) == (1, len('[["Edema"]]') + len('{"label": "Edema"}'))
    assert store.apply("run", "step-1", push("Atelectasis")) == {"label": "Edema"}  # the stored answer
    assert store.apply("run", "step-2", push("Atelectasis")) == {"label": "Atelectasis"}
    assert store.get("run") == [["Edema"], ["Atelectasis"]]
    store.close()


def test_the_token_is_read_from_its_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("from-the-file\n")
    env = {"CHEXRL_EVALUATOR_TOKEN_FILE": str(token), "CHEXRL_EVALUATOR_TOKEN": "from-the-env"}
    assert read_token(env) == "from-the-file"
    assert read_token({"CHEXRL_EVALUATOR_TOKEN": " from-the-env "}) == "from-the-env"
    token.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(env)
    with pytest.raises(ValueError, match="cannot be read"):
        read_token({"CHEXRL_EVALUATOR_TOKEN_FILE": str(tmp_path / "missing")})
