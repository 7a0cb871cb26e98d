"""The bookkeeping of GRPO's two zero-signal filters, through the real controller (`trainer.loop`):
online filtering (grpo.filter_zero_std_groups: resample batches, kept groups, logs, the cursor and its
resume from a checkpoint) and pass-rate prefiltering (grpo.prefilter: RUN_DIR/prefilter.jsonl, the pool
the cursor draws from, resume after a finished or a killed prefilter). Pure unit tests: the router, the
learner and the evaluator client are fakes whose rewards are set by hand per image; the real engine,
Ray and HTTP path is test_trainer_grpo_run.py's."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from chexrl.config import ChexrlConfig, PrefilterConfig
from chexrl.core.samples import XraySample
from chexrl.models.adapter_io import AdapterWeights
from rollout_worker.types import Completion, RolloutGroup
from trainer import prefilter as prefilter_mod
from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.loop import PhaseTimer, Run, RunData, grpo_step
from trainer.prefilter import PARTIAL, PREFILTER, prefilter_pool
from trainer.records import records_of
from trainer.run import save_run_checkpoint
from trainer.sampler import PromptCursor

N = 2  # completions per prompt in these tests


class FakeRouter:
    """Completion j of image i reads "i:j"; the fake client looks its reward up by that text."""

    def __init__(self, calls: list, fail_after: int | None = None) -> None:
        self.calls, self.fail_after, self.generated = calls, fail_after, []

    def generate(self, prompts, sampling):
        if self.fail_after is not None and len(self.generated) >= self.fail_after:
            raise RuntimeError("worker killed")
        self.calls.append("generate")
        images = [int(p.prompt_id.split(":")[1]) for p in prompts]
        self.generated.append(images)
        return [
            RolloutGroup(
                p.prompt_id,
                "prompt",
                [Completion(f"{i}:{j}", [1, 2], [-1.0, -1.0], "stop") for j in range(sampling.n)],
                0,
            )
            for p, i in zip(prompts, images, strict=True)
        ]

    def sleep(self):
        self.calls.append("sleep")

    def wake_up(self):
        self.calls.append("wake_up")

    def push_adapter(self, adapter, version=None):
        assert version == adapter.version  # the loop names the version it pushes
        self.calls.append(f"push {adapter.version}")


class FakeLearner:
    def __init__(self, calls: list) -> None:
        self.calls, self.batches = calls, []

    def step(self, examples, rewards, group_size):
        self.calls.append("learner.step")
        self.batches.append((len(examples), list(rewards), group_size))
        return {"loss/total": 0.0}

    def export(self, version):
        self.calls.append(f"export {version}")
        return AdapterWeights(version, {}, {})

    def state(self):
        return {}


class FakeClient:
    """Rewards per image: `table[i]` is a list of the rewards of completions 0, 1, ... (the jaccard
    component too)."""

    def __init__(self, calls: list, table: dict[int, list[float]]) -> None:
        self.calls, self.table, self.requests = calls, table, []

    def score(self, reward, items, run_id=None, request_id=None):
        self.calls.append("score")
        self.requests.append((reward, run_id, len(items)))
        out = []
        for item in items:
            i, j = (int(x) for x in item["completion"].split(":"))
            r = self.table[i][j]
            out.append(SimpleNamespace(reward=r, valid=True, predicted=[], components={"jaccard": r}))
        return out

    def get_window(self, run_id):
        return []


def _samples(n: int) -> list[XraySample]:
    return [
        XraySample(f"/img{i}.png", ("Edema",), f"p{i}", f"s{i}", "mimic", "train", "chexpert14")
        for i in range(n)
    ]


def _cfg(**grpo) -> ChexrlConfig:
    return ChexrlConfig.model_validate({"sampling": {"n": N}, "grpo": {"prompts_per_step": 2, **grpo}})


def _run(cfg, samples, run_dir, table, calls, cursor=None, pool=None, router=None) -> Run:
    """A run of fake actors over `samples`, writing to `run_dir` (grpo.model 'm', run id 'r')."""
    size = len(pool) if pool is not None else len(table)
    cfg = cfg.model_copy(
        update={"grpo": cfg.grpo.model_copy(update={"model": "m", "run_dir": str(run_dir), "run_id": "r"})}
    )
    return Run(
        cfg,
        RunData(samples),
        router=router or FakeRouter(calls),
        learner=FakeLearner(calls),
        client=FakeClient(calls, table),
        cursor=cursor or PromptCursor(size, seed=0),
        messages=[],
        images=[b"img%d" % i for i in range(len(table))],
        pool=pool,
    )


FLAT, SIGNAL = [0.5, 0.5], [0.0, 1.0]


def _table_by_draw_order(kinds: list[list[float]]) -> dict[int, list[float]]:
    """Rewards keyed by image such that the cursor's k-th draw (seed 0) gets kinds[k]."""
    order = PromptCursor(len(kinds), seed=0).take(len(kinds))
    return {image: kinds[k] for k, image in enumerate(order)}


