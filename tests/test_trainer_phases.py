"""The order of a GRPO step's phases, through the real controller (`trainer.loop.grpo_step`) and the
real `RolloutEngine` methods, on an engine whose vLLM is a recorder: the engine sleeps after scoring and
before the update, wakes once after the adapter is exported and before it is pushed, in both weight-sync
modes; a merged push never finds it asleep. Pure unit test: no vLLM, Ray or HTTP (the real-engine paths
are covered by test_rollout_worker.py and test_trainer_grpo_run.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chexrl.config import ChexrlConfig, RolloutConfig
from chexrl.core.prompts import build_messages
from chexrl.core.samples import XraySample
from chexrl.models.adapter_io import AdapterWeights
from rollout_worker.engine import RolloutEngine
from tests.fixtures.rollout import png_bytes
from trainer.loop import PhaseTimer, Run, RunData, grpo_step
from trainer.records import records_of
from trainer.sampler import PromptCursor


class RecordingLLM:
    """vLLM's LLM as far as RolloutEngine uses it for sleep, wake-up and generation."""

    def __init__(self, calls: list) -> None:
        self.calls, self.awake = calls, True

    def sleep(self, level: int) -> None:
        assert self.awake, "slept twice"
        self.calls.append(f"llm.sleep(level={level})")
        self.awake = False

    def wake_up(self) -> None:
        assert not self.awake, "woke an awake engine"
        self.calls.append("llm.wake_up")
        self.awake = True

    def generate(self, requests, params, lora_request=None, use_tqdm=False):
        assert self.awake, "generated while asleep"
        self.calls.append("llm.generate")
        out = SimpleNamespace(
            text="x",
            token_ids=[5, 6],
            logprobs=[{5: SimpleNamespace(logprob=-1.0)}, {6: SimpleNamespace(logprob=-1.0)}],
            finish_reason="stop",
        )
        return [SimpleNamespace(outputs=[out] * params.n) for _ in requests]


class RecordingSlot:
    """The adapter slot (AdapterSlot / MergedWeightsSlot): records whether the engine was awake."""

    def __init__(self, llm: RecordingLLM) -> None:
        self.llm, self.version, self.request = llm, 0, None

    def install(self, adapter: AdapterWeights) -> None:
        self.llm.calls.append(f"slot.install(awake={self.llm.awake})")
        self.version = adapter.version


def _engine(weight_sync: str, calls: list) -> RolloutEngine:
    engine = object.__new__(RolloutEngine)  # the real methods, without starting vLLM
    engine.cfg = RolloutConfig(model="unused", weight_sync=weight_sync)
    engine.sleep_enabled, engine.weight_sync, engine.asleep = True, weight_sync, False
    engine.llm = RecordingLLM(calls)
    engine.adapter = RecordingSlot(engine.llm)
    engine.processor = SimpleNamespace(apply_chat_template=lambda messages, **kw: "prompt")
    engine.banned_token_bias = {}
    return engine


class OneEngineRouter:
    """RolloutRouter's verbs over one in-process engine (the router and worker only forward them)."""

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine = engine

    def generate(self, prompts, sampling):
        return self.engine.generate(prompts, sampling)

    def sleep(self):
        self.engine.llm.calls.append("router.sleep")
        return self.engine.sleep()

    def wake_up(self):
        self.engine.llm.calls.append("router.wake_up")
        self.engine.wake_up()

    def push_adapter(self, adapter, version=None):
        assert version == adapter.version  # the loop names the version it pushes
        self.engine.llm.calls.append("router.push_adapter")
        return self.engine.load_adapter(adapter)


class RecordingLearner:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def step(self, examples, rewards, group_size):
        self.calls.append("learner.step")
        return {"loss/total": 0.0}

    def export(self, version):
        self.calls.append("learner.export")
        return AdapterWeights(version, {}, {})


class RecordingClient:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def score(self, reward, items, *, run_id, request_id):
        self.calls.append("client.score")
        return [SimpleNamespace(reward=0.5, valid=True, components={"jaccard": 0.5}) for _ in items]


@pytest.mark.parametrize("weight_sync", ["lora", "merged"])
def test_step_phases_sleep_for_the_update_and_wake_once_before_the_push(weight_sync):
    calls: list = []
    engine = _engine(weight_sync, calls)
    cfg = ChexrlConfig.model_validate({"sampling": {"n": 2}, "grpo": {"prompts_per_step": 2}})
    samples = [
        XraySample(f"/img{i}.png", ("Edema",), f"p{i}", f"s{i}", "mimic", "train", "chexpert14")
        for i in range(2)
    ]
    run = Run(
        cfg,
        RunData(samples),
        router=OneEngineRouter(engine),
        learner=RecordingLearner(calls),
        client=RecordingClient(calls),
        cursor=PromptCursor(2),
        messages=build_messages(),
        images=[png_bytes(0), png_bytes(1)],
    )
    for step in range(2):
        timer = PhaseTimer()
        metrics, adapter, groups = grpo_step(run, step, timer)
        assert adapter.version == step + 1 and engine.adapter_version == step + 1
        assert len(records_of(groups)) == 4 and all(r.scored is not None for r in records_of(groups))
        assert metrics["reward/total"] == 0.5
        assert {
            "time/generation",
            "time/scoring",
            "time/sleep",
            "time/training",
            "time/weight_sync",
            "time/wake",
        } <= set(timer.metrics())
    one_step = [
        "llm.generate",
        "client.score",
        "router.sleep",
        "llm.sleep(level=1)",
        "learner.step",
        "learner.export",
        "router.wake_up",
        "llm.wake_up",
        "router.push_adapter",
        "slot.install(awake=True)",
    ]
    assert calls == one_step * 2


@pytest.mark.parametrize(("weight_sync", "wakes"), [("lora", False), ("merged", True)])
def test_a_push_to_a_sleeping_engine(weight_sync, wakes):
    """Outside the loop's order: a merged push must write live weights, so it wakes the engine first; a
    LoRA push is only registered and leaves the engine asleep."""
    calls: list = []
    engine = _engine(weight_sync, calls)
    assert engine.sleep() is True
    engine.load_adapter(AdapterWeights(1, {}, {}))
    expected = (
        ["llm.sleep(level=1)", "llm.wake_up", "slot.install(awake=True)"]
        if wakes
        else [
            "llm.sleep(level=1)",
            "slot.install(awake=False)",
        ]
    )
    assert calls == expected
    assert engine.asleep is not wakes


def test_sleep_is_a_no_op_where_it_is_off():
    calls: list = []
    engine = _engine("merged", calls)
    engine.sleep_enabled = False  # the CPU default (sleep_between_phases None and no GPU)
    assert engine.sleep() is False
    engine.wake_up()
    assert calls == []
