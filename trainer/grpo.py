"""The GRPO learner: the policy (HF VLM + LoRA adapter), its optimizer, and one Dr. GRPO update per step.

The reference policy is the same model with the adapter disabled: the merged SFT checkpoint the run
starts from (the paper's KL anchor). Old log-probabilities (the importance-ratio denominator) are the
trainer's own, taken before the update: with `num_iterations == 1` the ratio is exactly 1 and only the
KL term and advantages shape the gradient, as in TRL; with more passes the ratio and clipping act. The
engine's log-probs of the sampled tokens are compared with the trainer's on the same distribution (the
model's own, temperature 1) and logged (`rollout/logp_abs_diff`, mean and p99 per completion token) to
expose an engine that serves another policy than the one trained (`trainer.engine_gap`). `policy/entropy` is the token mean of the policy's entropy at the sampling
temperature, taken in the first pass's forward (no extra forward).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from chexrl.config import GRPOConfig
from chexrl.core.grpo import group_advantages, grpo_loss, reduce_micro_batch_metrics
from chexrl.models.loading import load_model, load_processor
from trainer.collate import build_policy_batch, completion_logprobs

if TYPE_CHECKING:
    from trainer.ranks import RankGroup


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
        cuda = self.device.type == "cuda"
        # The checkpoint's dtype on CUDA (bf16 for both published models); fp32 on the CPU, as for SFT
        # (trainer.sft.base_dtype): without AVX512-BF16 or AMX, the CPU's bf16 matmul in a backward runs
        # two orders of magnitude slower than fp32 (~0.2 against ~50 GMAC/s on an AVX2 core).
        base = load_model(model_dir, dtype=None if cuda else torch.float32, device="cuda" if cuda else None)
        self.model = get_peft_model(
            base, language_lora_config(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
        )
        if cfg.gradient_checkpointing:
            # Recompute each decoder layer's activations in the backward instead of keeping them: at
            # MedGemma-4B's size they, not the weights, are what a 32-completion step would not fit in.
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.scheduler = learning_rate_schedule(self.optimizer, cfg)
        # data-parallel ranks (trainer/learner_group.py); None: the only learner, no collective at all
        self.ranks: RankGroup | None = None

    def join_ranks(self, rank: int, world_size: int, address: str, timeout_s: float) -> int:
        """Join the learner ranks' process group at rank 0's `address`, and take rank 0's adapter."""
        from trainer.ranks import RankGroup

        self.ranks = RankGroup(rank, world_size, address, timeout_s=timeout_s)
        self.ranks.broadcast_parameters([p for p in self.model.parameters() if p.requires_grad])
        return rank

    # ---- one update ------------------------------------------------------------------------------
    def step(
        self,
        examples: list[TrainingExample],
        rewards: list[float],
        group_size: int,
        total_examples: int | None = None,
    ) -> dict[str, float]:
        """One Dr. GRPO update on a step's completions (grouped contiguously, `group_size` per prompt):
        the fixed log-probs (reference, old policy), then `num_iterations` passes of forward/backward
        over the micro-batches, each ending in one optimizer step; the scheduler steps once.

        As one of several ranks, `examples` is this rank's share of whole groups and `total_examples` the
        step's count over all ranks (Dr. GRPO's divisor); gradients are summed over the ranks before each
        optimizer step and the metrics are those of the whole step."""
        cfg, clock = self.cfg, _synchronized_clock
        t_start = clock()
        advantages = self._advantages(rewards, group_size)
        num_examples = len(examples) if total_examples is None else total_examples
        chunks = _micro_batch_indices(len(examples), cfg.micro_batch_size)
        batches = [build_policy_batch(self.processor, [examples[i] for i in idx]) for idx in chunks]
        t_collated = clock()
        ref, old = self._fixed_logps(batches)
        timing = {"time/collate": t_collated - t_start, "time/forward_backward": clock() - t_collated}
        timing["time/optimizer"] = 0.0
        passes, first_pass = [], None
        for iteration in range(cfg.num_iterations):
            t0 = clock()
            parts = [
                self._policy_backward(
                    batch,
                    [examples[i] for i in idx],
                    advantages[idx],
                    ref[k] if ref else None,
                    old[k] if old else None,
                    first_pass=iteration == 0,
                    num_examples=num_examples,
                )
                for k, (idx, batch) in enumerate(zip(chunks, batches, strict=True))
            ]
            if self.ranks is not None:  # the whole step's micro-batches, in rank order, on every rank
                parts = self.ranks.gather(parts)
            first_pass = first_pass or parts
            t1 = clock()
            grad_norm = self._optimizer_step()
            timing["time/forward_backward"] += t1 - t0
            timing["time/optimizer"] += clock() - t1
            passes.append(reduce_micro_batch_metrics([p["metrics"] for p in parts]))
        learning_rate = self.optimizer.param_groups[0]["lr"]  # the rate this step's updates used
        self.scheduler.step()  # once per GRPO step, whatever num_iterations
        out = {k: sum(p[k] for p in passes) / len(passes) for k in passes[0]}
        out |= _first_pass_metrics(first_pass)
        out |= {"optim/grad_norm": grad_norm, "optim/learning_rate": learning_rate}
        # Wall time inside this call: building the batches (processor), the forward and backward passes
        # (reference, old-policy and policy), and gradient clipping + optimizer step + zero_grad.
        out |= timing | {"time/learner_step": clock() - t_start}
        if self.device.type == "cuda":
            # Return the step's freed activations to the device, or PyTorch's cache keeps them reserved
            # and the rollout engine, waking next on the same GPU, finds its memory taken.
            torch.cuda.empty_cache()
        return out

    def _advantages(self, rewards: list[float], group_size: int) -> torch.Tensor:
        if not rewards:  # a rank with no group this step: it still joins the step's collectives
            return torch.zeros(0, device=self.device)
        return group_advantages(torch.tensor(rewards, dtype=torch.float32, device=self.device), group_size)

    def _logprobs(self, batch, *, entropy: bool = False, model_logprobs: bool = False):
        return completion_logprobs(
            self.model,
            batch,
            self.temperature,
            entropy=entropy,
            model_logprobs=model_logprobs,
            chunk_tokens=self.cfg.logprob_chunk_tokens,
        )

    @torch.no_grad()
    def _fixed_logps(self, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per micro-batch: the reference's log-probs (the SFT checkpoint: adapter disabled; none when
        beta is 0) and the old policy's (only with several passes; with one they equal the policy's)."""
        ref: list[torch.Tensor] = []
        if self.cfg.beta:
            with self.model.disable_adapter():
                ref = [self._logprobs(b)[0] for b in batches]
        old: list[torch.Tensor] = []
        if self.cfg.num_iterations > 1:
            self.model.eval()  # dropout off: old log-probs are the policy as it sampled
            old = [self._logprobs(b)[0] for b in batches]
            self.model.train()
        return ref, old

    def _policy_backward(
        self, batch, examples, advantages, ref_logp, old_logp, *, first_pass: bool, num_examples: int
    ) -> dict:
        """Forward and backward of one micro-batch; its loss metrics, and on the first pass the entropy
        sum and the engine/learner log-prob gap (both detached)."""
        cfg = self.cfg
        if first_pass:
            logp, mask, ent, model_logp = self._logprobs(batch, entropy=True, model_logprobs=True)
            entropy_tokens = float(mask.sum())  # every sampled token, truncated completions included
        else:
            logp, mask = self._logprobs(batch)
        if cfg.mask_truncated_completions:
            keep = torch.tensor([not ex.truncated for ex in examples], dtype=mask.dtype, device=mask.device)
            mask = mask * keep.unsqueeze(1)
        loss, metrics = grpo_loss(
            logp,
            old_logp if old_logp is not None else logp.detach(),
            ref_logp,
            advantages,
            mask,
            clip_low=cfg.epsilon,
            clip_high=cfg.epsilon_high,
            beta=cfg.beta,
            norm_constant=float(num_examples * self.max_completion_tokens),  # Dr. GRPO's constant divisor
        )
        loss.backward()
        out: dict = {"metrics": (metrics, float(mask.sum()))}
        if first_pass:
            out["entropy_sum"], out["tokens"] = float(ent.sum()), entropy_tokens  # ent: zero where padded
            out["engine_diffs"] = engine_logp_gaps(model_logp, mask, examples)
        return out

    def _optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.ranks is not None:  # the whole batch's gradient on every rank, clipped alike
            self.ranks.sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    # ---- adapter and state -----------------------------------------------------------------------
    def export(self, version: int):
        from trainer.lora import export_adapter

        adapter = export_adapter(self.model, version)
        return replace(adapter, tensors=to_cpu(adapter.tensors))

    def state(self) -> dict:
        """Tensors and plain data only: checkpoints load with torch.load(weights_only=True), which refuses
        numpy arrays, so the RNG states are stored as tensors."""
        from peft import get_peft_model_state_dict

        version, internal, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        rng = {
            "python": {
                "version": version,
                "state": torch.tensor(internal, dtype=torch.int64),
                "gauss": gauss,
            },
            "numpy": {
                "name": np_name,
                "keys": torch.from_numpy(np_keys.astype(np.int64)),
                "pos": int(np_pos),
                "has_gauss": int(np_has_gauss),
                "gauss": float(np_gauss),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        # Everything to CPU memory (AdamW's moments live beside the weights, on the GPU): the driver that
        # receives this may have no GPU (a KubeRay head), and on one machine it would open a CUDA context
        # of its own to unpickle them.
        return to_cpu(
            {
                "adapter": get_peft_model_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
            }
        )

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
        rng = state["rng"]
        py = rng["python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
        npr = rng["numpy"]
        keys = npr["keys"].numpy().astype(np.uint32)
        np.random.set_state((npr["name"], keys, npr["pos"], npr["has_gauss"], npr["gauss"]))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def to_cpu(value):
    """`value` with every tensor inside it (in dicts, lists, tuples) detached and copied to CPU memory;
    everything else as it is. A tensor already on the CPU is cloned too: what leaves the learner never
    shares storage with its live state."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def off_cpu_tensors(value, where: str = "") -> list[str]:
    """Where in `value` (dicts, lists, tuples, dataclass fields) a tensor is not on the CPU: their paths."""
    if isinstance(value, torch.Tensor):
        return [] if value.device.type == "cpu" else [f"{where or '.'} ({value.device})"]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif hasattr(value, "__dataclass_fields__"):
        items = ((f, getattr(value, f)) for f in value.__dataclass_fields__)
    else:
        return []
    return [p for k, v in items for p in off_cpu_tensors(v, f"{where}/{k}")]


