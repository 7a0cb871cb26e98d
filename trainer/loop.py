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
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chexrl.config import ChexrlConfig, RolloutConfig
from chexrl.core.prompts import DEFAULT_PROMPT, build_messages
from chexrl.core.samples import XraySample
from chexrl.core.scoring import ScoredCompletion
from chexrl.data.images import image_bytes
from chexrl.models.adapter_io import save_adapter_dir
from chexrl.run_files import atomic_write_text
from rollout_worker.router import RolloutRouter
from rollout_worker.types import RolloutPrompt
from services.evaluator.client import EvaluatorClient
from trainer.checkpoint import load_latest, save_checkpoint
from trainer.filtering import collect_groups
from trainer.grpo import TrainingExample
from trainer.learner_group import LearnerGroup, LearnerRankError
from trainer.periodic_eval import PeriodicEvaluator, eval_scalars
from trainer.placement import Placement, reserve
from trainer.prefilter import prefilter_pool
from trainer.run_log import RunLog
from trainer.sampler import PromptCursor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GRPORun:
    model_dir: str  # the policy's base: the merged SFT checkpoint (also the KL reference)
    samples: list[XraySample]  # the RL set
    run_dir: str
    run_id: str  # names the run at the evaluator (its nuanced-reward window)
    prompt_name: str = DEFAULT_PROMPT
    evaluator_token: str | None = None
    # (name, samples) of the held-out in-distribution and the out-of-distribution set: both or neither
    id_eval: tuple[str, list[XraySample]] | None = None
    ood_eval: tuple[str, list[XraySample]] | None = None

    def __post_init__(self) -> None:
        # the run-object twin of GRPOConfig's check on grpo.eval_id_data / eval_ood_data (the demo and
        # tests build runs without a config file)
        if (self.id_eval is None) != (self.ood_eval is None):
            raise ValueError("evaluation during training needs both an in- and an out-of-distribution set")


@dataclass
class RunParts:
    """What a run holds besides its config: the actors and clients, and where it stands."""

    router: RolloutRouter
    learner: LearnerGroup  # one learner actor, or grpo.learners data-parallel ranks
    client: EvaluatorClient
    cursor: PromptCursor
    messages: list[dict]
    images: list[bytes]  # the RL set's images as prompts carry them, by sample index
    start: int = 0  # the step the run starts from (0, or the resumed checkpoint's)
    # the sample indices the cursor draws (the prefilter's kept images, trainer/prefilter.py); None: all
    pool: list[int] | None = None
    placement: Placement | None = None  # the bundles the actors run in (trainer/placement.py)

    def close(self) -> None:
        self.client.close()
        self.router.shutdown()
        self.learner.close()
        if self.placement is not None:
            self.placement.remove()


@dataclass
class StepRollouts:
    """One step's sampled completions, flattened prompt-major (a group's completions are contiguous)."""

    prompt_idx: list[int]
    items: list[dict]  # /score items: completion text, gold labels, token count
    examples: list[TrainingExample]


