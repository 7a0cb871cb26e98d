"""`chexrl bench step`, TRL's side: `trl.GRPOTrainer` on the same checkpoint, LoRA config, chat messages,
images, prompts and completions per step, completion length (EOS suppressed, as on chexrl's side, so every
completion has exactly `max_tokens` tokens), Dr. GRPO loss with the paper's beta/epsilons, and the same
reward function (`chexrl.core.scoring.score_completion`, called in-process) as chexrl's side.

A TRL step is timed from `on_step_begin` to `on_step_end` (generation, reward, reference log-probs,
forward/backward, optimizer), without TRL's per-step log. Each run goes in a fresh process of its own
(`run_trl_isolated`).
"""

from __future__ import annotations

import statistics
import time
import uuid
from pathlib import Path

from chexrl.core.schemas import TRAINING_SCHEMA


def trl_dataset(samples: list, prompt_name: str):
    """The RL samples as a TRL conversational dataset: the same chat messages as chexrl's rollouts, the
    same image bytes (decoded as the rollout worker decodes them) and the gold labels for the reward."""
    import datasets

    from chexrl.core.prompts import build_messages
    from chexrl.data.images import image_bytes, open_image

    return datasets.Dataset.from_dict(
        {
            "prompt": [trl_messages(build_messages(prompt_name))] * len(samples),
            # open_image is what the rollout worker decodes a prompt's image bytes with (`decode_image`)
            "image": [open_image(image_bytes(s.image_path)) for s in samples],
            "labels": [sorted(s.labels) for s in samples],
        }
    )


def trl_messages(messages: list[dict]) -> list[dict]:
    """chexrl's messages (system text; user: image part then text) in the string form TRL expands back to
    exactly that: `prepare_multimodal_messages` puts the image part before the first user message's text.
    (Arrow cannot hold the mixed image/text part dicts as they are.)"""
    out = []
    for m in messages:
        parts = m["content"]
        images = [p for p in parts if p["type"] == "image"]
        texts = [p["text"] for p in parts if p["type"] == "text"]
        if len(texts) != 1 or (images and (m["role"] != "user" or parts[0]["type"] != "image")):
            raise ValueError(f"unexpected message layout for TRL: {m}")
        out.append({"role": m["role"], "content": texts[0]})
    return out


def same_rendered_prompt(processor, prompt_name: str) -> str:
    """The prompt text TRL renders for its dataset row, checked equal to the one chexrl's rollout engine
    renders (`processor.apply_chat_template(messages)`); returns it."""
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages

    from chexrl.core.prompts import build_messages

    ours = build_messages(prompt_name)
    theirs = prepare_multimodal_messages(trl_messages(ours), images=[Image.new("RGB", (8, 8))])
    render = dict(tokenize=False, add_generation_prompt=True)
    a = processor.apply_chat_template(ours, **render)
    b = processor.apply_chat_template(theirs, **render)
    if a != b:
        raise RuntimeError(f"TRL would render another prompt than chexrl:\n{a!r}\n!=\n{b!r}")
    return a


def hard_reward_fn(reward_cfg):
    """The evaluator's hard reward as a TRL reward function (the same pure function, in-process)."""
    from chexrl.core.schemas import SCHEMAS
    from chexrl.core.scoring import score_completion

    schema = SCHEMAS[TRAINING_SCHEMA]

    def reward(prompts, completions, completion_ids, labels, **_) -> list[float]:
        out = []
        for completion, ids, gold in zip(completions, completion_ids, labels, strict=True):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            canonical = frozenset(schema.canonical(g) for g in gold)
            out.append(
                score_completion(text, canonical, "hard", reward_cfg, num_tokens=len(ids)).reward.total
            )
        return out

    reward.__name__ = "hard_reward"
    return reward


def trl_generation_args(cfg, generation: str) -> dict:
    """TRL GRPOConfig's generation settings: every completion exactly `max_tokens` long, as chexrl's
    engine with ignore_eos."""
    if generation == "vllm-colocate":
        return {
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
            "vllm_max_model_length": cfg.rollout.max_model_len,
            "generation_kwargs": {"ignore_eos": True},  # vLLM SamplingParams: never stop at EOS
            "vllm_importance_sampling_correction": False,  # chexrl does no engine/trainer IS correction
        }
    # transformers generate: EOS (every end token TRL stops at) masked until max_tokens are out
    return {"use_vllm": False, "generation_kwargs": {"min_new_tokens": cfg.sampling.max_tokens}}


def trl_grpo_args(cfg, work: Path, generation: str):
    """TRL's GRPOConfig for chexrl's `cfg` (`chexrl.bench.step_setup.bench_config`): the same sizes,
    sampling, Dr. GRPO loss and optimizer settings, and the same gradient checkpointing."""
    import torch
    from trl import GRPOConfig

    g, s = cfg.grpo, cfg.sampling
    prompts, n, micro_batch = g.prompts_per_step, s.n, g.micro_batch_size
    if (prompts * n) % micro_batch:
        raise ValueError(f"prompts x n ({prompts * n}) must be a multiple of micro_batch ({micro_batch})")
    return GRPOConfig(
        output_dir=str(work / f"trl-run-{uuid.uuid4().hex[:8]}"),
        per_device_train_batch_size=micro_batch,  # as chexrl's micro_batch_size
        gradient_accumulation_steps=prompts * n // micro_batch,  # one generation batch per optimizer step
        num_generations=n,
        max_completion_length=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        loss_type="dr_grpo",
        scale_rewards="none",  # Dr. GRPO: advantages are reward minus the group mean, as chexrl's
        beta=g.beta,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        num_iterations=g.num_iterations,
        learning_rate=g.learning_rate,
        weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm,
        lr_scheduler_type="constant",
        max_steps=g.max_steps,
        bf16=False,  # chexrl's learner trains in the checkpoint's dtype
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=g.gradient_checkpointing,  # chexrl's learner's setting
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        shuffle_dataset=False,
        seed=g.seed,
        **trl_generation_args(cfg, generation),
    )