def learning_rate_schedule(optimizer: torch.optim.Optimizer, cfg: GRPOConfig):
    """transformers' schedule `cfg.lr_scheduler_type` over `cfg.max_steps` GRPO steps, with a linear warmup
    over `cfg.warmup_ratio` of them (TRL's GRPOTrainer builds the same, per optimizer step)."""
    from transformers import get_scheduler

    warmup = round(cfg.warmup_ratio * cfg.max_steps)
    name = cfg.lr_scheduler_type
    if name == "constant" and warmup:  # transformers' "constant" ignores the warmup
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=cfg.max_steps)


def _micro_batch_indices(count: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, count))) for i in range(0, count, size)]


def _first_pass_metrics(parts: list[dict]) -> dict[str, float]:
    """From the first pass's micro-batches (before any update): the token mean over the completions of
    the policy's entropy at the sampling temperature (a collapsing entropy is the usual sign of a policy
    losing its exploration), and the mean and 99th percentile over the completion tokens of |delta log p|
    between the engine and the learner (`engine_logp_gaps`)."""
    tokens = sum(p["tokens"] for p in parts)
    gaps = torch.cat([p["engine_diffs"] for p in parts])
    return {
        "policy/entropy": sum(p["entropy_sum"] for p in parts) / max(tokens, 1.0),
        "rollout/logp_abs_diff": float(gaps.mean()) if gaps.numel() else 0.0,
        "rollout/logp_abs_diff_p99": float(torch.quantile(gaps, 0.99)) if gaps.numel() else 0.0,
    }


def _synchronized_clock() -> float:
    """perf_counter after the accelerator's queued work has finished (CUDA runs kernels asynchronously,
    so an unsynchronized clock would charge them to whatever waits on them next)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def engine_logp_gaps(model_logp: torch.Tensor, mask: torch.Tensor, examples: list[TrainingExample]):
    """|engine log p - learner log p| of every completion token the engine reported a log-prob for, as one
    flat CPU float tensor. Both sides are the model's own distribution (temperature 1, before top-p and
    logit bias: vLLM's logprobs_mode "raw_logprobs"), so on the same weights the gap is numerical noise
    (kernels, dtype) and LoRA dropout on the learner's side; a policy the engine does not serve shows up
    as a gap far above that (`trainer.engine_gap`)."""
    gaps = []
    for row, ex in enumerate(examples):
        n = min(len(ex.engine_logprobs), int(mask[row].sum()))
        if n:
            engine = torch.tensor(ex.engine_logprobs[:n], dtype=torch.float32)
            gaps.append((model_logp[row, :n].detach().float().cpu() - engine).abs())
    return torch.cat(gaps) if gaps else torch.zeros(0)
