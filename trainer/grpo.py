"""The GRPO learner: the policy (HF VLM + LoRA adapter), its optimizer, and one Dr. GRPO update per step.

The reference policy is the same model with the adapter disabled: the merged SFT checkpoint the run
starts from (the paper's KL anchor). Old log-probabilities (the importance-ratio denominator) are the
trainer's own, taken before the update: with `num_iterations == 1` the ratio is exactly 1 and only the
KL term and advantages shape the gradient, as in TRL; with more passes the ratio and clipping act. The
engine's sampling log-probs are compared with the trainer's and logged (`rollout/logp_abs_diff`) to
expose engine/trainer mismatch.
"""

from __future__ import annotations

import random
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


class GRPOLearner:
    def __init__(
        self, model_dir: str, cfg: GRPOConfig, *, temperature: float, max_completion_tokens: int
    ) -> None:
        from peft import get_peft_model

        from chexrl.models.loading import load_model, load_processor
        from trainer.lora import language_lora_config

        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.temperature = temperature
        self.max_completion_tokens = max_completion_tokens
        self.processor = load_processor(model_dir)
        base = load_model(model_dir)
        self.model = get_peft_model(
            base, language_lora_config(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
        )
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    # ---- one update ------------------------------------------------------------------------------
    def step(
        self, examples: list[TrainingExample], rewards: list[float], group_size: int
    ) -> dict[str, float]:
        from trainer.collate import build_policy_batch, completion_logprobs

        cfg = self.cfg
        advantages = group_advantages(torch.tensor(rewards, dtype=torch.float32), group_size)
        norm = float(len(examples) * self.max_completion_tokens)  # Dr. GRPO's constant divisor
        chunks = [
            list(range(i, min(i + cfg.micro_batch_size, len(examples))))
            for i in range(0, len(examples), cfg.micro_batch_size)
        ]
        batches = [build_policy_batch(self.processor, [examples[i] for i in idx]) for idx in chunks]

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

        sums: dict[str, float] = {}
        engine_diff = []
        for iteration in range(cfg.num_iterations):
            for k, (idx, batch) in enumerate(zip(chunks, batches, strict=True)):
                logp, mask = completion_logprobs(self.model, batch, self.temperature)
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
                weight = mask.sum().item()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * (1.0 if key.startswith("loss/total") else weight)
                sums["_tokens"] = sums.get("_tokens", 0.0) + weight
                if iteration == 0:
                    engine_diff.append(_engine_mismatch(logp.detach(), mask, [examples[i] for i in idx]))
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm
            )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        tokens = max(sums.pop("_tokens"), 1.0)
        out = {k: (v / cfg.num_iterations if k == "loss/total" else v / tokens) for k, v in sums.items()}
        out["loss/grad_norm"] = float(grad_norm)
        out["loss/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        out["rollout/logp_abs_diff"] = float(np.mean(engine_diff)) if engine_diff else 0.0
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
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])


def _engine_mismatch(logp: torch.Tensor, mask: torch.Tensor, examples: list[TrainingExample]) -> float:
    diffs = []
    for row, ex in enumerate(examples):
        n = min(len(ex.engine_logprobs), int(mask[row].sum()))
        if n:
            engine = torch.tensor(ex.engine_logprobs[:n], dtype=logp.dtype)
            diffs.append((logp[row, :n] - engine).abs().mean().item())
    return float(np.mean(diffs)) if diffs else 0.0
