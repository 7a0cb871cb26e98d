"""The evaluator over real HTTP: /score, /evaluate, windows, limits, auth, persistence across restarts."""

import threading

import httpx
import pytest

from chexrl.core.metrics import completion_metrics
from chexrl.core.parsing import format_completion
from chexrl.core.schemas import SCHEMAS
from services.evaluator.process import EvaluatorProcess

pytestmark = pytest.mark.slow


def completion(labels, think="A careful look at the film."):
    return format_completion(think, labels)


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def test_hard_reward_in_request_order_with_components(evaluator):
    items = [
        {"completion": completion(["Edema", "Cardiomegaly"], "x" * 300), "labels": ["edema"]},  # J = 1/2
        {"completion": completion(["Edema"]), "labels": ["Edema"]},  # J = 1, short -> -0.1
        {"completion": "no format", "labels": ["Edema"]},
    ]
    r = post(evaluator, "/score", {"reward": "hard", "items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rewards"] == pytest.approx([0.5, 0.9, 0.0])
    assert [i["valid"] for i in body["items"]] == [True, True, False]
    assert body["items"][0]["predicted"] == ["Edema", "Cardiomegaly"]
    for item in body["items"]:
        assert item["reward"] == pytest.approx(sum(item["components"].values()))


def test_nuanced_window_is_per_run_and_counts_once_per_request_id(evaluator):
    gold = ["No Finding"]
    item = {"completion": completion(gold), "labels": gold}
    first = post(evaluator, "/score", {"reward": "nuanced", "run_id": "run-a", "items": [item] * 25})
    assert first.status_code == 200
    rewards = first.json()["rewards"]
    # 20 predictions in the window (min fill) with No Finding at 100% share: penalties from the 21st on
    assert rewards[:20] == [150.0] * 20 and rewards[20] == pytest.approx(150 - 30 - 50)
    # another run starts clean
    other = post(evaluator, "/score", {"reward": "nuanced", "run_id": "run-b", "items": [item]})
    assert other.json()["rewards"] == [150.0]
    # a retried request id returns its first answer and does not grow the window
    body = {"reward": "nuanced", "run_id": "run-c", "request_id": "step-1", "items": [item] * 3}
    once = post(evaluator, "/score", body).json()
    twice = post(evaluator, "/score", body).json()
    assert once == twice
    assert httpx.get(f"{evaluator.url}/runs/run-c/window").json()["window"] == [["No Finding"]] * 3


def test_concurrent_requests_of_one_run_lose_no_update(evaluator):
    item = {"completion": completion(["Edema"]), "labels": ["Edema"]}

    def send():
        assert (
            post(
                evaluator, "/score", {"reward": "nuanced", "run_id": "run-conc", "items": [item] * 4}
            ).status_code
            == 200
        )

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = httpx.get(f"{evaluator.url}/runs/run-conc/window").json()["window"]
    assert len(window) == 40


def test_window_put_and_get(evaluator):
    r = httpx.put(
        f"{evaluator.url}/runs/run-put/window", json={"window": [["Edema"], ["Cardiomegaly", "Edema"]]}
    )
    assert r.status_code == 200
    assert httpx.get(f"{evaluator.url}/runs/run-put/window").json()["window"] == [
        ["Edema"],
        ["Cardiomegaly", "Edema"],
    ]
    bad = httpx.put(f"{evaluator.url}/runs/run-put/window", json={"window": [["Infiltration"]]})
    assert bad.status_code == 422


def test_evaluate_matches_the_core_metrics(evaluator):
    items = [
        {"completion": completion(["Edema", "Pneumothorax"]), "labels": ["Edema"]},
        {"completion": completion(["No Finding"]), "labels": ["No Finding"]},
        {"completion": "garbage", "labels": ["Cardiomegaly"]},
        {
            "completion": completion(["Support Devices", "Lung Lesion"]),
            "labels": ["Lung Lesion", "Pleural Other"],
        },
    ]
    r = post(evaluator, "/evaluate", {"schema": "nih9", "items": items})
    assert r.status_code == 200, r.text
    got = r.json()
    expected = completion_metrics(
        [i["completion"] for i in items], [i["labels"] for i in items], SCHEMAS["nih9"]
    )
    assert got == expected.as_dict()  # JSON round-trips floats exactly
    assert got["fail_rate"] == pytest.approx(0.25) and set(got["per_label"]) == set(SCHEMAS["nih9"].labels)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"reward": "hard", "items": []}, ["body", "items"]),
        (
            {"reward": "hard", "items": [{"completion": "x", "labels": ["Infiltration"]}]},
            ["body", "items", 0, "labels", 0],
        ),
        ({"reward": "hard", "items": [{"completion": 3, "labels": []}]}, ["body", "items", 0, "completion"]),
        ({"reward": "soft", "items": [{"completion": "x", "labels": []}]}, ["body", "reward"]),
        ({"reward": "nuanced", "items": [{"completion": "x", "labels": []}]}, ["body", "run_id"]),
        (
            {"reward": "hard", "items": [{"completion": "x" * 20000, "labels": []}]},
            ["body", "items", 0, "completion"],
        ),
        ({"reward": "hard", "items": [{"completion": "x", "labels": []}] * 1025}, ["body", "items"]),
        (
            {"reward": "hard", "items": [{"completion": "x", "labels": [], "extra": 1}]},
            ["body", "items", 0, "extra"],
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field(evaluator, body, loc):
    r = post(evaluator, "/score", body)
    assert r.status_code == 422, r.text
    assert any(err["loc"] == loc for err in r.json()["detail"]), r.json()


def test_oversized_body_is_413_declared_or_streamed(evaluator):
    big = b'{"reward": "hard", "items": [' + b" " * (9 * 1024 * 1024) + b"]}"
    assert httpx.post(evaluator.url + "/score", content=big).status_code == 413

    def chunks():
        for _ in range(9):
            yield b" " * (1024 * 1024)

    assert httpx.post(evaluator.url + "/score", content=chunks()).status_code == 413
    assert httpx.get(evaluator.url + "/healthz").status_code == 200


def test_metrics_and_openapi(evaluator):
    post(evaluator, "/score", {"reward": "hard", "items": [{"completion": "x", "labels": []}]})
    text = httpx.get(evaluator.url + "/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    scored = families["chexrl_evaluator_completions_scored"]
    assert any(s.labels.get("reward") == "hard" and s.value >= 1 for s in scored.samples)
    requests = families["chexrl_evaluator_requests"]
    assert any(s.labels.get("route") == "/score" for s in requests.samples)
    spec = httpx.get(evaluator.url + "/openapi.json").json()
    assert {"/score", "/evaluate", "/healthz", "/metrics"} <= set(spec["paths"])


def test_bearer_token_guards_every_route_but_healthz(tmp_path):
    server = EvaluatorProcess(tmp_path, token="s3cret").start()
    try:
        body = {"reward": "hard", "items": [{"completion": "x", "labels": []}]}
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert post(server, "/score", body).status_code == 401
        assert post(server, "/score", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(server, "/score", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(server.url + "/metrics").status_code == 401
    finally:
        server.stop()


def test_window_survives_a_killed_server(tmp_path):
    gold = ["Pleural Effusion"]
    item = {"completion": completion(gold), "labels": gold}
    server = EvaluatorProcess(tmp_path).start()
    try:
        assert (
            post(
                server, "/score", {"reward": "nuanced", "run_id": "persist", "items": [item] * 20}
            ).status_code
            == 200
        )
        server.kill()  # SIGKILL: no shutdown hook runs
        server.start()
        r = post(server, "/score", {"reward": "nuanced", "run_id": "persist", "items": [item]})
        # the 20 predictions from before the crash are still there: the 21st is penalised
        assert r.json()["rewards"] == [pytest.approx(150 - 30 - 50)]
        assert len(httpx.get(f"{server.url}/runs/persist/window").json()["window"]) == 21
    finally:
        server.stop()
