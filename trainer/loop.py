"""The GRPO controller: one loop, one screen. Each step: draw prompts -> rollouts (vLLM actor) -> rewards
(evaluator /score over HTTP) -> Dr. GRPO update (trainer actor) -> push the adapter to every worker.

Resumable: every `save_steps` the learner state, the prompt cursor, the adapter version and the
evaluator's nuanced-reward window for this run are checkpointed atomically (trainer/checkpoint.py);
`resume=True` continues with the same step numbers and prompt order.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray

from chexrl.config import ChexrlConfig, RolloutConfig
from chexrl.core.prompts import DEFAULT_PROMPT, build_messages
from chexrl.core.samples import XraySample
from rollout_worker.router import RolloutRouter
from rollout_worker.types import RolloutPrompt
from trainer.adapter_io import save_adapter_dir
from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.grpo import GRPOLearner, TrainingExample
from trainer.run_log import RunLog
from trainer.sampler import PromptCursor
from trainer.score_client import EvaluatorClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GRPORun:
    model_dir: str  # the policy's base: the merged SFT checkpoint (also the KL reference)
    samples: list[XraySample]  # the RL set
    run_dir: str
    run_id: str  # names the run at the evaluator (its nuanced-reward window)
    prompt_name: str = DEFAULT_PROMPT
    evaluator_token: str | None = None


def image_bytes(path: str, max_side: int = 1024) -> bytes:
    """PNG bytes of the image, resized so its longer side is at most `max_side` (the processor resizes
    further to the model's visual-token budget)."""
    from chexrl.data.images import open_image

    img = open_image(path)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def run_grpo(cfg: ChexrlConfig, run: GRPORun, *, resume: bool = False, progress: bool = True) -> list[dict]:
    """Train; returns the per-step metrics. Needs a connected Ray (ray.init) and a running evaluator."""
    g, sampling = cfg.grpo, cfg.sampling
    messages = build_messages(run.prompt_name)
    images = [image_bytes(s.image_path) for s in run.samples]
    # The engine serves the same base the learner trains on, unless the config points it elsewhere.
    router = RolloutRouter(cfg.rollout or RolloutConfig(model=run.model_dir))
    learner = (
        ray.remote(GRPOLearner)
        .options(num_cpus=1)
        .remote(run.model_dir, g, temperature=sampling.temperature, max_completion_tokens=sampling.max_tokens)
    )
    client = EvaluatorClient(g.evaluator_url, token=run.evaluator_token)
    ckpt_root = Path(run.run_dir) / "checkpoints"
    cursor, start = PromptCursor(len(run.samples), seed=g.seed), 0
    latest = latest_checkpoint(ckpt_root) if resume else None
    if latest is not None:
        state, meta = load_checkpoint(latest)
        ray.get(learner.load_state.remote(state))
        cursor, start = PromptCursor.from_state(meta["cursor"]), meta["step"]
        client.put_window(run.run_id, meta["window"])
        log.info("resumed %s at step %d", run.run_id, start)
    if start > 0:
        router.push_adapter(ray.get(learner.export.remote(start)))
    runlog = RunLog(run.run_dir, resume_step=start if resume else None)
    history = []
    steps = range(start, g.max_steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="GRPO", initial=start, total=g.max_steps)
    try:
        for step in steps:
            t0 = time.perf_counter()
            idx = cursor.take(g.prompts_per_step)
            prompts = [RolloutPrompt(f"{step}:{i}", messages, [images[i]]) for i in idx]
            groups = router.generate(prompts, sampling)  # retried by Ray if a worker dies
            t1 = time.perf_counter()
            golds = [run.samples[i].labels for i in idx]
            items, examples = [], []
            for gold, group, prompt in zip(golds, groups, prompts, strict=True):
                if group.error:
                    raise RuntimeError(f"rollout failed for {group.prompt_id}: {group.error}")
                for c in group.completions:
                    items.append({"completion": c.text, "labels": list(gold), "num_tokens": len(c.token_ids)})
                    examples.append(
                        TrainingExample(group.prompt_text, prompt.images[0], c.token_ids, c.logprobs)
                    )
            scored = client.score(g.reward, items, run_id=run.run_id, request_id=uuid.uuid4().hex)
            rewards = [s.reward for s in scored]
            t2 = time.perf_counter()
            metrics = ray.get(learner.step.remote(examples, rewards, sampling.n))
            t3 = time.perf_counter()
            router.push_adapter(ray.get(learner.export.remote(step + 1)))
            t4 = time.perf_counter()
            metrics.update(_reward_metrics(scored, examples))
            metrics.update(
                {
                    "time/generation": t1 - t0,
                    "time/scoring": t2 - t1,
                    "time/training": t3 - t2,
                    "time/weight_sync": t4 - t3,
                    "time/step": t4 - t0,
                }
            )
            if (step + 1) % g.save_steps == 0 or step + 1 == g.max_steps:
                state = ray.get(learner.state.remote())
                meta = {
                    "cursor": cursor.state(),
                    "window": client.get_window(run.run_id),
                    "run_id": run.run_id,
                }
                save_checkpoint(ckpt_root, step + 1, state, meta)
                metrics["time/checkpoint"] = time.perf_counter() - t4
            runlog.log(step + 1, metrics)
            history.append({"step": step + 1, **metrics})
        save_adapter_dir(ray.get(learner.export.remote(g.max_steps)), Path(run.run_dir) / "adapter-final")
    finally:
        runlog.close()
        client.close()
        router.shutdown()
        ray.kill(learner)
    return history


def _reward_metrics(scored, examples: list[TrainingExample]) -> dict[str, float]:
    n = len(scored)
    out = {
        "reward/total": sum(s.reward for s in scored) / n,
        "reward/valid_fraction": sum(s.valid for s in scored) / n,
        "completion/length": sum(len(e.completion_ids) for e in examples) / n,
    }
    for key in scored[0].components:
        out[f"reward/{key}"] = sum(s.components[key] for s in scored) / n
    return out
