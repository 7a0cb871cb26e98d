"""The rollout worker with the real vLLM engine inside a real Ray actor, on the tiny Gemma3 model."""

import os
import signal
import time

import pytest
import ray

from chexrl.config import SamplingConfig
from rollout_worker.router import split_evenly
from rollout_worker.types import RolloutError
from tests.fixtures.rollout import image_prompt, make_adapter, png_bytes

pytestmark = pytest.mark.slow

GREEDY = SamplingConfig(greedy=True, max_tokens=12)


def test_split_evenly():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([1], 3) == [[1], [], []]


def test_groups_of_sampled_completions(rollout_router):
    prompts = [image_prompt(f"p{i}", png_bytes(i)) for i in range(3)]
    groups = rollout_router.generate(prompts, SamplingConfig(max_tokens=16))
    from chexrl.models.loading import load_processor
    from rollout_worker.engine import multimodal_token_ids

    banned = set(multimodal_token_ids(load_processor(rollout_router.cfg.model)))
    assert banned
    assert [g.prompt_id for g in groups] == ["p0", "p1", "p2"]
    for g in groups:
        assert g.error is None and g.adapter_version == rollout_router.version
        assert len(g.completions) == 4  # the paper's group size is the default
        assert "<start_of_image>" in g.prompt_text
        for c in g.completions:
            assert 0 < len(c.token_ids) <= 16
            assert not set(c.token_ids) & banned  # image placeholders are never sampled
            assert len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0.0 for lp in c.logprobs)
            assert c.finish_reason in {"stop", "length"}


def test_bad_items_fail_alone_and_engine_survives(rollout_router):
    good = image_prompt("good", png_bytes(7))
    missing = image_prompt("missing", png_bytes(7))
    missing = type(missing)("missing", missing.messages, [])
    garbage = image_prompt("garbage", b"this is not an image")
    too_long = image_prompt("too-long", png_bytes(8), text="lung " * 5000)
    groups = rollout_router.generate([good, missing, garbage, too_long], GREEDY)
    by_id = {g.prompt_id: g for g in groups}
    assert by_id["good"].error is None and len(by_id["good"].completions) == 1
    assert "1 image part(s) but 0 image(s)" in by_id["missing"].error
    assert "cannot decode image" in by_id["garbage"].error
    assert by_id["too-long"].error and by_id["too-long"].completions == []
    assert "length" in by_id["too-long"].error.lower() or "token" in by_id["too-long"].error.lower()
    # the engine is still up and serves the next batch
    assert rollout_router.generate([good], GREEDY)[0].error is None


def test_adapter_versions_swap_live_and_never_serve_stale(rollout_router, rollout_config):
    prompts = [image_prompt(f"s{i}", png_bytes(100 + i)) for i in range(2)]
    base_version = rollout_router.version
    before = [g.completions[0].token_ids for g in rollout_router.generate(prompts, GREEDY)]

    v = base_version + 1
    rollout_router.push_adapter(make_adapter(rollout_config.model, v, seed=1))
    tuned = rollout_router.generate(prompts, GREEDY)
    assert all(g.adapter_version == v for g in tuned)
    assert [g.completions[0].token_ids for g in tuned] != before, "the adapter should change greedy outputs"

    # A zero adapter equals the base model: if any prefix-cache entry or loaded weights of v were
    # reused, the outputs would still be v's, not the base's.
    rollout_router.push_adapter(make_adapter(rollout_config.model, v + 1, zero=True))
    after = rollout_router.generate(prompts, GREEDY)
    assert all(g.adapter_version == v + 1 for g in after)
    assert [g.completions[0].token_ids for g in after] == before


def test_caller_can_assert_the_version(rollout_router):
    worker = rollout_router.workers[0]
    with pytest.raises(RolloutError, match="caller expects v999"):
        ray.get(worker.generate.remote([image_prompt("x", png_bytes(1))], GREEDY, 999))


@ray.remote
def _exported_adapter(model: str, version: int, seed: int):
    """An adapter produced in another process, as the learner actor's export is."""
    return make_adapter(model, version, seed=seed)


def test_killed_worker_restarts_restores_adapter_and_retries_in_flight(rollout_router, rollout_config):
    v = rollout_router.version + 1
    # pushed by reference, as the training loop does: the registry keeps the reference for restarts
    exported = _exported_adapter.remote(rollout_config.model, v, 3)
    with pytest.raises(ValueError, match="needs its version"):
        rollout_router.push_adapter(exported)
    assert rollout_router.push_adapter(exported, version=v) == v
    prompts = [image_prompt(f"k{i}", png_bytes(200 + i)) for i in range(2)]
    expected = [g.completions[0].token_ids for g in rollout_router.generate(prompts, GREEDY)]

    old_pid = rollout_router.info()[0]["pid"]
    slow = SamplingConfig(max_tokens=256, n=4)
    in_flight = rollout_router.workers[0].generate.remote(prompts * 8, slow, v)
    time.sleep(1.0)
    os.kill(old_pid, signal.SIGKILL)

    groups = ray.get(in_flight, timeout=300)  # retried on the restarted worker, not lost
    assert len(groups) == 16 and all(g.error is None and g.adapter_version == v for g in groups)
    info = rollout_router.info()[0]
    assert info["pid"] != old_pid
    assert info["restored_version"] == v  # restored from the registry before serving
    again = rollout_router.generate(prompts, GREEDY)
    assert [g.completions[0].token_ids for g in again] == expected


def test_router_splits_batches_and_pushes_to_every_worker(ray_session, rollout_config, rollout_router):
    """Two workers serving the adapter as a live LoRA; the session's worker (the CPU default, merged weight
    sync) must serve the same policy for the same adapter."""
    from rollout_worker.router import RolloutRouter

    assert rollout_router.info()[0]["weight_sync"] == "merged"
    router = RolloutRouter(rollout_config.model_copy(update={"num_workers": 2, "weight_sync": "lora"}))
    try:
        prompts = [image_prompt(f"m{i}", png_bytes(300 + i)) for i in range(5)]
        base = router.generate(prompts, GREEDY)
        assert [g.prompt_id for g in base] == [f"m{i}" for i in range(5)]
        router.push_adapter(make_adapter(rollout_config.model, 1, seed=5))
        infos = router.info()
        assert len({i["pid"] for i in infos}) == 2 and all(i["adapter_version"] == 1 for i in infos)
        assert all(i["weight_sync"] == "lora" for i in infos)
        # the same prompt gives the same greedy answer on either worker: both hold the same adapter
        same = [image_prompt(f"d{i}", png_bytes(400)) for i in range(2)]
        a, b = router.generate(same, GREEDY)
        assert a.completions[0].token_ids == b.completions[0].token_ids and a.adapter_version == 1

        # live LoRA and merged weights: the same adapter is the same policy, token for token
        rollout_router.push_adapter(make_adapter(rollout_config.model, rollout_router.version + 1, seed=5))
        lora = router.generate(prompts, GREEDY)
        merged = rollout_router.generate(prompts, GREEDY)
        assert [g.completions[0].token_ids for g in lora] == [g.completions[0].token_ids for g in merged]
        assert [g.completions[0].token_ids for g in lora] != [g.completions[0].token_ids for g in base]
        for x, y in zip(lora, merged, strict=True):
            # bf16 kernels on both sides, added in another order: equal to a few hundredths of a nat
            assert x.completions[0].logprobs == pytest.approx(y.completions[0].logprobs, abs=0.05)
    finally:
        router.shutdown()
