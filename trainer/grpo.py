"""The GRPO learner: the policy (HF VLM + LoRA adapter), its optimizer, and one Dr. GRPO update per step.

The reference policy is the same model with the adapter disabled: the merged SFT checkpoint the run
starts from (the paper's KL anchor). Old log-probabilities (the importance-ratio denominator) are the
trainer's own, taken before the update: with `num_iterations == 1` the ratio is exactly 1 and only the
KL term and advantages shape the gradient, as in TRL; with more passes the ratio and clipping act. The
engine's sampling log-probs are compared with the trainer's and logged (`rollout/logp_abs_diff`) to
expose engine/trainer mismatch. `loss/entropy` is the token mean of the policy's entropy at the sampling
temperature, taken in the first pass's forward (no extra forward).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from chexrl.config import GRPOConfig
from chexrl.core.grpo import group_advantages, grpo_loss


@dataclass(frozen=True)
class TrainingExample:
    """One completion to learn from: its rendered prompt, image and sampled tokens."""

    prompt_text: str
    image: bytes
    completion_ids: list[int]
    engine_logprobs: list[float]
    truncated: bool = False  # cut off at max_tokens (vLLM finish_reason "length")


class GRPOLearner:
    def __init__(
        self,
        model_dir: str,
        cfg: GRPOConfig,
        *,
        temperature: float,
        max_completion_tokens: int,
        num_threads: int | None = None,
    ) -> None:
        from peft import get_peft_model

        from chexrl.models.loading import load_model, load_processor
        from trainer.lora import language_lora_config

        # Ray sets OMP_NUM_THREADS to an actor's num_cpus (1), so the learner actor would train on one
        # thread while generation (a separate phase of the step) uses every core: take all cores back.
        threads = num_threads or os.cpu_count() or 1
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.temperature = temperature
        self.max_completion_tokens = max_completion_tokens
        self.processor = load_processor(model_dir)
        # Train where the model can see an accelerator (batches are built on the CPU and moved per forward).
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        base = load_model(model_dir, device="cuda" if self.device.type == "cuda" else None)
        self.model = get_peft_model(
            base, language_lora_config(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
        )
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.scheduler = learning_rate_schedule(self.optimizer, cfg)

    # ---- one update ------------------------------------------------------------------------------
    def step(
        self, examples: list[TrainingExample], rewards: list[float], group_size: int
    ) -> dict[str, float]:
        from trainer.collate import build_policy_batch, completion_logprobs

        cfg = self.cfg
        clock = _synchronized_clock
        t_start = clock()
        advantages = group_advantages(
            torch.tensor(rewards, dtype=torch.float32, device=self.device), group_size
        )
        norm = float(len(examples) * self.max_completion_tokens)  # Dr. GRPO's constant divisor
        chunks = [
            list(range(i, min(i + cfg.micro_batch_size, len(examples))))
            for i in range(0, len(examples), cfg.micro_batch_size)
        ]
        batches = [build_policy_batch(self.processor, [examples[i] for i in idx]) for idx in chunks]
        t_collated = clock()
        forward_backward = optimizer = 0.0

        t0 = clock()
        with torch.no_grad():
            ref: list[torch.Tensor] = []
            if cfg.beta:
                with self.model.disable_adapter():  # the reference: the SFT checkpoint without the adapter
                    ref = [completion_logprobs(self.model, b, self.temperature)[0] for b in batches]
            old: list[torch.Tensor] = []
            if cfg.num_iterations > 1:
                self.model.eval()  # dropout off: old log-probs are the policy as it sampled
                old = [completion_logprobs(self.model, b, self.temperature)[0] for b in batches]
                self.model.train()
        forward_backward += clock() - t0

        sums: dict[str, float] = {}
        engine_diff = []
        entropy_sum = entropy_tokens = 0.0
        for iteration in range(cfg.num_iterations):
            for k, (idx, batch) in enumerate(zip(chunks, batches, strict=True)):
                t0 = clock()
                if iteration == 0:  # also the policy's per-token entropy (detached), for the log
                    logp, mask, ent = completion_logprobs(self.model, batch, self.temperature, entropy=True)
                    entropy_sum += float(ent.sum())  # zero where masked
                    entropy_tokens += float(mask.sum())
                else:
                    logp, mask = completion_logprobs(self.model, batch, self.temperature)
                if cfg.mask_truncated_completions:
                    keep = [not examples[i].truncated for i in idx]
                    mask = mask * torch.tensor(keep, dtype=mask.dtype, device=mask.device).unsqueeze(1)
                old_logp = old[k] if old else logp.detach()
                loss, metrics = grpo_loss(
                    logp,
                    old_logp,
                    ref[k] if cfg.beta else None,
                    advantages[idx],
                    mask,
                    clip_low=cfg.epsilon,
                    clip_high=cfg.epsilon_high,
                    beta=cfg.beta,
                    norm_constant=norm,
                )
                loss.backward()
                forward_backward += clock() - t0
                weight = mask.sum().item()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * (1.0 if key.startswith("loss/total") else weight)
                sums["_tokens"] = sums.get("_tokens", 0.0) + weight
                if iteration == 0:
                    engine_diff.append(_engine_mismatch(logp.detach(), mask, [examples[i] for i in idx]))
            t0 = clock()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm
            )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            optimizer += clock() - t0
        learning_rate = self.optimizer.param_groups[0]["lr"]  # the rate this step's updates used
        self.scheduler.step()  # once per GRPO step, whatever num_iterations

        tokens = max(sums.pop("_tokens"), 1.0)
        out = {k: (v / cfg.num_iterations if k == "loss/total" else v / tokens) for k, v in sums.items()}
        # token mean over the completions of the policy's entropy at the sampling temperature (first pass,
        # before the update): a collapsing entropy is the usual sign of a policy losing its exploration
        out["loss/entropy"] = entropy_sum / max(entropy_tokens, 1.0)
        out["loss/grad_norm"] = float(grad_norm)
        out["loss/learning_rate"] = learning_rate
        out["rollout/logp_abs_diff"] = float(np.mean(engine_diff)) if engine_diff else 0.0
        # Wall time inside this call: building the batches (processor), the forward and backward passes
        # (reference, old-policy and policy), and gradient clipping + optimizer step + zero_grad.
        out["time/collate"] = t_collated - t_start
        out["time/forward_backward"] = forward_backward
        out["time/optimizer"] = optimizer
        out["time/learner_step"] = clock() - t_start
        return out

    # ---- adapter and state -----------------------------------------------------------------------
    def export(self, version: int):
        from trainer.lora import export_adapter

        return export_adapter(self.model, version)

    def state(self) -> dict:
        from peft import get_peft_model_state_dict

        return {
            "adapter": {
                k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.model).items()
            },
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }

    def load_state(self, state: dict) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The saved optimizer holds the saved run's current rate. Continue *this* config's schedule (its
        # learning_rate and max_steps, which a resume may extend) from the saved step instead.
        self.scheduler.base_lrs = [self.cfg.learning_rate] * len(self.optimizer.param_groups)
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True):
            group["lr"] = self.cfg.learning_rate * factor(self.scheduler.last_epoch)
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])


def learning_rate_schedule(optimizer: torch.optim.Optimizer, cfg: GRPOConfig):
    """transformers' schedule `cfg.lr_scheduler_type` over `cfg.max_steps` GRPO steps, with a linear warmup
    over `cfg.warmup_ratio` of them (TRL's GRPOTrainer builds the same, per optimizer step)."""
    from transformers import get_scheduler

    warmup = round(cfg.warmup_ratio * cfg.max_steps)
    name = cfg.lr_scheduler_type
    if name == "constant" and warmup:  # transformers' "constant" ignores the warmup
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=cfg.max_steps)


def _synchronized_clock() -> float:
    """perf_counter after the accelerator's queued work has finished (CUDA runs kernels asynchronously,
    so an unsynchronized clock would charge them to whatever waits on them next)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def _engine_mismatch(logp: torch.Tensor, mask: torch.Tensor, examples: list[TrainingExample]) -> float:
    diffs = []
    for row, ex in enumerate(examples):
        n = min(len(ex.engine_logprobs), int(mask[row].sum()))
        if n:
            engine = torch.tensor(ex.engine_logprobs[:n], dtype=logp.dtype, device=logp.device)
            diffs.append((logp[row, :n] - engine).abs().mean().item())
    return float(np.mean(diffs)) if diffs else 0.0