def test_filter_resamples_until_the_step_has_enough_groups_with_signal(tmp_path):
    # draws in cursor order: batch 0 flat, flat; batch 1 signal, flat; batch 2 signal, signal
    kinds = [FLAT, FLAT, SIGNAL, FLAT, SIGNAL, SIGNAL]
    table, calls = _table_by_draw_order(kinds), []
    order = PromptCursor(6, seed=0).take(6)
    cfg = _cfg(filter_zero_std_groups=True, max_resample_batches=4)
    run = _run(cfg, _samples(6), tmp_path, table, calls)
    timer = PhaseTimer()
    metrics, adapter, drawn = grpo_step(run, 0, timer)

    assert metrics["filter/resample_batches"] == 2 and metrics["filter/kept_groups"] == 2
    assert metrics["filter/skipped_update"] == 0
    assert metrics["advantage/zero_std_fraction"] == pytest.approx(3 / 6)  # before filtering: all drawn
    assert metrics["reward/total"] == pytest.approx((3 * 0.5 * 2 + 3 * 0.5 * 2) / 12)
    # the update trains on the first two groups with signal (draws 2 and 4), contiguously per group
    assert run.learner.batches == [(2 * N, [0.0, 1.0, 0.0, 1.0], N)]
    assert [g.sample for g in drawn] == order and len(records_of(drawn)) == 12  # every one is logged
    # generation and scoring repeat inside their phases, before the update's sleep/train/sync/wake/push
    assert calls == ["generate", "score"] * 3 + ["sleep", "learner.step", "export 1", "wake_up", "push 1"]
    assert adapter.version == 1 and run.cursor.state()["epoch"] == 1 and run.cursor.index == 0
    assert {"time/generation", "time/scoring", "time/training"} <= set(timer.metrics())


def test_filter_trains_on_what_it_has_when_the_budget_runs_out(tmp_path):
    table, calls = _table_by_draw_order([FLAT, FLAT, SIGNAL, FLAT, SIGNAL, SIGNAL]), []
    run = _run(_cfg(filter_zero_std_groups=True, max_resample_batches=1), _samples(6), tmp_path, table, calls)
    metrics, *_ = grpo_step(run, 0, PhaseTimer())
    assert (metrics["filter/resample_batches"], metrics["filter/kept_groups"]) == (1, 1)
    assert metrics["advantage/zero_std_fraction"] == pytest.approx(3 / 4)
    assert run.learner.batches == [(N, [0.0, 1.0], N)]
    assert run.cursor.index == 4


def test_no_group_with_signal_skips_the_update_but_keeps_the_step(tmp_path):
    table, calls = {i: FLAT for i in range(6)}, []
    run = _run(_cfg(filter_zero_std_groups=True, max_resample_batches=2), _samples(6), tmp_path, table, calls)
    metrics, adapter, *_ = grpo_step(run, 4, PhaseTimer())
    assert metrics["filter/skipped_update"] == 1 and metrics["filter/kept_groups"] == 0
    assert metrics["filter/resample_batches"] == 2 and metrics["advantage/zero_std_fraction"] == 1
    assert "loss/total" not in metrics and run.learner.batches == []
    # the step still exports and pushes its (unchanged) adapter as version step + 1
    assert calls[-4:] == ["sleep", "export 5", "wake_up", "push 5"] and adapter.version == 5


def test_filter_off_is_one_batch_and_every_group_trains(tmp_path):
    table, calls = {i: FLAT for i in range(6)}, []
    run = _run(_cfg(max_resample_batches=3), _samples(6), tmp_path, table, calls)
    metrics, *_ = grpo_step(run, 0, PhaseTimer())
    assert calls[:2] == ["generate", "score"] and calls.count("generate") == 1
    assert run.learner.batches == [(2 * N, [0.5] * 4, N)] and metrics["advantage/zero_std_fraction"] == 1
    assert not any(k.startswith("filter/") for k in metrics)


