"""GRPO end to end with the real parts: vLLM worker actor, evaluator over HTTP, trainer actor, Ray."""

import json
from pathlib import Path

import httpx
import pytest
import yaml

from chexrl.config import ChexrlConfig
from chexrl.core.schemas import get_schema
from chexrl.data.loaders import load_dataset
from trainer.checkpoint import latest_checkpoint
from trainer.loop import HeldOutSets, RunData, run_grpo
from trainer.periodic_eval import read_evals
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow


def _config(
    evaluator_url: str, max_steps: int, model: Path, run_dir: Path, run_id: str, reward: str = "nuanced"
) -> ChexrlConfig:
    return ChexrlConfig.model_validate(
        {
            "sampling": {"n": 4, "max_tokens": 16},
            "grpo": {
                "model": str(model),
                "run_dir": str(run_dir),
                "run_id": run_id,
                "evaluator_url": evaluator_url,
                "max_steps": max_steps,
                "prompts_per_step": 2,
                "save_steps": 2,
                "eval_steps": 2,
                "reward": reward,
                "micro_batch_size": 8,
            },
        }
    )


def test_grpo_steps_checkpoint_and_resume(
    ray_session,
    evaluator,
    tiny_gemma3_dir,
    synth_mimic_dir,
    synth_chexpert_dir,
    synth_nih_shift_dir,
    tmp_path,
):
    samples = load_dataset(f"mimic:{synth_mimic_dir}")[:12]
    id_set = ("chexpert", load_dataset(f"chexpert:{synth_chexpert_dir}")[:3])
    ood_set = ("nih", load_dataset(f"nih:{synth_nih_shift_dir}")[:3])
    data = RunData(samples, HeldOutSets(id_set, [ood_set]))
    cfg = _config(evaluator.url, 3, tiny_gemma3_dir, tmp_path / "run", "grpo-test")
    history = run_grpo(cfg, data, progress=False)

    assert [h["step"] for h in history] == [1, 2, 3]
    lr = ChexrlConfig().grpo.learning_rate  # linear decay to 0 over max_steps, one step of it per GRPO step
    assert [h["optim/learning_rate"] for h in history] == pytest.approx([lr, lr * 2 / 3, lr / 3])
    for h in history:
        for key in (
            "reward/total",
            "loss/kl",
            "policy/clip_frac",
            "completion/length",
            "time/generation",
            "time/scoring",
            "time/training",
            "time/weight_sync",
            "reward/invalid_format",
            "advantage/zero_std_fraction",
        ):
            assert key in h, key  # fmt: skip
    # the rewards came from the evaluator: its window for this run holds every valid prediction
    window = httpx.get(f"{evaluator.url}/runs/grpo-test/window").json()["window"]
    valid = sum(round(h["reward/valid_fraction"] * 8) for h in history)
    assert len(window) == valid
    # every sampled completion is logged with the reward the evaluator gave it (8 a step: 2 prompts x 4)
    rows = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s in (1, 2, 3) for _ in range(8)]
    for h in history:
        step_rows = [r for r in rows if r["step"] == h["step"]]
        assert sum(r["reward"] for r in step_rows) / 8 == pytest.approx(h["reward/total"])
        assert all(set(r["labels"]) == set(samples[r["sample"]].labels) for r in step_rows)
        flat = [len({r["reward"] for r in step_rows[i : i + 4]}) == 1 for i in (0, 4)]
        assert h["advantage/zero_std_fraction"] == sum(flat) / 2
    assert (tmp_path / "run" / "adapter-final" / "adapter_model.safetensors").exists()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000003"

    # evaluated at the start, every eval_steps (2) and at the end; the selection names kept adapters only
    evals = read_evals(tmp_path / "run")
    assert [e["step"] for e in evals] == [0, 2, 3]
    assert {e["id_name"] for e in evals} == {"chexpert"} and evals[0]["ood"]["n"] == 3
    assert set(evals[0]["ood"]["per_label"]) == set(get_schema(ood_set[1][0].schema).labels)
    assert (
        history[1]["eval/id_macro_f1"] == evals[1]["id"]["macro"]["f1"]
        and "eval/id_macro_f1" not in history[0]
    )
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert set(selection) == {"best_id", "final", "best_ood", "best_worst_case"}
    assert selection["final"]["step"] == 3 and selection["final"]["checkpoint"] == "adapters/step-000003"
    kept = {p.name for p in (tmp_path / "run" / "adapters").iterdir()}
    assert kept == {Path(s["checkpoint"]).name for s in selection.values() if s["checkpoint"]}
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["grpo"]["run_id"] == "grpo-test"

    # resume from step 3 to 5: numbering continues, the log holds each step once
    resumed = run_grpo(
        _config(evaluator.url, 5, tiny_gemma3_dir, tmp_path / "run", "grpo-test"),
        data,
        resume=True,
        progress=False,
    )
    assert [h["step"] for h in resumed] == [4, 5]
    # the schedule resumes from the checkpoint's step (now over the new max_steps), not from its start
    assert [h["optim/learning_rate"] for h in resumed] == pytest.approx([lr * 2 / 5, lr / 5])
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]
    rows = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s in (1, 2, 3, 4, 5) for _ in range(8)]
    meta = json.loads((latest_checkpoint(tmp_path / "run" / "checkpoints") / "meta.json").read_text())
    assert meta["step"] == 5 and meta["cursor"]["index"] == (5 * 2) % 12
    assert [e["step"] for e in read_evals(tmp_path / "run")] == [0, 2, 3, 4, 5]

    # resuming a finished run does nothing: no step, no evaluation, no error
    assert (
        run_grpo(
            _config(evaluator.url, 5, tiny_gemma3_dir, tmp_path / "run", "grpo-test"),
            data,
            resume=True,
            progress=False,
        )
        == []
    )
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]
    assert [e["step"] for e in read_evals(tmp_path / "run")] == [0, 2, 3, 4, 5]


