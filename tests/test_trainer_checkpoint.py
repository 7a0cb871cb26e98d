"""Checkpoints are atomic: SIGKILL at any moment, during a save included, leaves a loadable latest."""

import hashlib
import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from trainer.run_log import RunLog, read_metrics
from trainer.sampler import PromptCursor

SAVER = """
import sys, torch
from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
root = sys.argv[1]
latest = latest_checkpoint(root)  # a restarted run continues from its latest checkpoint
step = load_checkpoint(latest)[1]["step"] if latest else 0
while True:
    step += 1
    state = {"w": torch.full((512, 1024), float(step))}  # 2 MB: a save takes long enough to be hit
    save_checkpoint(root, step, state, {"cursor": {"index": step}}, keep=2)
    print(step, flush=True)
"""


def test_sigkill_during_saves_never_tears_a_checkpoint(tmp_path):
    root = tmp_path / "ckpt"
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(root)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete save
        time.sleep(0.05 * (round_ + 1))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        latest = latest_checkpoint(root)
        assert latest is not None
        state, meta = load_checkpoint(latest)
        step = meta["step"]
        assert torch.equal(state["w"], torch.full((512, 1024), float(step)))
        assert meta["cursor"] == {"index": step}
    assert len([p for p in root.iterdir() if p.name.startswith("step-") and not p.name.endswith(".tmp")]) <= 3


def test_latest_ignores_missing_or_partial(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 1, {"a": torch.ones(1)}, {})
    (tmp_path / "step-000002.tmp").mkdir()  # a save that died before its rename
    assert latest_checkpoint(tmp_path).name == "step-000001"
    save_checkpoint(tmp_path, 2, {"a": torch.ones(1)}, {})
    assert latest_checkpoint(tmp_path).name == "step-000002"
    assert not (tmp_path / "step-000002.tmp").exists()


def test_learner_state_loads_as_data_only_and_restores_the_rngs(tiny_gemma3_dir, tmp_path):
    """The learner's real state (adapter, AdamW moments, schedule, RNG states) round-trips through a
    checkpoint loaded with weights_only=True, and the restored RNGs continue where the saved ones were."""
    from chexrl.config import GRPOConfig
    from chexrl.core.parsing import format_completion
    from chexrl.core.prompts import build_messages
    from tests.fixtures.rollout import png_bytes
    from trainer.grpo import GRPOLearner, TrainingExample

    learner = GRPOLearner(
        str(tiny_gemma3_dir), GRPOConfig(lora={"dropout": 0.0}), temperature=1.0, max_completion_tokens=8
    )
    prompt = learner.processor.apply_chat_template(
        build_messages(), tokenize=False, add_generation_prompt=True
    )
    ids = learner.processor.tokenizer(format_completion("x", ["Edema"]), add_special_tokens=False)[
        "input_ids"
    ]
    learner.step(
        [TrainingExample(prompt, png_bytes(0), ids, [])] * 4, rewards=[1.0, 0.0, 0.5, 0.0], group_size=4
    )
    path = save_checkpoint(tmp_path, 1, learner.state(), {"cursor": {}})
    torch.load(path / "state.pt", weights_only=True)  # loads as data, no allow-listing needed
    draws = (random.random(), np.random.rand(), torch.rand(3))
    saved = learner.state()

    state, _ = load_checkpoint(path)
    learner.load_state(state)
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(3), draws[2])
    assert state["optimizer"]["state"], "AdamW moments are part of the checkpoint"
    for key, value in learner.state()["adapter"].items():
        assert torch.equal(value, saved["adapter"][key])


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['CHEXRL_PWNED']}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CHEXRL_PWNED", str(marker))
    path = save_checkpoint(tmp_path / "ckpt", 1, {"a": torch.ones(1)}, {})
    with open(path / "state.pt", "wb") as f:  # an attacker with write access redoes the checksums too
        pickle.dump({"a": _RunsCode()}, f, protocol=2)
    sums = {
        name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in ("state.pt", "meta.json")
    }
    (path / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(CheckpointError, match="does not load as plain tensors"):
        load_checkpoint(path)
    assert not marker.exists()


def test_save_refuses_state_that_would_not_load_as_data(tmp_path):
    with pytest.raises(TypeError, match=r"state\['rng'\]\['numpy'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path, 1, {"rng": {"numpy": np.zeros(3)}}, {})
    assert not list(tmp_path.iterdir())


def test_a_corrupt_latest_falls_back_to_the_previous_one_with_a_warning(tmp_path, caplog):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"w": torch.full((4,), float(step))}, {"cursor": {"index": step}})
    state_file = tmp_path / "step-000002" / "state.pt"
    data = bytearray(state_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-run: still a readable file, wrong tensors
    state_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        assert latest_checkpoint(tmp_path).name == "step-000001"
    assert "step-000002" in caplog.text and "checksum" in caplog.text
    path, state, meta = load_latest(tmp_path)
    assert path.name == "step-000001" and meta["step"] == 1 and torch.equal(state["w"], torch.ones(4))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "step-000002")
    (tmp_path / "step-000001" / "meta.json").write_text('{"step": 7}')  # now both are corrupt
    with pytest.raises(CheckpointError, match=r"no checkpoint under .* is intact"):
        latest_checkpoint(tmp_path)


def test_a_checkpoint_without_its_state_file_is_an_error_not_a_fresh_start(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"w": torch.ones(1)}, {})
    (tmp_path / "step-000002" / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"step-000002 has no state.pt"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"has no state\.pt"):
        load_latest(tmp_path)


def test_cursor_resume_continues_the_same_order():
    straight = PromptCursor(size=5, seed=3)
    expected = [straight.take(2) for _ in range(6)]
    first = PromptCursor(size=5, seed=3)
    got = [first.take(2) for _ in range(2)]
    resumed = PromptCursor.from_state(first.state())
    got += [resumed.take(2) for _ in range(4)]
    assert got == expected
    assert sorted(expected[0] + expected[1] + expected[2][:1]) == [0, 1, 2, 3, 4]  # epoch = a permutation


@pytest.mark.parametrize("resume_step", [3, None])
def test_run_log_drops_steps_redone_after_resume(tmp_path, resume_step):
    log = RunLog(tmp_path, completions=True)
    for step in range(1, 6):
        log.log(step, {"reward/total": step})
        log.log_completions(step, [{"completion": f"c{step}.{k}", "reward": 0.5} for k in range(2)])
    log.close()
    for name in ("metrics.jsonl", "completions.jsonl"):
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 6, "rew')  # torn by a kill mid-write
    log = RunLog(tmp_path, resume_step=resume_step, completions=True)
    log.close()
    kept = [1, 2, 3] if resume_step else [1, 2, 3, 4, 5]
    assert [m["step"] for m in read_metrics(tmp_path)] == kept
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [(r["step"], r["completion"]) for r in rows] == [(s, f"c{s}.{k}") for s in kept for k in range(2)]


def test_run_log_without_completions_writes_no_completions_file(tmp_path):
    log = RunLog(tmp_path)
    log.log_completions(1, [{"completion": "x"}])
    log.close()
    assert not (tmp_path / "completions.jsonl").exists()
