"""Starting a GRPO run: reserve the layout's placement bundles, start the rollout workers and the
learner ranks in them, open the evaluator client, run the prefilter when configured, and restore the latest
checkpoint when resuming. Returns the `Run` (trainer/run.py) every phase of a step takes."""

from __future__ import annotations

import logging

from chexrl.config import ChexrlConfig, RolloutConfig
from chexrl.core.prompts import build_messages
from chexrl.data.images import image_bytes
from rollout_worker.router import RolloutRouter
from services.evaluator.client import EvaluatorClient
from trainer.checkpoint import load_latest
from trainer.learner_group import LearnerGroup
from trainer.placement import Placement, reserve
from trainer.prefilter import prefilter_pool
from trainer.run import Run, RunData, write_placement, write_run_config
from trainer.sampler import PromptCursor

log = logging.getLogger(__name__)


def start_run(cfg: ChexrlConfig, data: RunData, *, resume: bool, evaluator_token: str | None = None) -> Run:
    """Start the rollout workers and the learner, restore the latest checkpoint when resuming, and write
    the run's resolved config. The engine serves the learner's base unless `rollout.model` says otherwise.
    Whatever fails after the actors are up (the prefilter keeps nothing, a checkpoint will not load, the
    evaluator is unreachable) ends them and frees their bundles before it propagates."""
    g = cfg.grpo
    images = [image_bytes(s.image_path) for s in data.samples]  # an unreadable image fails before any actor
    router, learner, placement = start_actors(cfg)
    run = Run(
        cfg,
        data,
        router=router,
        learner=learner,
        client=EvaluatorClient(g.evaluator_url, token=evaluator_token, **g.scoring_client.model_dump()),
        cursor=PromptCursor(len(data.samples), seed=g.seed),
        messages=build_messages(g.prompt),
        images=images,
        placement=placement,
    )
    try:
        _prepare(run, resume)
    except BaseException:
        run.close()
        raise
    return run


def _prepare(run: Run, resume: bool) -> None:
    """Prefilter, restore or reset, serve the resumed adapter, and write config.yaml and placement.json."""
    g = run.cfg.grpo
    if g.prefilter is not None:  # before step 0, with the starting policy: the cursor runs over the kept
        run.pool = prefilter_pool(run, resume=resume)
        run.cursor = PromptCursor(len(run.pool), seed=g.seed)
    # the newest checkpoint that verifies and loads as data (an older one when the latest is corrupt)
    latest = load_latest(run.run_dir / "checkpoints") if resume else None
    if latest is not None:
        _, state, meta = latest
        run.learner.load_state(state)
        run.cursor = PromptCursor.from_state(meta["cursor"], size=run.cursor.size)
        run.start = meta["step"]
        run.client.put_window(run.run_id, meta["window"])
        log.info("resumed %s at step %d", run.run_id, run.start)
    else:  # a fresh start: forget whatever an earlier run of the same name left at the evaluator
        run.client.reset_run(run.run_id)
    if run.start > 0:
        run.router.push_adapter(run.learner.export(run.start), version=run.start)
    write_run_config(run.cfg)
    write_placement(run)


def start_actors(cfg: ChexrlConfig) -> tuple[RolloutRouter, LearnerGroup, Placement]:
    """Reserve the layout's bundles (one per GPU; CPU bundles on a CPU cluster), then start the rollout
    workers and the learner ranks in them. The engine serves the learner's base unless `rollout.model`
    says otherwise."""
    g, sampling = cfg.grpo, cfg.sampling
    rollout_cfg = rollout_config(cfg)
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
            g.model,
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


def rollout_config(cfg: ChexrlConfig) -> RolloutConfig:
    """The workers' engine settings: the learner's base unless `rollout.model` says otherwise; in the split
    layout no sleep unless asked for (an engine alone on its GPU gains nothing by freeing it)."""
    rollout_cfg = cfg.rollout or RolloutConfig(model=cfg.grpo.model)
    if cfg.grpo.layout == "split" and rollout_cfg.sleep_between_phases is None:
        rollout_cfg = rollout_cfg.model_copy(update={"sleep_between_phases": False})
    return rollout_cfg