def test_filtered_draws_resume_exactly_from_a_checkpoint(tmp_path):
    """Steps 0-2 uninterrupted against steps 0-1, a checkpoint, and step 2 from its saved cursor."""
    kinds = [FLAT, SIGNAL, FLAT, FLAT, SIGNAL, SIGNAL, FLAT]
    table = _table_by_draw_order(kinds)
    cfg = _cfg(filter_zero_std_groups=True, max_resample_batches=3, seed=0)
    samples, run_dir = _samples(7), tmp_path / "a"

    whole = _run(cfg, samples, run_dir, table, [])
    for step in range(3):
        grpo_step(whole, step, PhaseTimer())

    first = _run(cfg, samples, run_dir, table, [])
    for step in range(2):
        grpo_step(first, step, PhaseTimer())
    save_run_checkpoint(first, 2)
    _, meta = load_checkpoint(latest_checkpoint(tmp_path / "a" / "checkpoints"))
    assert meta["cursor"] == first.cursor.state() and meta["step"] == 2
    resumed = _run(cfg, samples, run_dir, table, [], cursor=PromptCursor.from_state(meta["cursor"], size=7))
    grpo_step(resumed, 2, PhaseTimer())

    assert resumed.router.generated == whole.router.generated[len(first.router.generated) :]
    assert resumed.learner.batches == whole.learner.batches[2:]
    assert resumed.cursor.state() == whole.cursor.state()


def test_a_saved_cursor_over_another_pool_is_refused():
    state = PromptCursor(10, seed=0).state()
    with pytest.raises(ValueError, match="runs over 10 images but this run draws from 4"):
        PromptCursor.from_state(state, size=4)
    assert PromptCursor.from_state(state, size=10).size == 10


# ---- prefilter -----------------------------------------------------------------------------------


def _prefilter_cfg(**p) -> ChexrlConfig:
    settings = {"k": 4, "min_pass": 0.25, "max_pass": 0.75, "measure": "exact", **p}
    return ChexrlConfig.model_validate(
        {"sampling": {"n": N}, "grpo": {"prompts_per_step": 2, "prefilter": settings}}
    )


# image -> the 4 samples' Jaccard: exact passes 0, 1, 2, 4 and 3 of 4; jaccard>=0.5 passes 4, 1, 2, 4, 3
PREFILTER_TABLE = {
    0: [0.5, 0.5, 0.5, 0.5],
    1: [1.0, 0.0, 0.0, 0.0],
    2: [1.0, 1.0, 0.0, 0.2],
    3: [1.0, 1.0, 1.0, 1.0],
    4: [1.0, 1.0, 1.0, 0.0],
}


def test_prefilter_writes_pass_rates_and_the_cursor_draws_only_kept_images(tmp_path):
    calls = []
    run = _run(_prefilter_cfg(), _samples(5), tmp_path, PREFILTER_TABLE, calls)
    pool = prefilter_pool(run, resume=False)

    assert pool == [1, 2, 4]
    rows = [json.loads(line) for line in (tmp_path / PREFILTER).read_text().splitlines()]
    assert [(r["index"], r["image"], r["passes"], r["pass_rate"], r["kept"]) for r in rows] == [
        (0, "/img0.png", 0, 0.0, False),
        (1, "/img1.png", 1, 0.25, True),
        (2, "/img2.png", 2, 0.5, True),
        (3, "/img3.png", 4, 1.0, False),
        (4, "/img4.png", 3, 0.75, True),
    ]
    assert {(r["k"], r["measure"]) for r in rows} == {(4, "exact")}
    assert not (tmp_path / PARTIAL).exists()
    # sampled k per image with the run's other sampling settings, graded by the hard reward, no run id
    assert run.client.requests == [("hard", None, 20)]

    # GRPO's cursor then runs over the kept images only
    run.pool, run.cursor = pool, PromptCursor(len(pool), seed=0)
    drawn = []
    for step in range(3):
        _, _, groups = grpo_step(run, step, PhaseTimer())
        drawn += [g.sample for g in groups]
    assert sorted(drawn) == [1, 1, 2, 2, 4, 4]


def test_prefilter_jaccard_measure(tmp_path):
    cfg = _prefilter_cfg(measure="jaccard>=0.5", max_pass=0.8)
    pool = prefilter_pool(_run(cfg, _samples(5), tmp_path, PREFILTER_TABLE, []), resume=False)
    rows = [json.loads(line) for line in (tmp_path / PREFILTER).read_text().splitlines()]
    assert [r["passes"] for r in rows] == [4, 1, 2, 4, 3] and pool == [1, 2, 4]


