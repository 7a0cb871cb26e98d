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

from chexrl.config import ChexrlConfig
from chexrl.models.adapter_io import save_adapter_dir
from rollout_worker.types import RolloutPrompt
from trainer.engine_gap import EngineGapWatch
from trainer.filtering import StepBatch, collect_groups
from trainer.learner_group import LearnerRankError
from trainer.periodic_eval import log_eval, periodic_evaluator
from trainer.records import CompletionRecord, Group, records_of, reward_metrics, set_scores
from trainer.run import HeldOutSets, PhaseTimer, Run, RunData, save_run_checkpoint, write_placement
from trainer.run_log import RunLog
from trainer.start import start_run

__all__ = ["HeldOutSets", "PhaseTimer", "Run", "RunData", "grpo_step", "run_grpo", "start_run"]

log = logging.getLogger(__name__)


def run_grpo(
    cfg: ChexrlConfig,
    data: RunData,
    *,
    resume: bool = False,
    progress: bool = True,
    evaluator_token: str | None = None,
) -> list[dict]:
    """Train the adapter on `cfg.grpo.model` with `data`; returns the per-step metrics. Needs a connected
    Ray (ray.init) and a running evaluator (`evaluator_token`: its bearer token, when it asks for one).

    A learner rank that dies (trainer/learner_group.py) ends the attempt; the run then resumes from its
    last checkpoint, up to `grpo.learner_restarts` times, as `resume=True` would: the steps after the
    checkpoint are redone once and logged once."""
    if cfg.grpo.model is None:
        raise ValueError("grpo.model must name the policy's base (the merged SFT checkpoint)")
    history: list[dict] = []
    for attempt in range(cfg.grpo.learner_restarts + 1):
        try:
            return _run_attempt(cfg, data, history, resume=resume, progress=progress, token=evaluator_token)
        except LearnerRankError as exc:
            if attempt == cfg.grpo.learner_restarts:
                raise
            log.warning("%s: resuming %s from its last checkpoint", exc, cfg.grpo.resolved_run_id)
            resume = True
    raise AssertionError("unreachable")


def _run_attempt(
    cfg: ChexrlConfig, data: RunData, history: list[dict], *, resume: bool, progress: bool, token: str | None
) -> list[dict]:
    g = cfg.grpo
    run = start_run(cfg, data, resume=resume, evaluator_token=token)
    history[:] = [record for record in history if record["step"] <= run.start]  # the rest is redone
    runlog = None
    try:
        resume_step = run.start if resume else None
        runlog = RunLog(run.run_dir, resume_step=resume_step, completions=g.log_completions)
        periodic = periodic_evaluator(run, resume_step=resume_step)
        if periodic is not None and run.start == 0:  # the starting (SFT) policy: the trade-off's baseline
            log_eval(periodic.evaluate(run.router, 0, None), progress)
        engine_gap = EngineGapWatch(g.engine_logp_diff_warn)
        for step in _progress(range(run.start, g.max_steps), run.start, g.max_steps, progress):
            timer = PhaseTimer()
            with timer("step"):
                metrics, adapter, groups = grpo_step(run, step, timer)
            done = step + 1
            engine_gap.observe(done, metrics)
            if periodic is not None and (done % g.eval_steps == 0 or done == g.max_steps):
                with timer("eval"):
                    weights = run.learner.weights(adapter)
                    metrics.update(log_eval(periodic.evaluate(run.router, done, weights), progress))
            stop = periodic is not None and periodic.stopped  # grpo.stop_when_ood_drops
            if done % g.save_steps == 0 or done == g.max_steps or stop:
                with timer("checkpoint"):
                    save_run_checkpoint(run, done)
            metrics.update(timer.metrics())
            runlog.log(done, metrics)
            runlog.log_completions(done, [r.log_row() for r in records_of(groups)])
            history.append({"step": done, **metrics})
            if stop:
                break
        final = run.learner.weights(run.learner.export(g.max_steps))
        if periodic is not None and periodic.stopped:
            periodic.keep_best_ood(run.run_dir / "adapter-final", final)
        else:
            save_adapter_dir(final, run.run_dir / "adapter-final")
        write_placement(run)  # what each worker serves at the end: the last pushed version
    finally:
        if runlog is not None:
            runlog.close()
        run.close()
    return history


