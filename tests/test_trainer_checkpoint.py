"""Checkpoints are atomic: SIGKILL at any moment, during a save included, leaves a loadable latest."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.run_log import RunLog, read_metrics
from trainer.sampler import PromptCursor

SAVER = """
import sys, torch
from trainer.checkpoint import save_checkpoint
root = sys.argv[1]
step = 0
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