def test_a_resumed_run_reads_the_prefilter_and_samples_nothing(tmp_path):
    cfg, samples = _prefilter_cfg(), _samples(5)
    assert prefilter_pool(_run(cfg, samples, tmp_path, PREFILTER_TABLE, []), resume=False) == [1, 2, 4]
    calls = []
    run = _run(cfg, samples, tmp_path, PREFILTER_TABLE, calls)
    assert prefilter_pool(run, resume=True) == [1, 2, 4]
    assert calls == []
    # a fresh (not resumed) run in the same folder measures again
    assert prefilter_pool(run, resume=False) == [1, 2, 4] and calls == [
        "generate",
        "score",
    ]


def test_a_prefilter_killed_mid_sampling_resumes_with_the_images_left(tmp_path, monkeypatch):
    monkeypatch.setattr(prefilter_mod, "BATCH_IMAGES", 2)
    cfg, samples = _prefilter_cfg(), _samples(5)
    killed = FakeRouter([], fail_after=1)  # the second generate call dies
    with pytest.raises(RuntimeError, match="worker killed"):
        prefilter_pool(_run(cfg, samples, tmp_path, PREFILTER_TABLE, [], router=killed), resume=False)
    assert not (tmp_path / PREFILTER).exists()
    with open(tmp_path / PARTIAL, "a") as f:
        f.write('{"index": 2, "ima')  # a line torn by the kill
    resumed = FakeRouter([])
    assert prefilter_pool(_run(cfg, samples, tmp_path, PREFILTER_TABLE, [], router=resumed), resume=True) == [
        1,
        2,
        4,
    ]
    assert killed.generated == [[0, 1]] and resumed.generated == [[2, 3], [4]]
    rows = [json.loads(line) for line in (tmp_path / PREFILTER).read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and not (tmp_path / PARTIAL).exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k": 8}, r"row 1: k 4 but grpo.prefilter.k is 8"),
        ({"measure": "jaccard>=0.5"}, r"row 1: measure 'exact' but grpo.prefilter.measure is 'jaccard>=0.5'"),
        ({"max_pass": 1.0}, r"row 4: kept False at pass rate 1.0, but grpo.prefilter's bounds \[0.25, 1.0\]"),
    ],
)
def test_a_stored_prefilter_from_other_settings_is_refused(tmp_path, change, message):
    prefilter_pool(_run(_prefilter_cfg(), _samples(5), tmp_path, PREFILTER_TABLE, []), resume=False)
    changed = _run(_prefilter_cfg(**change), _samples(5), tmp_path, PREFILTER_TABLE, [])
    with pytest.raises(ValueError, match=message):
        prefilter_pool(changed, resume=True)


def test_a_stored_prefilter_of_another_rl_set_is_refused(tmp_path):
    prefilter_pool(_run(_prefilter_cfg(), _samples(5), tmp_path, PREFILTER_TABLE, []), resume=False)
    other = [dataclasses.replace(s, image_path=f"/other{i}.png") for i, s in enumerate(_samples(5))]
    with pytest.raises(
        ValueError, match=r"prefilter.jsonl row 1: index 0, image '/img0.png' is not this run's RL set"
    ):
        prefilter_pool(_run(_prefilter_cfg(), other, tmp_path, PREFILTER_TABLE, []), resume=True)


def test_a_prefilter_that_keeps_nothing_says_so(tmp_path):
    run = _run(_prefilter_cfg(min_pass=0.9, max_pass=0.95), _samples(5), tmp_path, PREFILTER_TABLE, [])
    with pytest.raises(ValueError, match="kept none of 5 RL images"):
        prefilter_pool(run, resume=False)


@pytest.mark.parametrize(
    "measure", ["jaccard>0.5", "jaccard>=0", "jaccard>=1.5", "f1>=0.5", "Exact", "jaccard>=x"]
)
def test_prefilter_measure_is_checked_at_the_edge(measure):
    with pytest.raises(
        ValueError, match=r"grpo.prefilter.measure .*use 'exact' or 'jaccard>=T' with 0 < T <= 1"
    ):
        ChexrlConfig.model_validate({"grpo": {"prefilter": {"measure": measure}}})
    assert (
        PrefilterConfig.threshold_of("exact") == 1.0 and PrefilterConfig.threshold_of("jaccard>=0.4") == 0.4
    )
    with pytest.raises(ValueError, match=r"min_pass 0\.8 exceeds max_pass 0\.2"):
        PrefilterConfig(min_pass=0.8, max_pass=0.2)


