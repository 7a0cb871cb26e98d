"""LoRA supervised fine-tuning on teacher traces (paper Sec. 3.2.1), as one transparent loop.

Steps of `run_sft`:
  1. load the base checkpoint and wrap it in the paper's adapter (LoRA rank 16 / alpha 32 / dropout 0.1
     on the language model's projections; everything else, the vision tower included, frozen);
  2. train with AdamW (lr 5e-5, weight decay 0.01), a cosine schedule with 5% warmup, clipping at 5.0,
     effective batch 8 (1 per forward, 8 accumulated), the loss the token mean of the completion's
     negative log-likelihood (assistant-only: `trainer.collate`), bf16 autocast where the device has it,
     gradient checkpointing;
  3. after each epoch, the validation loss: the best epoch's adapter is kept, and training stops after
     `early_stopping_patience` epochs without improvement (at most 6 epochs);
  4. write the best adapter, `history.json` and TensorBoard scalars, then merge the adapter into a new
     base checkpoint (`trainer.merge`) that vLLM serves and GRPO uses as its reference policy.

Every setting is a field of `chexrl.config.SFTConfig`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chexrl.config import SFTConfig
from chexrl.core.prompts import build_messages
from chexrl.core.schemas import TRAINING_SCHEMA
from chexrl.data.images import open_image
from chexrl.models.loading import detect_family, load_model, load_processor
from trainer.collate import SFTExample, collate_rows, encode_sft_example, sft_loss
from trainer.merge import merge_adapter
from trainer.run_log import RunLog

log = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 8  # validation forward passes (no gradients): padding does not change the loss
# Encoded examples are kept across epochs while all of them fit in this many bytes. The demo's 400
# examples at 64 pixels take ~20 MB (re-encoding them cost 2.6 s an epoch, 15% of it); MedGemma's
# 896-pixel images are ~9.6 MB a row in fp32, so a real run's 2,000 are encoded per batch instead.
KEEP_ENCODED_BYTES = 1 << 30


@dataclass(frozen=True)
class SFTResult:
    """What `run_sft` wrote."""

    adapter_dir: Path  # the best epoch's PEFT adapter (adapter_config.json + safetensors)
    merged_dir: Path | None  # base + adapter as a full checkpoint (None when cfg.merge is off)
    history: dict[str, Any]  # also in <out>/history.json


# ---- pure helpers --------------------------------------------------------------------------------------
def should_stop(val_losses: Sequence[float], patience: int) -> bool:
    """True when none of the last `patience` epochs lowered the best validation loss before them.

    >>> should_stop([1.0, 0.9, 0.95, 0.93], 2)
    True
    >>> should_stop([1.0, 0.9, 0.95, 0.85], 2)
    False
    >>> should_stop([1.0, 1.1], 2)
    False
    """
    if len(val_losses) <= patience:
        return False
    best_before = min(val_losses[:-patience])
    return min(val_losses[-patience:]) >= best_before


def split_validation(records: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `fraction` of the records (at least one when fraction > 0), grouped by study so that two
    views of one study never straddle the split. Deterministic for a seed."""
    if fraction <= 0 or len(records) < 2:
        return list(records), []
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(_study_key(rec), []).append(rec)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val = max(1, round(fraction * len(records)))
    val: list[dict] = []
    for key in keys:
        if len(val) >= n_val:
            break
        val.extend(groups[key])
    held = {id(r) for r in val}
    return [r for r in records if id(r) not in held], val


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    """Linear warmup over `warmup` steps, then cosine annealing to 0 at `total` (as transformers')."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def records_to_examples(records: Sequence[dict], prompt: str) -> list[SFTExample]:
    """Trace records ({"image", "labels", "trace", "schema"}) -> SFT examples with images opened."""
    return [
        SFTExample(
            build_messages(prompt, schema=r.get("schema", TRAINING_SCHEMA)),
            open_image(r["image"]),
            r["trace"],
        )
        for r in records
    ]


class EncodedExamples:
    """SFT examples with their model inputs (`trainer.collate.encode_sft_example` rows).

    Each example is encoded once on construction to measure it; those longer than `max_length` tokens
    (prompt, image tokens and completion) are dropped. The rows are kept for the epochs while all of them
    fit in `keep_bytes`, and otherwise encoded again per batch. Either way a batch is the same tensors
    `build_batch` would give.
    """

    def __init__(
        self,
        processor: Any,
        examples: Sequence[SFTExample],
        max_length: int,
        keep_bytes: int = KEEP_ENCODED_BYTES,
    ) -> None:
        self.processor = processor
        self.pad_id = getattr(processor, "tokenizer", processor).pad_token_id
        self.examples: list[SFTExample] = []
        self._rows: list[dict] | None = []
        held = 0
        for ex in examples:
            row = encode_sft_example(processor, ex)
            if row["input_ids"].shape[1] > max_length:
                continue
            self.examples.append(ex)
            if self._rows is not None:
                held += sum(v.numel() * v.element_size() for v in row.values() if torch.is_tensor(v))
                if held <= keep_bytes:
                    self._rows.append(row)
                else:  # too large to keep: encode per batch, and free what was kept
                    self._rows = None
        self.skipped = len(examples) - len(self.examples)
        if self.skipped:
            log.warning("sft: skipped %d examples longer than %d tokens", self.skipped, max_length)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def kept_encoded(self) -> bool:
        return self._rows is not None

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The batch of the examples at `indices`, in that order."""
        if self._rows is not None:
            rows = [self._rows[i] for i in indices]
        else:
            rows = [encode_sft_example(self.processor, self.examples[i]) for i in indices]
        return collate_rows(rows, self.pad_id)


