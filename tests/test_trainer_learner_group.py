"""Data-parallel learner ranks on real Ray actors and a real gloo process group (the CPU's backend): two
ranks train the same adapter as one learner, a checkpoint resumes under another number of ranks, and a
dead rank fails the step at once.

One module-scoped pair of runs (1 learner, then 2 ranks) over three steps of the tiny Gemma3 serves the
tests below; each learner trains on one thread so that both runs do the same arithmetic per micro-batch.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

from chexrl.config import GRPOConfig
from chexrl.core.parsing import format_completion
from chexrl.core.prompts import build_messages
from tests.fixtures.rollout import png_bytes
from trainer.grpo import TrainingExample

GROUP = 4
STEPS = 3
# step -> rewards of its two groups: each group has signal, and the steps differ
REWARDS = [
    [1.0, 0.0, 0.5, 0.0, 0.2, 1.0, 0.0, 0.0],
    [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5],
    [0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.3],
]


def _cfg() -> GRPOConfig:
    # two groups of 4, one per rank: micro-batches of 2 are the very chunks the single learner forms
    return GRPOConfig(
        # ten times the default rate. Both runs sum the same fp32 micro-batch gradients, in another order
        # (rank sums, then the all-reduce); AdamW divides each gradient by its own magnitude, so the
        # last-bit differences of near-zero gradients scale with the rate: 1.4e-6 after 3 steps at 1e-3
        learning_rate=1e-4,
        micro_batch_size=2,
        max_steps=STEPS,
        gradient_checkpointing=False,
        collective_timeout_s=30,
    )


def _examples(model_dir) -> list[TrainingExample]:
    from chexrl.models.loading import load_processor

    processor = load_processor(str(model_dir))
    prompt = processor.apply_chat_template(build_messages(), tokenize=False, add_generation_prompt=True)
    texts = [format_completion("x " * k, ["Edema"] if k % 2 else ["Cardiomegaly"]) for k in range(1, 9)]
    tok = processor.tokenizer
    return [
        TrainingExample(
            prompt, png_bytes(k // GROUP), tok(t, add_special_tokens=False)["input_ids"], [-1.0] * 3
        )
        for k, t in enumerate(texts)
    ]


def _group(model_dir, ranks: int):
    from trainer.learner_group import LearnerGroup

    return LearnerGroup(
        str(model_dir),
        _cfg(),
        temperature=0.8,
        max_completion_tokens=32,
        options=[{"num_cpus": 1}] * ranks,
        num_threads=1,
    )


def _train(group, examples, steps) -> list[dict]:
    return [group.step(examples, REWARDS[s], GROUP) for s in steps]


def _adapter(group) -> dict[str, torch.Tensor]:
    return group.weights(group.export(STEPS)).tensors


@pytest.fixture(scope="module")
def single(tiny_gemma3_dir):
    """One learner in this process (`grpo.learners: 1` runs this very object in its actor): its metrics
    per step, its state after step 1 and its adapter after step 3."""
    from trainer.grpo import GRPOLearner

    threads = torch.get_num_threads()
    examples = _examples(tiny_gemma3_dir)
    learner = GRPOLearner(
        str(tiny_gemma3_dir), _cfg(), temperature=0.8, max_completion_tokens=32, num_threads=1
    )
    try:
        metrics = _train(learner, examples, [0])
        after_one = copy.deepcopy(learner.state())  # the optimizer's state_dict holds live tensors
        metrics += _train(learner, examples, [1, 2])
        adapter = learner.export(STEPS).tensors
    finally:
        torch.set_num_threads(threads)
    return {"examples": examples, "metrics": metrics, "after_one": after_one, "adapter": adapter}


@pytest.fixture(scope="module")
def two_ranks(ray_session, tiny_gemma3_dir, single):
    group = _group(tiny_gemma3_dir, 2)
    yield group
    group.close()


def _max_delta(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _same_metrics(a: dict, b: dict) -> None:
    keys = {k for k in a if not k.startswith("time/")}
    assert keys == {k for k in b if not k.startswith("time/")}
    for k in sorted(keys):
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k


def test_two_ranks_train_the_single_learners_adapter(single, two_ranks):
    metrics = _train(two_ranks, single["examples"], range(STEPS))
    adapter = _adapter(two_ranks)
    # LoRA B starts at zero: three steps moved it, so the comparison below means something
    moved = max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k)
    assert moved > 1e-4
    assert _max_delta(adapter, single["adapter"]) <= 1e-6
    for one, two in zip(single["metrics"], metrics, strict=True):
        _same_metrics(one, two)
    assert single["metrics"][0]["optim/grad_norm"] > 0


def test_a_checkpoint_resumes_under_another_number_of_ranks(single, two_ranks):
    """The single learner's state after step 1, loaded into both ranks, continues to its step-3 adapter."""
    two_ranks.load_state(single["after_one"])
    metrics = _train(two_ranks, single["examples"], [1, 2])
    assert _max_delta(_adapter(two_ranks), single["adapter"]) <= 1e-6
    _same_metrics(single["metrics"][2], metrics[1])


def test_a_dead_rank_fails_the_step_at_once(single, two_ranks):
    import ray

    from trainer.learner_group import LearnerRankError

    ray.kill(two_ranks.actors[1])
    t0 = time.perf_counter()
    with pytest.raises(LearnerRankError, match="learner rank 1 failed in step"):
        two_ranks.step(single["examples"], REWARDS[0], GROUP)
    # rank 0 waits in the step's first collective: the driver does not wait for it
    assert time.perf_counter() - t0 < 10


def test_a_failed_rank_resumes_the_run_from_its_checkpoint(monkeypatch):
    """run_grpo's rule for a dead rank (the loop itself): the next attempt resumes, at most
    grpo.learner_restarts times; a run without restarts fails with the rank's error."""
    from chexrl.config import ChexrlConfig
    from trainer import loop
    from trainer.learner_group import LearnerRankError

    calls = []

    def attempt(cfg, data, history, *, resume, progress, token):
        calls.append(resume)
        if len(calls) == 1:
            raise LearnerRankError("learner rank 1 failed in step")
        return history

    monkeypatch.setattr(loop, "_run_attempt", attempt)
    data = loop.RunData(samples=[])
    assert loop.run_grpo(ChexrlConfig(grpo={"model": "m"}), data, progress=False) == []
    assert calls == [False, True]
    calls.clear()
    with pytest.raises(LearnerRankError):
        loop.run_grpo(ChexrlConfig(grpo={"model": "m", "learner_restarts": 0}), data, progress=False)
    assert calls == [False]


def test_only_a_dead_rank_or_a_failed_collective_counts_as_a_rank_failure():
    """A bug in the learner's own code raises as it is (a resume would only repeat it)."""
    import ray
    import torch.distributed as dist

    from trainer.learner_group import _rank_failure

    assert _rank_failure(ray.exceptions.RayActorError())
    assert _rank_failure(ray.exceptions.RayTaskError("step", "", dist.DistBackendError("Timed out")))
    assert not _rank_failure(ray.exceptions.RayTaskError("step", "", ValueError("bad batch")))
