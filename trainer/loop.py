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
    # (name, samples) of the held-out in-distribution and the out-of-distribution set: both or neither
    id_eval: tuple[str, list[XraySample]] | None = None
    ood_eval: tuple[str, list[XraySample]] | None = None


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
    gpu_share = colocated_gpu_share(ray.cluster_resources().get("GPU", 0.0))
    router = RolloutRouter(cfg.rollout or RolloutConfig(model=run.model_dir), num_gpus=gpu_share)
    learner = (
        ray.remote(GRPOLearner)
        .options(num_cpus=1, num_gpus=gpu_share)
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
    runlog = RunLog(run.run_dir, resume_step=start if resume else None, completions=g.log_completions)
    write_run_config(cfg, run)
    periodic = _periodic_evaluator(cfg, run, resume_step=start if resume else None)
    if periodic is not None and start == 0:  # the starting (SFT) policy: what the trade-off is measured from
        _log_eval(periodic.evaluate(router, 0, None), progress)
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
                        TrainingExample(
                            group.prompt_text,
                            prompt.images[0],
                            c.token_ids,
                            c.logprobs,
                            truncated=c.finish_reason == "length",
                        )
                    )
            scored = client.score(g.reward, items, run_id=run.run_id, request_id=uuid.uuid4().hex)
            rewards = [s.reward for s in scored]
            t2 = time.perf_counter()
            metrics = ray.get(learner.step.remote(examples, rewards, sampling.n))
            t3 = time.perf_counter()
            adapter = ray.get(learner.export.remote(step + 1))
            router.push_adapter(adapter)
            t4 = time.perf_counter()
            metrics.update(_reward_metrics(scored, examples, sampling.n))
            metrics.update(
                {
                    "time/generation": t1 - t0,
                    "time/scoring": t2 - t1,
                    "time/training": t3 - t2,
                    "time/weight_sync": t4 - t3,
                    "time/step": t4 - t0,
                }
            )
            if periodic is not None and ((step + 1) % g.eval_steps == 0 or step + 1 == g.max_steps):
                metrics.update(_log_eval(periodic.evaluate(router, step + 1, adapter), progress))
                metrics["time/eval"] = time.perf_counter() - t4
            if (step + 1) % g.save_steps == 0 or step + 1 == g.max_steps:
                state = ray.get(learner.state.remote())
                meta = {
                    "cursor": cursor.state(),
                    "window": client.get_window(run.run_id),
                    "run_id": run.run_id,
                }
                save_checkpoint(ckpt_root, step + 1, state, meta)
                metrics["time/checkpoint"] = time.perf_counter() - t4 - metrics.get("time/eval", 0.0)
            runlog.log(step + 1, metrics)
            runlog.log_completions(step + 1, _completion_rows(idx, sampling.n, items, scored, examples))
            history.append({"step": step + 1, **metrics})
        save_adapter_dir(ray.get(learner.export.remote(g.max_steps)), Path(run.run_dir) / "adapter-final")
    finally:
        runlog.close()
        client.close()
        router.shutdown()
        ray.kill(learner)
    return history


def colocated_gpu_share(cluster_gpus: float) -> float:
    """The GPU fraction each rollout worker and the learner request: half a GPU each when the cluster has
    GPUs, so that Ray places one engine and the learner on the same device (the paper's single-A100
    colocation; vLLM's `gpu_memory_utilization` and sleep mode share its memory), none on a CPU cluster."""
    return 0.5 if cluster_gpus >= 1 else 0.0


def write_run_config(cfg: ChexrlConfig, run: GRPORun) -> None:
    """`RUN_DIR/config.yaml`: the resolved configuration this run trains with (the report shows it)."""
    import yaml

    from trainer.checkpoint import atomic_write_text

    data = cfg.model_dump(mode="json")
    data["grpo"].update(model=run.model_dir, run_dir=run.run_dir, run_id=run.run_id, prompt=run.prompt_name)
    atomic_write_text(Path(run.run_dir) / "config.yaml", yaml.safe_dump(data, sort_keys=False))


def _periodic_evaluator(cfg: ChexrlConfig, run: GRPORun, resume_step: int | None):
    if (run.id_eval is None) != (run.ood_eval is None):
        raise ValueError("evaluation during training needs both an in- and an out-of-distribution set")
    if run.id_eval is None:
        return None
    from trainer.periodic_eval import PeriodicEvaluator

    g = cfg.grpo
    return PeriodicEvaluator(
        run.run_dir,
        run.id_eval,
        run.ood_eval,
        prompt_name=run.prompt_name,
        max_tokens=g.eval_max_tokens or cfg.sampling.max_tokens,
        margin=g.tradeoff_margin,
        resume_step=resume_step,
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
    return {
        "eval/id_macro_f1": record["id"]["macro"]["f1"],
        "eval/ood_macro_f1": record["ood"]["macro"]["f1"],
        "eval/id_micro_f1": record["id"]["micro"]["f1"],
        "eval/ood_micro_f1": record["ood"]["micro"]["f1"],
        "eval/id_fail_rate": record["id"]["fail_rate"],
        "eval/ood_fail_rate": record["ood"]["fail_rate"],
    }


def _completion_rows(prompt_idx: list[int], group_size: int, items, scored, examples) -> list[dict]:
    """completions.jsonl rows: the RL sample's index, the text, gold labels, reward and its components."""
    return [
        {
            "sample": prompt_idx[k // group_size],
            "completion": item["completion"],
            "labels": item["labels"],
            "reward": s.reward,
            "components": s.components,
            "valid": s.valid,
            "truncated": e.truncated,
        }
        for k, (item, s, e) in enumerate(zip(items, scored, examples, strict=True))
    ]


def _reward_metrics(scored, examples: list[TrainingExample], group_size: int) -> dict[str, float]:
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
