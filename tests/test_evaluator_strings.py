"""Every string field of the evaluator's API, fuzzed with the whole range of JSON string escapes over the
real server: nothing valid as JSON gets a 5xx, and every answer is valid UTF-8 JSON.

The bodies are written as raw JSON text, so each escape reaches the server exactly as spelled: the short
escapes, every control character as \\u00XX, lower- and upper-case hex, lone and misordered surrogates
(valid JSON, not valid Unicode: Python decodes them and UTF-8 cannot encode them), surrogate pairs,
noncharacters and raw UTF-8. schemathesis (test_evaluator_fuzz.py) does not generate surrogates.
"""

import json

import httpx
import pytest

pytestmark = pytest.mark.slow

SHORT = ['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]
CONTROL = [f"\\u{c:04x}" for c in range(0x20)]
OTHER = [f"\\u{c:04X}" for c in (0x1F, 0x7F, 0x80, 0xE9, 0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF)]
SURROGATES = [
    "\\ud800",
    "\\uDBFF",
    "\\udc00",
    "\\uDFFF",
    "\\udc00\\ud800",
    "\\ud800\\u0041",
    "\\ud800\\ud800",
]
PAIRS = ["\\ud83d\\ude00", "\\uDBFF\\uDFFF"]
RAW = ["é", "😀", "\x7f", "\u2028"]
ESCAPES = SHORT + CONTROL + OTHER + SURROGATES + PAIRS + RAW
COMPLETION = "<think>ok</think><solution>Edema</solution>"


def q(inner: str) -> str:
    return f'"{inner}"'


def score(
    reward='"hard"', run_id=None, request_id=None, completion=q(COMPLETION), label=q("Edema"), key=None
):
    extra = f", {key}: 1" if key else ""
    head = f'{{"reward": {reward}'
    head += f', "run_id": {run_id}' if run_id else ""
    head += f', "request_id": {request_id}' if request_id else ""
    return f'{head}, "items": [{{"completion": {completion}, "labels": [{label}]{extra}}}]}}'


def cases(value: str):
    """(method, path, body) with `value` (JSON string text) in each string field, and as a key."""
    v = q(value)
    yield "POST", "/score", score(reward=v)
    yield "POST", "/score", score(reward='"nuanced"', run_id=q("run" + value))
    yield "POST", "/score", score(request_id=v)
    yield "POST", "/score", score(reward='"nuanced"', run_id='"escapes"', request_id=v)
    yield "POST", "/score", score(completion=v)
    yield "POST", "/score", score(completion=q(f"<think>{value}</think><solution>Edema{value}</solution>"))
    yield "POST", "/score", score(label=v)
    yield "POST", "/score", score(key=v)
    yield "POST", "/score", v
    yield "POST", "/evaluate", f'{{"schema": {v}, "items": [{{"completion": "x", "labels": []}}]}}'
    yield "POST", "/evaluate", f'{{"schema": "nih9", "items": [{{"completion": {v}, "labels": [{v}]}}]}}'
    yield "PUT", "/runs/escapes/window", f'{{"window": [[{v}]]}}'
    yield "PUT", "/runs/escapes/window", f"{{{v}: []}}"


def test_no_json_string_escape_gets_a_5xx(evaluator):
    sent, failures = 0, []
    with httpx.Client(base_url=evaluator.url, timeout=30) as client:
        for escape in ESCAPES:
            for value in (escape, f"x{escape}y"):
                for method, path, body in cases(value):
                    json.loads(body)  # the request is valid JSON
                    raw = body.encode("utf-8", "surrogatepass")
                    try:
                        r = client.request(
                            method, path, content=raw, headers={"content-type": "application/json"}
                        )
                        json.loads(r.content.decode("utf-8"))  # strict: a lone surrogate would fail here
                        ok = r.status_code < 500
                    except (httpx.TransportError, UnicodeDecodeError, ValueError) as exc:
                        r, ok = exc, False
                    sent += 1
                    if not ok:
                        failures.append(f"{method} {path} {body[:120]} -> {getattr(r, 'status_code', r)}")
    assert sent == len(ESCAPES) * 2 * 13
    assert not failures, f"{len(failures)} of {sent}:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (score(completion=q("x\\ud800")), ["body", "items", 0, "completion"]),
        (score(label=q("Edema\\udc00")), ["body", "items", 0, "labels", 0]),
        (score(request_id=q("\\ud800")), ["body", "request_id"]),
        (score(reward=q("\\ud800")), ["body", "reward"]),
    ],
)
def test_a_lone_surrogate_is_a_422_naming_the_field(evaluator, body, loc):
    r = httpx.post(
        evaluator.url + "/score", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == loc
    assert "\\ud800" in err["input"] or "\\udc00" in err["input"]  # echoed, spelled out


def test_escapes_decode_to_what_they_spell(evaluator):
    # "\u0068ard" is "hard"; an escaped label is the label; an escaped newline separates labels
    body = score(
        reward=q("\\u0068ard"), completion=q("<think>ok</think><solution>Edema\\nCardiomegaly</solution>")
    )
    r = httpx.post(
        evaluator.url + "/score", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["predicted"] == ["Edema", "Cardiomegaly"]


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 30])
def test_numbers_json_allows_are_not_a_5xx(evaluator, number):
    body = f'{{"reward": "hard", "items": [{{"completion": "x", "labels": [], "num_tokens": {number}}}]}}'
    r = httpx.post(
        evaluator.url + "/score", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "items", 0, "num_tokens"]
