"""Emulated medical pretraining for the demo: turn a tiny random-weight model into a realistic *base*.

The paper's recipe starts from MedGemma, a model that already sees chest X-ray findings. A random tiny
model does not, and LoRA alone cannot teach it to (docs/sft.md). So the demo first fully fine-tunes the
random model (every weight, the vision tower included) on its own synthetic pool, disjoint from the SFT,
RL and test data, with a short generic prompt and a plain target:

    user: <image> What are the findings on this chest X-ray?
    assistant: Enlarged cardiac silhouette. ... Impression: ...\n Findings: Cardiomegaly, Edema.

The result has learned to see the findings but has never seen chexrl's prompts or its
<think>...</think><solution>...</solution> contract, so under chexrl's prompt it mostly fails the format,
as a pretrained model that was not instruction-tuned for the task would. LoRA SFT then teaches the
format and the task. The checkpoint is written in the published layout (`trainer.merge.write_checkpoint`),
so vLLM serves it.

Also owns the greedy-generation helpers the measurements use (`greedy_completions`, `base_metrics`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from chexrl.config import PretrainConfig
from chexrl.core.metrics import completion_metrics, label_set_metrics
from chexrl.core.parsing import parse_completion
from chexrl.core.prompts import build_messages
from chexrl.core.samples import XraySample
from chexrl.core.schemas import get_schema
from chexrl.data.images import open_image
from chexrl.models.loading import detect_family, load_model, load_processor
from chexrl.traces.render import render_prompt
from chexrl.traces.store import sample_id_for
from chexrl.traces.teacher import template_think
from trainer.collate import SFTExample, collate_rows, encode_sft_example, sft_loss
from trainer.merge import write_checkpoint

log = logging.getLogger(__name__)
GENERIC_PROMPTS = (
    "What are the findings on this chest X-ray?",
    "List the findings in this radiograph.",
    "Describe the abnormalities on this chest film.",
    "Report the findings of this chest X-ray.",
)
_FINDINGS = re.compile(r"Findings:\s*(.*?)\.?\s*$", re.S)


def generic_messages(question: str) -> list[dict]:
    """A short user turn with the image first: no system prompt, no label list, no output contract."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def findings_text(labels: Sequence[str], report: str = "") -> str:
    """The pretraining target: an optional free-text report, then the findings line.

    >>> findings_text(["Cardiomegaly", "Edema"])
    'Findings: Cardiomegaly, Edema.'
    >>> findings_text(["Edema"], "Hazy perihilar opacities.").splitlines()
    ['Hazy perihilar opacities.', 'Findings: Edema.']
    """
    line = "Findings: " + ", ".join(labels) + "."
    return f"{report}\n{line}" if report else line


def parse_findings(text: str) -> list[str]:
    """Labels of a pretraining-format answer ('Findings: A, B.'); [] when it has another shape.

    >>> parse_findings("Findings: Cardiomegaly, Edema.")
    ['Cardiomegaly', 'Edema']
    """
    lines = text.strip().splitlines()
    match = _FINDINGS.search(lines[-1]) if lines else None
    return [x.strip() for x in match.group(1).split(",") if x.strip()] if match else []


def pretrain_examples(samples: Sequence[XraySample], seed: int = 0) -> list[SFTExample]:
    """One example per sample, each with one of the generic questions (images opened once). The target
    is a short radiology report (the template teacher's wording, so the base knows the language a
    medical model knows) and the findings line; no chexrl prompt, no <think>/<solution> tags."""
    rng = random.Random(seed)
    examples = []
    for s in samples:
        # keyed by the sample's id, not its path: the same data in another folder gives the same base model
        key = sample_id_for(s.dataset, s.study_id, s.image_path)
        report = template_think(s.labels, "free_reasoning", seed=seed + 1, key=key)
        target = findings_text(s.labels, report[:1].upper() + report[1:])
        examples.append(
            SFTExample(generic_messages(rng.choice(GENERIC_PROMPTS)), open_image(s.image_path), target)
        )
    return examples