# ---- the loop --------------------------------------------------------------------------------------
def _uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether SFT computes in bf16: asked for, or 'auto' on a GPU that has it."""
    has_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not has_bf16 and device.type != "cpu":
        raise ValueError(f"precision bf16 requested but {device} has no bfloat16 support")
    return precision == "bf16" or (precision == "auto" and has_bf16)


def autocast_context(precision: str, device: torch.device) -> Any:
    """bf16 autocast where asked for and the device has it ('auto': a GPU with bf16), else a no-op."""
    if _uses_bf16(precision, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def base_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The frozen base's dtype: bf16 on a GPU that computes in bf16 (MedGemma-4B's weights take 8.6 GB
    instead of 17), fp32 elsewhere (the CPU's bf16 matmuls are slow, and bf16 autocast there is opt-in).
    The LoRA weights stay fp32 either way (PEFT's `autocast_adapter_dtype`), as in the GRPO learner."""
    return torch.bfloat16 if device.type == "cuda" and _uses_bf16(precision, device) else torch.float32


def evaluate_loss(model: Any, examples: EncodedExamples, precision: str) -> dict[str, float]:
    """Token-mean completion NLL and token accuracy over `examples` (eval mode, no gradients)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll = tokens = correct = 0.0
    with torch.no_grad(), autocast_context(precision, device):
        for i in range(0, len(examples), EVAL_BATCH_SIZE):
            indices = range(i, min(i + EVAL_BATCH_SIZE, len(examples)))
            loss_sum, counts = sft_loss(model, examples.batch(indices))
            nll += loss_sum.item()
            tokens += counts["tokens"]
            correct += counts["correct"]
    model.train(was_training)
    return {"loss": nll / max(tokens, 1.0), "token_accuracy": correct / max(tokens, 1.0)}


def train_sft(
    model: Any,
    train: EncodedExamples,
    val: EncodedExamples,
    cfg: SFTConfig,
    out: Path,
) -> dict[str, Any]:
    """Train the PEFT `model` in place; keep the best epoch's adapter in `out/adapter`. Returns history."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(train) / per_step)
    total_steps = steps_per_epoch * cfg.num_epochs
    scheduler = cosine_schedule(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    rng = random.Random(cfg.seed)
    run_log = RunLog(out)
    history: dict[str, Any] = {"epochs": [], "best_epoch": None, "early_stop_epoch": None}
    if val:  # the untrained adapter's validation loss: the reference the epochs are compared with
        history["initial_val_loss"] = evaluate_loss(model, val, cfg.precision)["loss"]
    step = 0
    model.train()
    try:
        for epoch in range(1, cfg.num_epochs + 1):
            start = time.perf_counter()
            order = list(range(len(train)))
            rng.shuffle(order)
            sums = {"nll": 0.0, "tokens": 0.0, "correct": 0.0}
            for s in range(0, len(order), per_step):
                group = order[s : s + per_step]
                metrics = _optimizer_step(model, train, group, cfg, optimizer, params, device)
                scheduler.step()
                step += 1
                for key in sums:
                    sums[key] += metrics.pop("_" + key)
                run_log.log(step, {**metrics, "optim/learning_rate": scheduler.get_last_lr()[0]})
            record = {
                "epoch": epoch,
                "step": step,
                "train_loss": sums["nll"] / max(sums["tokens"], 1.0),
                "train_token_accuracy": sums["correct"] / max(sums["tokens"], 1.0),
            }
            if val:
                v = evaluate_loss(model, val, cfg.precision)
                record.update(val_loss=v["loss"], val_token_accuracy=v["token_accuracy"])
            record["seconds"] = time.perf_counter() - start
            history["epochs"].append(record)
            run_log.log(step, {f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "step")})
            log.info("sft epoch %d: %s", epoch, json.dumps(record))
            val_losses = [e["val_loss"] for e in history["epochs"] if "val_loss" in e]
            if not val or record["val_loss"] <= min(val_losses):
                history["best_epoch"] = epoch
                _save_adapter(model, out / "adapter")
            if val and should_stop(val_losses, cfg.early_stopping_patience):
                history["early_stop_epoch"] = epoch
                break
    finally:
        run_log.close()
    history["steps"] = step
    return history