@dataclass
class PhaseTimer:
    """Wall time per named phase of a step (`time/<phase>`); a phase entered twice adds up."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()}


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
        periodic = _periodic_evaluator(cfg, run, resume_step=resume_step)
        if periodic is not None and parts.start == 0:  # the starting (SFT) policy: the trade-off's baseline
            _log_eval(periodic.evaluate(parts.router, 0, None), progress)
        for step in _progress(range(parts.start, g.max_steps), parts.start, g.max_steps, progress):
            timer = PhaseTimer()
            with timer("step"):
                metrics, adapter, rollouts, scored = grpo_step(cfg, run, parts, step, timer)
            done = step + 1
            if periodic is not None and (done % g.eval_steps == 0 or done == g.max_steps):
                with timer("eval"):
                    weights = parts.learner.weights(adapter)
                    metrics.update(_log_eval(periodic.evaluate(parts.router, done, weights), progress))
            if done % g.save_steps == 0 or done == g.max_steps:
                with timer("checkpoint"):
                    _save(cfg, run, parts, done)
            metrics.update(timer.metrics())
            runlog.log(done, metrics)
            runlog.log_completions(done, _completion_rows(rollouts, cfg.sampling.n, scored))
            history.append({"step": done, **metrics})
        final = parts.learner.weights(parts.learner.export(g.max_steps))
        save_adapter_dir(final, Path(run.run_dir) / "adapter-final")
    finally:
        if runlog is not None:
            runlog.close()
        parts.close()
    return history


def grpo_step(cfg: ChexrlConfig, run: GRPORun, parts: RunParts, step: int, timer: PhaseTimer):
    """One GRPO step, phase by phase; returns (metrics, the new adapter, the rollouts, their scores). With
    `grpo.filter_zero_std_groups` the generation and scoring phases repeat until enough groups have signal
    (trainer/filtering.py); the rollouts returned are every one drawn, the update uses the kept groups."""
    g, n = cfg.grpo, cfg.sampling.n

    def draw(batch: int) -> StepRollouts:
        with timer("generation"):
            return generate(parts, run, cfg, step, batch)

    def score(rollouts: StepRollouts):
        with timer("scoring"):
            return parts.client.score(
                g.reward, rollouts.items, run_id=run.run_id, request_id=uuid.uuid4().hex
            )

    batch = collect_groups(
        draw,
        score,
        group_size=n,
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
        metrics = _train(parts, batch, n, step)
    with timer("weight_sync"):  # returns at once: the learner exports while the engine wakes
        adapter = parts.learner.export(step + 1)
    with timer("wake"):
        parts.router.wake_up()
    with timer("weight_sync"):  # waits for the export, then every worker loads it
        parts.router.push_adapter(adapter, version=step + 1)
    # measured on every completion drawn, before filtering: the policy's reward and zero-std share
    metrics.update(_reward_metrics(batch.scored, batch.drawn.examples, n))
    metrics.update(batch.metrics)
    return metrics, adapter, batch.drawn, batch.scored


def _train(parts: RunParts, batch, group_size: int, step: int) -> dict:
    if batch.train.examples:
        return parts.learner.step(batch.train.examples, batch.train_rewards, group_size)
    # no group with signal (filter on, resample budget spent): no update, the step still counts, and the
    # unchanged adapter is exported and pushed as this step's version; the learning-rate schedule, which
    # the learner advances per update, does not advance
    log.warning(
        "step %d: no group with signal after %s extra rollout batches: update skipped",
        step + 1,
        int(batch.metrics.get("filter/resample_batches", 0)),
    )
    return {}


def generate(parts: RunParts, run: GRPORun, cfg: ChexrlConfig, step: int, batch: int = 0) -> StepRollouts:
    """Draw a rollout batch of prompts (the step's first, or a resample when filtering) and sample a group
    of completions for each. The cursor runs over `parts.pool` (the prefilter's kept images) when set."""
    idx = parts.cursor.take(cfg.grpo.prompts_per_step)
    if parts.pool is not None:
        idx = [parts.pool[j] for j in idx]
    tag = f"{step}" if batch == 0 else f"{step}.{batch}"
    prompts = [RolloutPrompt(f"{tag}:{i}", parts.messages, [parts.images[i]]) for i in idx]
    groups = parts.router.generate(prompts, cfg.sampling)  # retried by Ray if a worker dies
    items, examples = [], []
    for i, group, prompt in zip(idx, groups, prompts, strict=True):
        if group.error:
            raise RuntimeError(f"rollout failed for {group.prompt_id}: {group.error}")
        for c in group.completions:
            items.append(
                {"completion": c.text, "labels": list(run.samples[i].labels), "num_tokens": len(c.token_ids)}
            )
            truncated = c.finish_reason == "length"  # cut off at max_tokens
            examples.append(
                TrainingExample(
                    group.prompt_text, prompt.images[0], c.token_ids, c.logprobs, truncated=truncated
                )
            )
    return StepRollouts(idx, items, examples)


def start_run(cfg: ChexrlConfig, run: GRPORun, *, resume: bool) -> RunParts:
    """Start the rollout workers and the learner, restore the latest checkpoint when resuming, and write
    the run's resolved config. The engine serves the learner's base unless `rollout.model` says otherwise."""
    g = cfg.grpo
    router, learner, placement = start_actors(cfg, run)
    parts = RunParts(
        router=router,
        learner=learner,
        client=EvaluatorClient(g.evaluator_url, token=run.evaluator_token),
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
    return parts


def start_actors(cfg: ChexrlConfig, run: GRPORun) -> tuple[RolloutRouter, LearnerGroup, Placement]:
    """Reserve the layout's bundles (one per GPU; CPU bundles on a CPU cluster), then start the rollout
    workers and the learner ranks in them. The engine serves the learner's base unless `rollout.model`
    says otherwise."""
    g, sampling = cfg.grpo, cfg.sampling
    rollout_cfg = cfg.rollout or RolloutConfig(model=run.model_dir)
    placement = reserve(g.layout, rollout_cfg.num_workers, g.learners, timeout_s=g.placement_timeout_s)
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


def _prefiltered(cfg: ChexrlConfig, run: GRPORun, parts: RunParts, resume: bool) -> list[int]:
    try:
        return prefilter_pool(cfg, run, parts, resume=resume)
    except BaseException:  # none kept, a stale prefilter.jsonl, a dead worker: do not leave the actors up
        parts.close()
        raise


def write_run_config(cfg: ChexrlConfig, run: GRPORun) -> None:
    """`RUN_DIR/config.yaml`: the resolved configuration this run trains with (the report shows it)."""
    import yaml

    data = cfg.model_dump(mode="json")
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    data["grpo"].update(model=run.model_dir, run_dir=run.run_dir, run_id=run.run_id, prompt=run.prompt_name)
    atomic_write_text(Path(run.run_dir) / "config.yaml", yaml.safe_dump(data, sort_keys=False))


def _save(cfg: ChexrlConfig, run: GRPORun, parts: RunParts, step: int) -> None:
    meta = {
        "cursor": parts.cursor.state(),
        "window": parts.client.get_window(run.run_id),
        "run_id": run.run_id,
    }
    save_checkpoint(Path(run.run_dir) / "checkpoints", step, parts.learner.state(), meta)


def _progress(steps, start: int, total: int, show: bool):
    if not show:
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc="GRPO", initial=start, total=total)


def _periodic_evaluator(cfg: ChexrlConfig, run: GRPORun, resume_step: int | None):
    if run.id_eval is None:
        return None
    g = cfg.grpo
    return PeriodicEvaluator(
        run.run_dir,
        run.id_eval,
        run.ood_eval,
        prompt_name=run.prompt_name,
        max_tokens=g.eval_max_tokens or cfg.sampling.max_tokens,
        margin=g.tradeoff_margin,
        resume_step=resume_step,
        samples=g.eval_samples,
        sampling=cfg.sampling,
    )


def _log_eval(record: dict, progress: bool) -> dict[str, float]:
    """Scalars for the run log; the trade-off warning printed where the user is looking."""
    for warning in record["warnings"]:
        text = f"\033[1;31mWARNING step {record['step']}: {warning}\033[0m"
        if progress:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            log.warning(text)
    return eval_scalars(record)


def _completion_rows(rollouts: StepRollouts, group_size: int, scored: list[ScoredCompletion]) -> list[dict]:
    """completions.jsonl rows: the RL sample's index, the text, gold labels, reward and its components."""
    return [
        {
            "sample": rollouts.prompt_idx[k // group_size],
            "completion": item["completion"],
            "labels": item["labels"],
            "reward": s.reward,
            "components": s.components,
            "valid": s.valid,
            "truncated": e.truncated,
        }
        for k, (item, s, e) in enumerate(zip(rollouts.items, scored, rollouts.examples, strict=True))
    ]


def _reward_metrics(
    scored: list[ScoredCompletion], examples: list[TrainingExample], group_size: int
) -> dict[str, float]:
    n = len(scored)
    groups = [scored[i : i + group_size] for i in range(0, n, group_size)]
    out = {
        # groups whose samples all scored the same: zero advantages, nothing to learn from (TRL's
        # frac_reward_zero_std); a high share says the reward cannot tell this policy's samples apart
        "advantage/zero_std_fraction": sum(len({s.reward for s in g}) == 1 for g in groups) / len(groups),
        "reward/total": sum(s.reward for s in scored) / n,
        "reward/valid_fraction": sum(s.valid for s in scored) / n,
        "completion/length": sum(len(e.completion_ids) for e in examples) / n,
        "completion/truncated_fraction": sum(e.truncated for e in examples) / n,
    }
    for key in scored[0].components:
        out[f"reward/{key}"] = sum(s.components[key] for s in scored) / n
    return out