def run_trl(cfg, model_dir: str, samples: list, work: Path, *, warmup: int, generation: str) -> dict:
    """TRL's GRPOTrainer on `cfg`'s sizes and settings for the same number of optimizer steps; returns
    the measured steps' wall times and the peak memory of generation and of training, apart."""
    import torch
    from trl import GRPOTrainer

    from chexrl.bench.common import PhasePeaks
    from chexrl.core.config import RewardConfig
    from chexrl.core.prompts import DEFAULT_PROMPT
    from chexrl.models.loading import load_model, load_processor
    from trainer.lora import language_lora_config

    g = cfg.grpo
    steps = g.max_steps - warmup
    args = trl_grpo_args(cfg, work, generation)
    processor = load_processor(model_dir)
    same_rendered_prompt(processor, DEFAULT_PROMPT)
    clock = step_clock(warmup, PhasePeaks(torch.cuda.is_available()))
    started = time.perf_counter()
    trainer = GRPOTrainer(
        model=load_model(model_dir),
        reward_funcs=hard_reward_fn(RewardConfig()),
        args=args,
        train_dataset=trl_dataset(samples, DEFAULT_PROMPT),
        processing_class=processor,
        peft_config=language_lora_config(g.lora.rank, g.lora.alpha, g.lora.dropout),
        callbacks=[clock],
    )
    _time_generation(trainer, clock)
    trainer.train()
    if len(clock.step_seconds) != steps:
        raise RuntimeError(f"TRL ran {len(clock.step_seconds)} measured steps, expected {steps}")
    return {
        "generation": generation,
        "gradient_checkpointing": g.gradient_checkpointing,
        "step_seconds": clock.step_seconds,
        "generation_seconds": clock.generation_seconds,
        "median": float(statistics.median(clock.step_seconds)),
        "mean": float(statistics.fmean(clock.step_seconds)),
        "median_generation": float(statistics.median(clock.generation_seconds)),
        "completion_tokens_mean": float(statistics.fmean(clock.completion_lengths)),
        "wall_s": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        **clock.phase_peaks(),
    }


def run_trl_isolated(cfg, model_dir: str, samples: list, work: Path, warmup: int, generation: str) -> dict:
    """`run_trl` in a fresh (spawned) process: every round starts from the same state, whatever ran in
    this process before (Ray's driver, an earlier TRL round)."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(
        target=_trl_child, args=(results, cfg.model_dump(), model_dir, samples, str(work), warmup, generation)
    )
    proc.start()
    try:
        while True:
            try:
                status, payload = results.get(timeout=1.0)
                break
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"the TRL process exited with {proc.exitcode} and no result") from None
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        raise RuntimeError(f"TRL's GRPOTrainer failed:\n{payload}")
    return payload


def _trl_child(results, cfg: dict, model_dir: str, samples: list, work: str, warmup: int, generation: str):
    import traceback

    from chexrl.config import ChexrlConfig

    try:
        out = run_trl(
            ChexrlConfig.model_validate(cfg),
            model_dir,
            samples,
            Path(work),
            warmup=warmup,
            generation=generation,
        )
        results.put(("ok", out))
    except BaseException:  # reported to the parent, which raises
        results.put(("error", traceback.format_exc()))


def step_clock(warmup: int, peaks):
    """A TrainerCallback timing each optimizer step after `warmup` (on_step_begin -> on_step_end), with
    the generation time and completion lengths inside it (`_time_generation` feeds those), and the peak
    memory (`peaks`, a `chexrl.bench.common.PhasePeaks`) of the measured steps' generation (TRL's
    `generate`, its KV cache included) and of the rest of the step (the training), kept apart."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.step_seconds: list[float] = []
            self.generation_seconds: list[float] = []
            self.completion_lengths: list[int] = []
            self.generation = 0.0
            self.lengths: list[int] = []
            self.measuring = False
            self.peaks = peaks
            self.generation_peak = 0
            self.training_peak = 0
            self._begin = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.generation, self.lengths = 0.0, []
            self.measuring = state.global_step >= warmup  # the step about to run is a measured one
            if self.measuring:
                self.peaks.reset()
            self._begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.perf_counter() - self._begin
            if self.measuring:
                self.training_peak = max(self.training_peak, self.peaks.peak())
            if state.global_step > warmup:
                self.step_seconds.append(elapsed)
                self.generation_seconds.append(self.generation)
                self.completion_lengths.extend(self.lengths)

        def around_generation(self, generate):
            """`generate()` with its peak charged to generation, not to the training around it."""
            if not self.measuring:
                return generate()
            self.training_peak = max(self.training_peak, self.peaks.peak())
            self.peaks.reset()
            out = generate()
            self.generation_peak = max(self.generation_peak, self.peaks.peak())
            self.peaks.reset()
            return out

        def phase_peaks(self) -> dict:
            return {"generation_peak_bytes": self.generation_peak, "training_peak_bytes": self.training_peak}

    return StepClock()


def _time_generation(trainer, clock) -> None:
    """Charge the time and peak memory inside TRL's sampling call to `clock` (TRL's generation share)."""
    inner = trainer._generate_single_turn

    def timed(*args, **kwargs):
        start = time.perf_counter()
        completion_ids, logprobs = clock.around_generation(lambda: inner(*args, **kwargs))
        clock.generation += time.perf_counter() - start
        clock.lengths.extend(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed
