"""Trace files: torn-line repair, durable appends, resume ids, and the back-off schedule."""

from __future__ import annotations

import json
import random

import pytest

from chexrl.traces.generate import backoff_delay, guided_regex, validate_trace
from chexrl.traces.store import (
    JsonlAppender,
    done_ids,
    load_samples_jsonl,
    read_jsonl,
    rejected_path,
    repair_jsonl,
)


def _write(path, text):
    path.write_bytes(text.encode())


def test_repair_truncates_a_torn_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, '{"sample_id": "a"}\n{"sample_id": "b"}\n{"sample_id": "c", "tr')
    assert repair_jsonl(path) == len('{"sample_id": "c", "tr')
    assert [r["sample_id"] for r in read_jsonl(path)] == ["a", "b"]
    assert repair_jsonl(path) == 0  # idempotent


@pytest.mark.parametrize(
    "text,kept",
    [
        ("", ""),
        ('{"sample_id": "a"', ""),  # the only line torn
        ('{"sample_id": "a"}\n{"sample_id": "b"\n', '{"sample_id": "a"}\n'),  # newline but not JSON
        ('{"sample_id": "a"}\n', '{"sample_id": "a"}\n'),
    ],
)
def test_repair_cases(tmp_path, text, kept):
    path = tmp_path / "t.jsonl"
    _write(path, text)
    repair_jsonl(path)
    assert path.read_text() == kept


def test_repair_missing_file(tmp_path):
    assert repair_jsonl(tmp_path / "none.jsonl") == 0


def test_appender_writes_complete_lines_and_appends(tmp_path):
    path = tmp_path / "sub" / "t.jsonl"
    with JsonlAppender(path) as f:
        f.append({"sample_id": "a", "trace": "line1\nline2"})
    with JsonlAppender(path) as f:
        f.append({"sample_id": "b"})
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["trace"] == "line1\nline2"
    assert done_ids(path, tmp_path / "missing.jsonl") == {"a", "b"}


def test_rejected_path():
    assert str(rejected_path("runs/traces.jsonl")) == "runs/traces.rejected.jsonl"


def test_samples_jsonl_ids(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"image": "/x/a.png", "labels": ["Edema"], "sample_id": "d:1"})
        + "\n"
        + json.dumps({"image": "/x/b.png", "labels": ["No Finding"]})
        + "\n"
    )
    jobs = load_samples_jsonl(path)
    assert jobs[0].sample_id == "d:1" and jobs[0].labels == ("Edema",)
    assert jobs[1].sample_id.startswith("img:") and jobs[1].sample_id == load_samples_jsonl(path)[1].sample_id


def test_backoff_grows_exponentially_with_bounded_jitter():
    rng = random.Random(0)
    for attempt in range(8):
        nominal = min(8.0, 0.5 * 2**attempt)
        for _ in range(50):
            d = backoff_delay(attempt, 0.5, 8.0, rng)
            assert nominal / 2 <= d <= nominal
    # the schedule's midpoints double until the cap
    mids = [min(8.0, 0.5 * 2**a) * 0.75 for a in range(6)]
    assert mids == [0.375, 0.75, 1.5, 3.0, 6.0, 6.0]


def test_validate_trace_reasons():
    gold = ("Cardiomegaly", "Edema")
    ok = "<think>big heart, wet lungs</think>\n<solution>Edema, cardiomegaly</solution>"
    assert validate_trace(ok, gold, "chexpert14") == (None, "")
    assert validate_trace("no tags", gold, "chexpert14")[0] == "unparseable"
    assert (
        validate_trace("<think>x</think><solution>Edema</solution>", gold, "chexpert14")[0]
        == "labels mismatch"
    )
    bad = "<think>x</think><solution>Edema, Cardiomegaly, Mass</solution>"
    assert validate_trace(bad, gold, "chexpert14")[0] == "labels mismatch"


def test_guided_regex_matches_a_valid_trace():
    import re

    pattern = guided_regex(["Cardiomegaly", "Pleural Effusion"], think_chars=40)
    assert re.fullmatch(
        pattern,
        "<think>Heart large, left effusion.</think>\n<solution>Cardiomegaly, Pleural Effusion</solution>",
    )
    assert not re.fullmatch(pattern, "<think>x</think>\n<solution>Cardiomegaly</solution>")


def test_validate_trace_rejects_what_the_rewards_penalise():
    """A trace is SFT's target: a repeated label or text outside the blocks (both penalised by the nuanced
    reward, through the same parser) is not accepted."""
    from chexrl.core.config import NuancedRewardConfig
    from chexrl.core.parsing import parse_completion
    from chexrl.core.rewards import PredictionWindow, nuanced_reward
    from chexrl.core.schemas import SCHEMAS

    gold = ("Cardiomegaly", "Edema")
    cases = {
        "<think>x</think><solution>Edema, Cardiomegaly, edema</solution>": "duplicate labels",
        "Sure! <think>x</think><solution>Edema, Cardiomegaly</solution>": "text outside the blocks",
        "<think>x</think><solution>Edema, Cardiomegaly</solution>\nHope this helps.": "text outside the blocks",
        "<think>x</think> and so <solution>Edema, Cardiomegaly</solution>": "text outside the blocks",
    }
    for text, reason in cases.items():
        got, detail = validate_trace(text, gold, "chexpert14")
        assert got == reason and detail, text
        parsed = parse_completion(text, SCHEMAS["chexpert14"])
        r = nuanced_reward(parsed, frozenset(gold), PredictionWindow(), NuancedRewardConfig())
        assert r.components["duplicate_label"] + r.components["outside_text"] < 0  # what the reward sees