def test_filters_are_off_by_default():
    g = ChexrlConfig().grpo
    assert g.prefilter is None and g.filter_zero_std_groups is False


def test_report_summarises_the_prefilter(tmp_path):
    from chexrl.evaluation.report import write_report

    prefilter_pool(_run(_prefilter_cfg(), _samples(5), tmp_path, PREFILTER_TABLE, []), resume=False)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/total": 0.5}) + "\n")
    write_report(tmp_path)
    page = (tmp_path / "report" / "report.md").read_text()
    assert "## RL set prefilter" in page and "Kept 3 of 5 images, set aside 2" in page
    for cells in ("| 0 of 4 | 0.000 | 0 | 1 |", "| 1 of 4 | 0.250 | 1 | 0 |", "| 4 of 4 | 1.000 | 0 | 1 |"):
        assert cells in page


# ---- through the real engine, Ray and the evaluator over HTTP ----------------------------------


@pytest.mark.slow
def test_grpo_with_both_filters_through_the_real_parts(
    ray_session, evaluator, tiny_gemma3_dir, synth_mimic_dir, tmp_path
):
    """Two steps with the prefilter and the online filter on: vLLM worker actor, evaluator over HTTP,
    learner actor. The random tiny model writes no valid answer, so its groups mostly score alike: the
    logs must say what was drawn, what was kept, and the checkpoint's cursor must count every draw."""
    from chexrl.data.loaders import load_dataset
    from trainer.loop import RunData, run_grpo

    samples = load_dataset(f"mimic:{synth_mimic_dir}")[:6]
    cfg = ChexrlConfig.model_validate(
        {
            "sampling": {"n": 4, "max_tokens": 16},
            "grpo": {
                "model": str(tiny_gemma3_dir),
                "run_dir": str(tmp_path / "run"),
                "run_id": "grpo-filters",
                "evaluator_url": evaluator.url,
                "max_steps": 2,
                "prompts_per_step": 2,
                "save_steps": 1,
                "reward": "nuanced",
                "micro_batch_size": 8,
                "filter_zero_std_groups": True,
                "max_resample_batches": 2,
                # the bounds keep pass rates 0 to 1/2: the random tiny model passes nothing, so all of them
                "prefilter": {"k": 2, "min_pass": 0.0, "max_pass": 0.5, "measure": "jaccard>=0.5"},
            },
        }
    )
    history = run_grpo(cfg, RunData(samples), progress=False)

    rows = [json.loads(line) for line in (tmp_path / "run" / PREFILTER).read_text().splitlines()]
    assert [r["image"] for r in rows] == [s.image_path for s in samples]
    assert all(r["k"] == 2 and r["passes"] in (0, 1, 2) and r["kept"] == (r["passes"] <= 1) for r in rows)
    kept = {r["index"] for r in rows if r["kept"]}
    assert [h["step"] for h in history] == [1, 2]
    completions = [
        json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    ]
    drawn = 0
    for h in history:
        batches = 1 + h["filter/resample_batches"]
        assert 0 <= h["filter/resample_batches"] <= 2 and 0 <= h["filter/kept_groups"] <= 2
        step_rows = [r for r in completions if r["step"] == h["step"]]
        assert len(step_rows) == batches * 2 * 4 and {r["sample"] for r in step_rows} <= kept
        groups = [step_rows[i : i + 4] for i in range(0, len(step_rows), 4)]
        flat = [len({r["reward"] for r in g}) == 1 for g in groups]
        assert h["advantage/zero_std_fraction"] == pytest.approx(sum(flat) / len(flat))  # before filtering
        assert h["filter/kept_groups"] == min(2, flat.count(False))
        assert h["filter/resample_batches"] == 2 or flat.count(False) >= 2  # resampled while short
        assert ("loss/total" in h) == (h["filter/kept_groups"] > 0)
        drawn += batches * 2
    meta = json.loads((latest_checkpoint(tmp_path / "run" / "checkpoints") / "meta.json").read_text())
    cursor = meta["cursor"]
    assert cursor["size"] == len(kept) and cursor["epoch"] * len(kept) + cursor["index"] == drawn