def _optimizer_step(model, train, group, cfg, optimizer, params, device) -> dict[str, float]:
    """One optimizer step over the examples at `group` (the effective batch): the token mean over all
    its completions."""
    batches = [
        train.batch(group[i : i + cfg.per_device_batch_size])
        for i in range(0, len(group), cfg.per_device_batch_size)
    ]
    total_tokens = float(sum(int(b["completion_len"].sum()) for b in batches))
    nll = correct = 0.0
    for batch in batches:
        with autocast_context(cfg.precision, device):
            loss_sum, counts = sft_loss(model, batch)
        (loss_sum / total_tokens).backward()
        nll += loss_sum.item()
        correct += counts["correct"]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss/train": nll / total_tokens,
        "train/token_accuracy": correct / total_tokens,
        "optim/grad_norm": float(grad_norm),
        "_nll": nll,
        "_tokens": total_tokens,
        "_correct": correct,
    }


def _save_adapter(model: Any, path: Path) -> None:
    """Write the adapter atomically (a temp sibling, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _study_key(record: dict) -> str:
    parts = str(record.get("sample_id", record["image"])).split(":")
    return ":".join(parts[:2]) if len(parts) >= 3 else str(record.get("sample_id", record["image"]))


# ---- entry point ---------------------------------------------------------------------------------
def prepare_model(base_dir: str | Path, cfg: SFTConfig, device: str | None = None) -> tuple[Any, Any]:
    """(PEFT model on `device`, processor): the base in `base_dtype` (bf16 on a bf16 GPU, else fp32), the
    paper's adapter with fp32 weights, vision frozen."""
    from peft import get_peft_model

    from trainer.lora import language_lora_config, single_token_ids

    torch.manual_seed(cfg.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = load_processor(base_dir)
    token_ids = single_token_ids(processor.tokenizer, cfg.trainable_tokens)
    model = load_model(base_dir, dtype=base_dtype(cfg.precision, torch.device(device)), device=device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = language_lora_config(
        cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, detect_family(base_dir), token_ids
    )
    return get_peft_model(model, lora), processor


def run_sft(
    cfg: SFTConfig,
    train_records: Sequence[dict],
    val_records: Sequence[dict] | None,
    base_dir: str | Path,
    out: str | Path,
) -> SFTResult:
    """Fine-tune `base_dir` on trace records; write adapter, history, TensorBoard and the merged model.

    `val_records` None holds out `cfg.val_fraction` of `train_records` (grouped by study).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if val_records is None:
        train_records, val_records = split_validation(train_records, cfg.val_fraction, cfg.seed)
    if not train_records:
        raise ValueError("no SFT training records")
    start = time.perf_counter()
    model, processor = prepare_model(base_dir, cfg)
    train = EncodedExamples(processor, records_to_examples(train_records, cfg.prompt), cfg.max_length)
    val = EncodedExamples(processor, records_to_examples(val_records, cfg.prompt), cfg.max_length)
    history = train_sft(model, train, val, cfg, out)
    history.update(
        n_train=len(train),
        n_val=len(val),
        skipped_too_long=train.skipped,
        base=str(base_dir),
        train_seconds=time.perf_counter() - start,
        config=cfg.model_dump(),
    )
    merged = None
    if cfg.merge:
        merged = merge_adapter(base_dir, out / "adapter", out / "merged")
        history["merged"] = str(merged)
    history["seconds"] = time.perf_counter() - start
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return SFTResult(adapter_dir=out / "adapter", merged_dir=merged, history=history)