def grpo_step(run: Run, step: int, timer: PhaseTimer):
    """One GRPO step, phase by phase; returns (metrics, the new adapter, every group drawn). With
    `grpo.filter_zero_std_groups` the generation and scoring phases repeat until enough groups have signal
    (trainer/filtering.py); the groups returned are every one drawn, the update uses the kept groups."""
    g = run.cfg.grpo

    def draw(batch: int) -> list[Group]:
        with timer("generation"):
            return generate(run, step, batch)

    def score(groups: list[Group]) -> None:
        with timer("scoring"):
            items = [r.score_item() for r in records_of(groups)]
            set_scores(
                groups, run.client.score(g.reward, items, run_id=run.run_id, request_id=uuid.uuid4().hex)
            )

    batch = collect_groups(
        draw,
        score,
        wanted=g.prompts_per_step,
        max_resample_batches=g.max_resample_batches if g.filter_zero_std_groups else None,
    )
    with timer("sleep"):  # vLLM's weights and KV cache leave the GPU for the update (no-op without sleep)
        run.router.sleep()
    with timer("training"):
        # Dr. GRPO's constant divisor is len(examples) * max_completion_tokens over the examples passed
        # here: with fewer groups kept it is kept_groups * n * max_tokens, so each trained completion's
        # token counts as much as in a full step of groups with signal. Unfiltered, the zero-std groups
        # (zero advantage) only enlarge the divisor and dilute the policy gradient by their share; the
        # filter removes that dilution, which is its point (DAPO), not a change of the loss's scale.
        metrics = _train(run, batch, step)
    with timer("weight_sync"):  # returns at once: the learner exports while the engine wakes
        adapter = run.learner.export(step + 1)
    with timer("wake"):
        run.router.wake_up()
    with timer("weight_sync"):  # waits for the export, then every worker loads it
        run.router.push_adapter(adapter, version=step + 1)
    # measured on every completion drawn, before filtering: the policy's reward and zero-std share
    metrics.update(reward_metrics(batch.drawn))
    metrics.update(batch.metrics)
    return metrics, adapter, batch.drawn


def _train(run: Run, batch: StepBatch, step: int) -> dict:
    if batch.train:
        records = records_of(batch.train)
        examples = [r.training_example() for r in records]
        return run.learner.step(examples, [r.reward for r in records], run.cfg.sampling.n)
    # no group with signal (filter on, resample budget spent): no update, the step still counts, and the
    # unchanged adapter is exported and pushed as this step's version; the learning-rate schedule, which
    # the learner advances per update, does not advance
    log.warning(
        "step %d: no group with signal after %s extra rollout batches: update skipped",
        step + 1,
        int(batch.metrics.get("filter/resample_batches", 0)),
    )
    return {}


def generate(run: Run, step: int, batch: int = 0) -> list[Group]:
    """Draw a rollout batch of prompts (the step's first, or a resample when filtering) and sample a group
    of completions for each. The cursor runs over `run.pool` (the prefilter's kept images) when set."""
    idx = run.cursor.take(run.cfg.grpo.prompts_per_step)
    if run.pool is not None:
        idx = [run.pool[j] for j in idx]
    tag = f"{step}" if batch == 0 else f"{step}.{batch}"
    prompts = [RolloutPrompt(f"{tag}:{i}", run.messages, [run.images[i]]) for i in idx]
    answers = run.router.generate(prompts, run.cfg.sampling)  # retried by Ray if a worker dies
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


def _progress(steps, start: int, total: int, show: bool):
    if not show:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc="GRPO", initial=start, total=total)