def test_evaluator_killed_mid_run_delays_the_step(ray_session, tiny_gemma3_dir, synth_mimic_dir, tmp_path):
    """SIGKILL the evaluator while a step is in flight and bring it back: the step's scoring is retried
    (the client saw a failure), every step is logged exactly once and the persisted window counts each
    valid prediction once."""
    import logging
    import threading
    import time

    from services.evaluator.process import EvaluatorProcess

    server = EvaluatorProcess(tmp_path / "evaluator-state", log=tmp_path / "evaluator.log").start()
    failed = threading.Event()

    class SeeRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed" in record.getMessage():
                failed.set()

    handler = SeeRetry(level=logging.WARNING)
    client_log = logging.getLogger("services.evaluator.client")
    client_log.addHandler(handler)
    run_dir = tmp_path / "run"
    problems: list[str] = []

    def crash_and_restart() -> None:
        deadline = time.monotonic() + 300
        while not read_metrics(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # step 2 is now in flight: its /score meets a dead server
        if not failed.wait(timeout=120):
            problems.append("the trainer never saw the evaluator fail")
        server.start()

    watcher = threading.Thread(target=crash_and_restart, daemon=True)
    watcher.start()
    try:
        samples = load_dataset(f"mimic:{synth_mimic_dir}")[:12]
        cfg = _config(server.url, 3, tiny_gemma3_dir, run_dir, "evaluator-crash")
        history = run_grpo(cfg, RunData(samples), progress=False)
        watcher.join(timeout=60)
        assert not problems, problems
        assert failed.is_set()
        assert [h["step"] for h in history] == [1, 2, 3]
        assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
        window = httpx.get(f"{server.url}/runs/evaluator-crash/window").json()["window"]
        assert len(window) == sum(round(h["reward/valid_fraction"] * 8) for h in history)
        # one stored answer per step: the retried step reused its request id instead of scoring twice
        import sqlite3

        with sqlite3.connect(tmp_path / "evaluator-state" / "windows.sqlite3") as db:
            (answers,) = db.execute(
                "SELECT COUNT(*) FROM answers WHERE run_id = 'evaluator-crash'"
            ).fetchone()
        assert answers == 3
    finally:
        client_log.removeHandler(handler)
        server.stop()