def run_pretrain(
    cfg: PretrainConfig, samples: Sequence[XraySample], base_dir: str | Path, out: str | Path
) -> Path:
    """Fully fine-tune `base_dir` on `samples` and write the new base checkpoint to `out` (atomically),
    with `pretrain_history.json` beside its weights. Returns `out`."""
    if not samples:
        raise ValueError("no pretraining samples")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(base_dir, dtype=torch.float32, device=device).train()
    processor = load_processor(base_dir)
    # Encoded once: the pool's images are small, and tokenizing per step would dominate a tiny model.
    rows = [encode_sft_example(processor, ex) for ex in pretrain_examples(samples, cfg.seed)]
    pad_id = processor.tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.warmup_steps, cfg.max_steps))
    rng = random.Random(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    for _ in range(cfg.max_steps):
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        batch = collate_rows([rows[i] for i in order[: cfg.batch_size]], pad_id)
        del order[: cfg.batch_size]
        loss_sum, counts = sft_loss(model, batch)
        loss = loss_sum / counts["tokens"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 100 == 0:
            log.info("pretrain step %d/%d: loss %.4f", len(losses), cfg.max_steps, sum(losses[-100:]) / 100)
    model.eval()
    out = write_checkpoint(model, detect_family(base_dir), base_dir, out)
    history = {
        "steps": cfg.max_steps,
        "n_samples": len(rows),
        "loss_first_50": sum(losses[:50]) / len(losses[:50]),
        "loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "seconds": time.perf_counter() - start,
        "config": cfg.model_dump(),
    }
    (out / "pretrain_history.json").write_text(json.dumps(history, indent=2) + "\n")
    return out


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


# ---- measurements ---------------------------------------------------------------------------------
def greedy_completions(
    model: Any,
    processor: Any,
    messages: Sequence[list[dict]],
    images: Sequence[Any],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> list[str]:
    """Greedy HF `generate` for (messages, image) pairs; left-padded batches; special tokens dropped."""
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = []
    try:
        for i in range(0, len(images), batch_size):
            prompts = [render_prompt(processor, m) for m in messages[i : i + batch_size]]
            enc = processor(
                text=prompts,
                images=[[im] for im in images[i : i + batch_size]],
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,
            ).to(next(model.parameters()).device)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            texts += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return texts


def base_metrics(
    model_dir: str | Path,
    samples: Sequence[XraySample],
    *,
    prompt: str | None = None,
    max_new_tokens: int = 128,
) -> dict[str, Any]:
    """Greedy completions of `model_dir` on `samples`, scored: with chexrl's `prompt` (parsed by
    chexrl.core.parsing) or, when `prompt` is None, with a generic question in the pretraining format."""
    model, processor = load_model(model_dir, dtype=torch.float32), load_processor(model_dir)
    schema = get_schema(samples[0].schema)
    messages = [
        build_messages(prompt, schema=s.schema) if prompt else generic_messages(GENERIC_PROMPTS[0])
        for s in samples
    ]
    texts = greedy_completions(
        model, processor, messages, [open_image(s.image_path) for s in samples], max_new_tokens=max_new_tokens
    )
    golds = [s.labels for s in samples]
    if prompt:
        metrics = completion_metrics(texts, golds, schema)
        preds = [set(parse_completion(t, schema).labels) for t in texts]
    else:
        preds = [set(parse_findings(t)) for t in texts]
        metrics = label_set_metrics([sorted(p) for p in preds], golds, schema, invalid=[not p for p in preds])
    exact = sum(p == set(g) for p, g in zip(preds, golds, strict=True)) / len(samples)
    return {
        "n": len(samples),
        "exact_match": exact,
        "macro_f1": metrics.macro.f1,
        "micro_f1": metrics.micro.f1,
        "fail_rate": metrics.fail_rate,
        "example": texts[0],
    }
