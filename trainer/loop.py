"""The GRPO controller: one loop, one screen. Each step, as named, timed phases:

    generation (vLLM actor, engine awake) -> scoring (evaluator /score over HTTP) -> sleep (the engine
    frees its GPU memory) -> training (Dr. GRPO update in the learner actor) -> weight sync: export the
    adapter -> wake (the engine takes its memory back) -> weight sync: push the adapter to every worker

so the learner trains while vLLM's weights and KV cache are off the GPU (`rollout.sleep_between_phases`,
on by default with a GPU; level 1: weights kept in host memory). The engine wakes once a step, before the
push: a `merged` push reloads weights and needs it awake, and a `lora` push is then served at once.

Resumable: every `save_steps` the learner state, the prompt cursor, the adapter version and the
evaluator's nuanced-reward window for this run are checkpointed atomically (trainer/checkpoint.py);
`resume=True` continues with the same step numbers and prompt order.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from chexrl.config import ChexrlConfig, RolloutConfig
from chexrl.core.prompts import build_messages
from chexrl.data.images import image_bytes
from chexrl.models.adapter_io import save_adapter_dir
from rollout_worker.router import RolloutRouter
from rollout_worker.types import RolloutPrompt
from services.evaluator.client import EvaluatorClient
from trainer.checkpoint import load_latest
from trainer.engine_gap import EngineGapWatch
from trainer.filtering import StepBatch, collect_groups
from trainer.learner_group import LearnerGroup, LearnerRankError
from trainer.periodic_eval import log_eval, periodic_evaluator
from trainer.placement import Placement, reserve
from trainer.prefilter import prefilter_pool
from trainer.records import CompletionRecord, Group, records_of, reward_metrics, set_scores
from trainer.run import (
    GRPORun,
    PhaseTimer,
    RunParts,
    save_run_checkpoint,
    write_placement,
    write_run_config,
)
from trainer.run_log import RunLog
from trainer.sampler import PromptCursor

__all__ = ["GRPORun", "PhaseTimer", "RunParts", "grpo_step", "run_grpo", "start_run"]

log = logging.getLogger(__name__)


def run_grpo(cfg: ChexrlConfig, run: GRPORun, *, resume: bool = False, progress: bool = True) -> list[dict]:
    """Train; returns the per-step metrics. Needs a connected Ray (ray.init) and a running evaluator.

    A learner rank that dies (trainer/learner_group.py) ends the attempt; the run then resumes from its
    last checkpoint, up to `grpo.learner_restarts` times, as `resume=True` would: the steps after the
    checkpoint are redone once and logged once."""
    history: list[dict] = []
    for attempt in range(cfg.grpo.learner_restarts + 1):
        try:
            return _run_attempt(cfg, run, history, resume=resume, progress=progress)
        except LearnerRankError as exc:
            if attempt == cfg.grpo.learner_restarts:
                raise
            log.warning("%s: resuming %s from its last checkpoint", exc, run.run_id)
            resume = True
    raise AssertionError("unreachable")


def _run_attempt(
    cfg: ChexrlConfig, run: GRPORun, history: list[dict], *, resume: bool, progress: bool
) -> list[dict]:
    g = cfg.grpo
    parts = start_run(cfg, run, resume=resume)
    history[:] = [record for record in history if record["step"] <= parts.start]  # the rest is redone
    runlog = None
    try:
        resume_step = parts.start if resume else None
        runlog = RunLog(run.run_dir, resume_step=resume_step, completions=g.log_completions)
        periodic = periodic_evaluator(cfg, run, resume_step=resume_step)
        if periodic is not None and parts.start == 0:  # the starting (SFT) policy: the trade-off's baseline
            log_eval(periodic.evaluate(parts.router, 0, None), progress)
        engine_gap = EngineGapWatch(g.engine_logp_diff_warn)
        for step in _progress(range(parts.start, g.max_steps), parts.start, g.max_steps, progress):
            timer = PhaseTimer()
            with timer("step"):
                metrics, adapter, groups = grpo_step(cfg, run, parts, step, timer)
            done = step + 1
            engine_gap.observe(done, metrics)
            if periodic is not None and (done % g.eval_steps == 0 or done == g.max_steps):
                with timer("eval"):
                    weights = parts.learner.weights(adapter)
                    metrics.update(log_eval(periodic.evaluate(parts.router, done, weights), progress))
            stop = periodic is not None and periodic.stopped  # grpo.stop_when_ood_drops
            if done % g.save_steps == 0 or done == g.max_steps or stop:
                with timer("checkpoint"):
                    save_run_checkpoint(cfg, run, parts, done)
            metrics.update(timer.metrics())
            runlog.log(done, metrics)
            runlog.log_completions(done, [r.log_row() for r in records_of(groups)])
            history.append({"step": done, **metrics})
            if stop:
                break
        final = parts.learner.weights(parts.learner.export(g.max_steps))
        if periodic is not None and periodic.stopped:
            periodic.keep_best_ood(Path(run.run_dir) / "adapter-final", final)
        else:
            save_adapter_dir(final, Path(run.run_dir) / "adapter-final")
        write_placement(run, parts)  # what each worker serves at the end: the last pushed version
    finally:
        if runlog is not None:
            runlog.close()
        parts.close()
    return history


def grpo_step(cfg: ChexrlConfig, run: GRPORun, parts: RunParts, step: int, timer: PhaseTimer):
    """One GRPO step, phase by phase; returns (metrics, the new adapter, every group drawn). With
    `grpo.filter_zero_std_groups` the generation and scoring phases repeat until enough groups have signal
    (trainer/filtering.py); the groups returned are every one drawn, the update uses the kept groups."""
    g = cfg.grpo

    def draw(batch: int) -> list[Group]:
        with timer("generation"):
            return generate(parts, run, cfg, step, batch)

    def score(groups: list[Group]) -> None:
        with timer("scoring"):
            items = [r.score_item() for r in records_of(groups)]
            set_scores(
                groups, parts.client.score(g.reward, items, run_id=run.run_id, request_id=uuid.uuid4().hex)
            )

    batch = collect_groups(
        draw,
        score,
        wanted=g.prompts_per_step,
        max_resample_batches=g.max_resample_batches if g.filter_zero_std_groups else None,
    )
    with timer("sleep"):  # vLLM's weights and KV cache leave the GPU for the update (no-op without sleep)
        parts.router.sleep()
    with timer("training"):
        # Dr. GRPO's constant divisor is len(examples) * max_completion_tokens over the examples passed
        # here: with fewer groups kept it is kept_groups * n * max_tokens, so each trained completion's
        # token counts as much as in a full step of groups with signal. Unfiltered, the zero-std groups
        # (zero advantage) only enlarge the divisor and dilute the policy gradient by their share; the
        # filter removes that dilution, which is its point (DAPO), not a change of the loss's scale.
        metrics = _train(parts, batch, cfg.sampling.n, step)
    with timer("weight_sync"):  # returns at once: the learner exports while the engine wakes
        adapter = parts.learner.export(step + 1)
    with timer("wake"):
        parts.router.wake_up()
    with timer("weight_sync"):  # waits for the export, then every worker loads it
        parts.router.push_adapter(adapter, version=step + 1)
    # measured on every completion drawn, before filtering: the policy's reward and zero-std share
    metrics.update(reward_metrics(batch.drawn))
    metrics.update(batch.metrics)
    return metrics, adapter, batch.drawn


def _train(parts: RunParts, batch: StepBatch, group_size: int, step: int) -> dict:
    if batch.train:
        records = records_of(batch.train)
        examples = [r.training_example() for r in records]
        return parts.learner.step(examples, [r.reward for r in records], group_size)
    # no group with signal (filter on, resample budget spent): no update, the step still counts, and the
    # unchanged adapter is exported and pushed as this step's version; the learning-rate schedule, which
    # the learner advances per update, does not advance
    log.warning(
        "step %d: no group with signal after %s extra rollout batches: update skipped",
        step + 1,
        int(batch.metrics.get("filter/resample_batches", 0)),
    )
    return {}


def generate(parts: RunParts, run: GRPORun, cfg: ChexrlConfig, step: int, batch: int = 0) -> list[Group]:
    """Draw a rollout batch of prompts (the step's first, or a resample when filtering) and sample a group
    of completions for each. The cursor runs over `parts.pool` (the prefilter's kept images) when set."""
    idx = parts.cursor.take(cfg.grpo.prompts_per_step)
    if parts.pool is not None:
        idx = [parts.pool[j] for j in idx]
    tag = f"{step}" if batch == 0 else f"{step}.{batch}"
    prompts = [RolloutPrompt(f"{tag}:{i}", parts.messages, [parts.images[i]]) for i in idx]
    answers = parts.router.generate(prompts, cfg.sampling)  # retried by Ray if a worker dies
    groups = []
    for i, answer, prompt in zip(idx, answers, prompts, strict=True):
        if answer.error:
            raise RuntimeError(f"rollout failed for {answer.prompt_id}: {answer.error}")
        records = [
            CompletionRecord(
                sample=i,
                prompt_text=answer.prompt_text,
                image=prompt.images[0],
                labels=tuple(run.samples[i].labels),
                text=c.text,
                token_ids=c.token_ids,
                sampling_logprobs=c.logprobs,
                truncated=c.finish_reason == "length",  # cut off at max_tokens
            )
            for c in answer.completions
        ]
        groups.append(Group(i, records))
    return groups


def start_run(cfg: ChexrlConfig, run: GRPORun, *, resume: bool) -> RunParts:
    """Start the rollout workers and the learner, restore the latest checkpoint when resuming, and write
    the run's resolved config. The engine serves the learner's base unless `rollout.model` says otherwise."""
    g = cfg.grpo
    router, learner, placement = start_actors(cfg, run)
    parts = RunParts(
        router=router,
        learner=learner,
        client=EvaluatorClient(g.evaluator_url, token=run.evaluator_token, **g.scoring_client.model_dump()),
        cursor=PromptCursor(len(run.samples), seed=g.seed),
        messages=build_messages(run.prompt_name),
        images=[image_bytes(s.image_path) for s in run.samples],
        placement=placement,
    )
    if g.prefilter is not None:  # before step 0, with the starting policy: the cursor runs over the kept
        parts.pool = _prefiltered(cfg, run, parts, resume)
        parts.cursor = PromptCursor(len(parts.pool), seed=g.seed)
    # the newest checkpoint that verifies and loads as data (an older one when the latest is corrupt)
    latest = load_latest(Path(run.run_dir) / "checkpoints") if resume else None
    if latest is not None:
        _, state, meta = latest
        parts.learner.load_state(state)
        parts.cursor = PromptCursor.from_state(meta["cursor"], size=parts.cursor.size)
        parts.start = meta["step"]
        parts.client.put_window(run.run_id, meta["window"])
        log.info("resumed %s at step %d", run.run_id, parts.start)
    else:  # a fresh start: forget whatever an earlier run of the same name left at the evaluator
        parts.client.reset_run(run.run_id)
    if parts.start > 0:
        router.push_adapter(parts.learner.export(parts.start), version=parts.start)
    write_run_config(cfg, run)
    write_placement(run, parts)
    return parts


def start_actors(cfg: ChexrlConfig, run: GRPORun) -> tuple[RolloutRouter, LearnerGroup, Placement]:
    """Reserve the layout's bundles (one per GPU; CPU bundles on a CPU cluster), then start the rollout
    workers and the learner ranks in them. The engine serves the learner's base unless `rollout.model`
    says otherwise."""
    g, sampling = cfg.grpo, cfg.sampling
    rollout_cfg = rollout_config(cfg, run)
    placement = reserve(
        g.layout,
        rollout_cfg.num_workers,
        g.learners,
        timeout_s=g.placement_timeout_s,
        rollout_resource=g.rollout_resource,
        learner_resource=g.learner_resource,
    )
    router = None
    try:
        router = RolloutRouter(rollout_cfg, worker_options=placement.worker_options())
        learner = LearnerGroup(
            run.model_dir,
            g,
            temperature=sampling.temperature,
            max_completion_tokens=sampling.max_tokens,
            options=placement.learner_options(),
        )
    except BaseException:
        if router is not None:
            router.shutdown()
        placement.remove()
        raise
    return router, learner, placement


def rollout_config(cfg: ChexrlConfig, run: GRPORun) -> RolloutConfig:
    """The workers' engine settings: the learner's base unless `rollout.model` says otherwise; in the split
    layout no sleep unless asked for (an engine alone on its GPU gains nothing by freeing it)."""
    rollout_cfg = cfg.rollout or RolloutConfig(model=run.model_dir)
    if cfg.grpo.layout == "split" and rollout_cfg.sleep_between_phases is None:
        rollout_cfg = rollout_cfg.model_copy(update={"sleep_between_phases": False})
    return rollout_cfg


def _prefiltered(cfg: ChexrlConfig, run: GRPORun, parts: RunParts, resume: bool) -> list[int]:
    try:
        return prefilter_pool(cfg, run, parts, resume=resume)
    except BaseException:  # none kept, a stale prefilter.jsonl, a dead worker: do not leave the actors up
        parts.close()
        raise


def _progress(steps, start: int, total: int, show: bool):
    if not show:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc="GRPO", initial=start, total=total)
