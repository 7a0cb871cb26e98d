"""`chexrl bench step`: where one GRPO step's time goes, and the same step in TRL's GRPOTrainer.

chexrl side: the real `trainer.loop.run_grpo` (vLLM rollout actor -> evaluator /score over HTTP -> Dr.
GRPO update in the learner actor -> adapter pushed to the worker) for `warmup + steps` steps; the split
of each measured step comes from the loop's own `time/*` metrics and the learner's
`time/forward_backward` and `time/optimizer`.

TRL side, in the same process (by default once before and once after chexrl, so that a drift in the load
of a shared machine hits both sides alike): `trl.GRPOTrainer` on the same checkpoint, LoRA config, chat
messages, images, prompts and completions per step, completion length (EOS suppressed on both sides, so
every completion has exactly `max_tokens` tokens), Dr. GRPO loss with the paper's beta/epsilons, and the
same reward function (`chexrl.core.scoring.score_completion`, called in-process). A TRL step is timed from
`on_step_begin` to `on_step_end` (generation, reward, reference log-probs, forward/backward, optimizer).
Neither side's step includes its per-step logging (chexrl's metrics.jsonl/TensorBoard write, TRL's log).
trl_over_chexrl = median TRL step / median chexrl step.

overhead_fraction = (step - generation - forward_backward - optimizer) / step: the share of a step that is
neither producing rollouts nor training on them (scoring, batch building, Ray calls, weight sync, glue).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from chexrl.bench.common import device_description

TARGETS = {"overhead_fraction_max": 0.10, "trl_over_chexrl_min": 1.0}

# The per-step split: named parts of `time/step` plus `other` (the rest), which add up to the step.
PARTS = ("generation", "scoring", "forward_backward", "optimizer", "weight_sync", "other")
# What `other` is made of (informational; they add up to `other`).
OTHER_PARTS = ("collate", "learner_call", "sleep_wake", "loop")


def step_split(metrics: dict) -> dict:
    """One step's split from `run_grpo`'s per-step metrics (seconds)."""
    step = metrics["time/step"]
    named = {
        "generation": metrics["time/generation"],
        "scoring": metrics["time/scoring"],
        "forward_backward": metrics["time/forward_backward"],
        "optimizer": metrics["time/optimizer"],
        "weight_sync": metrics["time/weight_sync"],
    }
    other = step - sum(named.values())
    training = metrics["time/training"]
    learner = metrics["time/learner_step"]
    sleep_wake = metrics["time/sleep"] + metrics["time/wake"]
    loop = step - (
        metrics["time/generation"]
        + metrics["time/scoring"]
        + training
        + metrics["time/weight_sync"]
        + sleep_wake
    )
    return {
        "step": step,
        **named,
        "other": other,
        "other_parts": {
            # the processor building the learner's batches (prompt + image encoding, collation)
            "collate": metrics["time/collate"],
            # the learner call minus the learner's own work: Ray task submission, argument transfer, result
            "learner_call": training - learner,
            # putting the engine to sleep for the update and waking it (Ray calls only, where sleep is off)
            "sleep_wake": sleep_wake,
            # the loop's glue between the timed sections, plus the learner's small bookkeeping
            "loop": loop
            + (learner - metrics["time/collate"] - named["forward_backward"] - named["optimizer"]),
        },
        "overhead_fraction": (step - named["generation"] - named["forward_backward"] - named["optimizer"])
        / step,
    }


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def summarize_chexrl(splits: list[dict]) -> dict:
    keys = ("step", *PARTS)
    median = {k: _median([s[k] for s in splits]) for k in keys}
    mean = {k: float(statistics.fmean([s[k] for s in splits])) for k in keys}
    fractions = [s["overhead_fraction"] for s in splits]
    return {
        "steps": splits,
        "median": median,
        "mean": mean,
        # shares of the mean step: means add up (the parts' medians need not come from one step)
        "mean_share": {k: mean[k] / mean["step"] for k in PARTS},
        "overhead_fraction": _median(fractions),
        "overhead_fraction_mean": float(statistics.fmean(fractions)),
    }


# ---- the chexrl side ------------------------------------------------------------------------------------
def bench_config(
    model_dir: str,
    *,
    steps: int,
    warmup: int,
    prompts: int,
    n: int,
    max_tokens: int,
    micro_batch: int,
    max_model_len: int,
    weight_sync: str | None = None,
    evaluator_url: str = "http://127.0.0.1:8000",
):
    """The fixed configuration both sides run: chexrl's defaults (the paper's sampling, Dr. GRPO and LoRA
    settings) with the benchmark's sizes and EOS ignored."""
    from chexrl.config import ChexrlConfig, RolloutConfig

    rollout = RolloutConfig(model=model_dir, max_model_len=max_model_len, weight_sync=weight_sync)
    return ChexrlConfig.model_validate(
        {
            "rollout": rollout.model_dump(),
            "sampling": {"n": n, "max_tokens": max_tokens, "ignore_eos": True},
            "grpo": {
                "evaluator_url": evaluator_url,
                "max_steps": warmup + steps,
                "prompts_per_step": prompts,
                "micro_batch_size": micro_batch,
                "gradient_checkpointing": False,  # as TRL's side below: same memory-for-compute trade
                "save_steps": warmup + steps,  # the one checkpoint comes after the last step's clock
                "eval_steps": warmup + steps,
            },
        }
    )


def run_chexrl(
    cfg, model_dir: str, samples: list, work: Path, *, warmup: int, evaluator_url: str | None = None
) -> tuple[list[dict], float]:
    """`run_grpo` for the configured steps; returns (the measured steps' metrics, wall seconds).

    Starts an evaluator unless `evaluator_url` is given, and a local Ray unless one is connected."""
    import shutil

    import ray

    from chexrl.core.prompts import DEFAULT_PROMPT
    from services.evaluator.process import EvaluatorProcess
    from trainer.loop import GRPORun, run_grpo

    work.mkdir(parents=True, exist_ok=True)
    evaluator = None
    if evaluator_url is None:
        evaluator = EvaluatorProcess(work / "evaluator-state", log=work / "evaluator.log").start()
        evaluator_url = evaluator.url
    scratch = tempfile.mkdtemp(prefix="chexrl-bench-step-", dir=_scratch())  # node-local adapter files
    cfg = cfg.model_copy(
        update={
            "grpo": cfg.grpo.model_copy(update={"evaluator_url": evaluator_url}),
            "rollout": cfg.rollout.model_copy(update={"adapter_dir": scratch}),
        }
    )
    own_ray = not ray.is_initialized()
    started = time.perf_counter()
    try:
        if own_ray:  # as the demo: logical CPUs so that the worker and learner actors fit on 2 cores
            ray.init(
                num_cpus=4, object_store_memory=512 * 1024**2, include_dashboard=False, log_to_driver=False
            )
        try:
            run = GRPORun(
                model_dir, samples, str(work / "chexrl-run"), run_id="bench-step", prompt_name=DEFAULT_PROMPT
            )
            history = run_grpo(cfg, run, progress=False)
        finally:
            if own_ray:
                ray.shutdown()
    finally:
        if evaluator is not None:
            evaluator.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return history[warmup:], time.perf_counter() - started


def _scratch() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


# ---- the TRL side ---------------------------------------------------------------------------------------
def trl_dataset(samples: list, prompt_name: str):
    """The RL samples as a TRL conversational dataset: the same chat messages as chexrl's rollouts, the
    same image bytes (decoded as the rollout worker decodes them) and the gold labels for the reward."""
    import datasets

    from chexrl.core.prompts import build_messages
    from chexrl.data.images import image_bytes
    from rollout_worker.engine import decode_image

    return datasets.Dataset.from_dict(
        {
            "prompt": [trl_messages(build_messages(prompt_name))] * len(samples),
            "image": [decode_image(image_bytes(s.image_path)) for s in samples],
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

    schema = SCHEMAS["chexpert14"]

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


def run_trl(cfg, model_dir: str, samples: list, work: Path, *, warmup: int, generation: str) -> dict:
    """TRL's GRPOTrainer on `cfg`'s sizes and settings (`bench_config`) for the same number of optimizer
    steps; returns the measured steps' wall times."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from chexrl.core.config import RewardConfig
    from chexrl.core.prompts import DEFAULT_PROMPT
    from chexrl.models.loading import load_model, load_processor
    from trainer.lora import language_lora_config

    g, s = cfg.grpo, cfg.sampling
    prompts, n, max_tokens, micro_batch = g.prompts_per_step, s.n, s.max_tokens, g.micro_batch_size
    steps = g.max_steps - warmup
    if (prompts * n) % micro_batch:
        raise ValueError(f"prompts x n ({prompts * n}) must be a multiple of micro_batch ({micro_batch})")
    cuda = torch.cuda.is_available()
    if generation == "vllm-colocate":
        # vLLM SamplingParams: never stop at EOS, as chexrl's engine with ignore_eos
        gen = {
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
            "vllm_max_model_length": cfg.rollout.max_model_len,
            "generation_kwargs": {"ignore_eos": True},
            "vllm_importance_sampling_correction": False,  # chexrl does no engine/trainer IS correction
        }
    else:
        # transformers generate: EOS (every end token TRL stops at) masked until max_tokens are out
        gen = {"use_vllm": False, "generation_kwargs": {"min_new_tokens": max_tokens}}
    args = GRPOConfig(
        output_dir=str(work / f"trl-run-{uuid.uuid4().hex[:8]}"),
        per_device_train_batch_size=micro_batch,  # as chexrl's micro_batch_size
        gradient_accumulation_steps=prompts * n // micro_batch,  # one generation batch per optimizer step
        num_generations=n,
        max_completion_length=max_tokens,
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
        use_cpu=not cuda,
        gradient_checkpointing=False,  # chexrl's side runs without it too (bench_config)
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        shuffle_dataset=False,
        seed=g.seed,
        **gen,
    )
    processor = load_processor(model_dir)
    same_rendered_prompt(processor, DEFAULT_PROMPT)
    clock = step_clock(warmup)
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
        "step_seconds": clock.step_seconds,
        "generation_seconds": clock.generation_seconds,
        "median": _median(clock.step_seconds),
        "mean": float(statistics.fmean(clock.step_seconds)),
        "median_generation": _median(clock.generation_seconds),
        "completion_tokens_mean": float(statistics.fmean(clock.completion_lengths)),
        "wall_s": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
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


def step_clock(warmup: int):
    """A TrainerCallback timing each optimizer step after `warmup` (on_step_begin -> on_step_end), with
    the generation time and completion lengths inside it (`_time_generation` feeds those)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.step_seconds: list[float] = []
            self.generation_seconds: list[float] = []
            self.completion_lengths: list[int] = []
            self.generation = 0.0
            self.lengths: list[int] = []
            self._begin = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.generation, self.lengths = 0.0, []
            self._begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.perf_counter() - self._begin
            if state.global_step > warmup:
                self.step_seconds.append(elapsed)
                self.generation_seconds.append(self.generation)
                self.completion_lengths.extend(self.lengths)

    return StepClock()


def _time_generation(trainer, clock) -> None:
    """Charge the time inside TRL's sampling call to `clock` (informational: TRL's generation share)."""
    inner = trainer._generate_single_turn

    def timed(*args, **kwargs):
        start = time.perf_counter()
        completion_ids, logprobs = inner(*args, **kwargs)
        clock.generation += time.perf_counter() - start
        clock.lengths.extend(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed


# ---- the benchmark --------------------------------------------------------------------------------------
def prepare(
    work: Path,
    *,
    preset: str | None,
    model: str | None,
    data_dir: str | Path | None,
    images: int,
    image_size: int,
) -> tuple[str, list]:
    """(model_dir, samples): the checkpoint (built under `work` unless given) and `images` MIMIC-format
    samples (synthesized under `work` unless `data_dir` holds a set)."""
    from chexrl.data.loaders import load_dataset
    from chexrl.data.synth import synthesize
    from chexrl.models.tiny import build_model_dir

    if model is None:
        out = work / "model"
        if preset is None:
            model = str(build_model_dir("gemma3", out, seed=0).out)
        else:
            model = str(build_model_dir(out=out, preset=preset, seed=0).out)
    if data_dir is None:
        # the loader keeps frontal views only; the synthetic set mixes in laterals, so write a margin
        data_dir = work / "mimic"
        synthesize("mimic", data_dir, 2 * images + 8, seed=1, size=image_size)
    samples = load_dataset(f"mimic:{data_dir}")
    if len(samples) < images:
        raise RuntimeError(f"{data_dir} holds {len(samples)} frontal images, need {images}")
    return model, samples[:images]


def bench_step(
    *,
    steps: int = 5,
    warmup: int = 2,
    prompts: int = 4,
    n: int = 4,
    max_tokens: int = 64,
    micro_batch: int = 4,
    preset: str | None = None,
    model: str | None = None,
    data_dir: str | Path | None = None,
    image_size: int = 64,
    max_model_len: int = 1024,
    trl_generation: str = "auto",
    trl_rounds: int | None = None,
    weight_sync: str | None = None,
    evaluator_url: str | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Both sides on one fixed configuration; returns the figures (see the module docstring).

    TRL runs `trl_rounds` times: with 2 (the default) once before and once after chexrl, so a drift in
    the load of a shared machine hits both sides alike; with 1 after chexrl. Each TRL round runs in a fresh
    process of its own (same start state every round; a colocated vLLM's GPU memory is freed on exit) and
    has its own warm-up.
    `model` / `data_dir` (a MIMIC-format directory) reuse existing files; `evaluator_url` a running evaluator.
    `weight_sync` is the rollout engine's (`RolloutConfig.weight_sync`; None: the device's default).
    """
    import torch

    if steps < 1 or warmup < 0:
        raise ValueError("need steps >= 1 and warmup >= 0")
    cuda = torch.cuda.is_available()
    if trl_generation == "auto":
        trl_generation = "vllm-colocate" if cuda else "transformers"
    if trl_generation not in ("transformers", "vllm-colocate"):
        raise ValueError(
            f"trl_generation must be auto, transformers or vllm-colocate, not {trl_generation!r}"
        )
    trl_rounds = 2 if trl_rounds is None else trl_rounds
    if trl_rounds not in (1, 2):
        raise ValueError("trl_rounds must be 1 (after chexrl) or 2 (before and after)")
    if preset is not None and model is not None:
        raise ValueError("give a preset or a model directory, not both")
    sizes = dict(
        steps=steps, warmup=warmup, prompts=prompts, n=n, max_tokens=max_tokens, micro_batch=micro_batch
    )
    with tempfile.TemporaryDirectory(prefix="chexrl-bench-step-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # every step draws fresh images on both sides (no prompt repeats within a run)
        model_dir, samples = prepare(
            work,
            preset=preset,
            model=model,
            data_dir=data_dir,
            images=prompts * (warmup + steps),
            image_size=image_size,
        )
        cfg = bench_config(model_dir, max_model_len=max_model_len, weight_sync=weight_sync, **sizes)
        trl_args = (cfg, model_dir, samples, work, warmup, trl_generation)
        rounds = []
        if trl_rounds == 2:
            rounds.append({"when": "before chexrl", **run_trl_isolated(*trl_args)})
        measured, chexrl_wall = run_chexrl(
            cfg, model_dir, samples, work, warmup=warmup, evaluator_url=evaluator_url
        )
        rounds.append({"when": "after chexrl", **run_trl_isolated(*trl_args)})

    chexrl = summarize_chexrl([step_split(m) for m in measured])
    chexrl["wall_s"] = chexrl_wall
    chexrl["completion_tokens_mean"] = float(statistics.fmean(m["completion/length"] for m in measured))
    # equal work: every completion on both sides is exactly max_tokens long
    for side, mean_len in [("chexrl", chexrl["completion_tokens_mean"])] + [
        (f"trl ({r['when']})", r["completion_tokens_mean"]) for r in rounds
    ]:
        if mean_len != max_tokens:
            raise RuntimeError(
                f"{side} completions average {mean_len} tokens, not {max_tokens}: unequal work"
            )
    trl_steps = [t for r in rounds for t in r["step_seconds"]]
    trl_gen = [t for r in rounds for t in r["generation_seconds"]]
    trl = {
        "generation": trl_generation,
        "step_seconds": trl_steps,
        "generation_seconds": trl_gen,
        "median": _median(trl_steps),
        "mean": float(statistics.fmean(trl_steps)),
        "median_generation": _median(trl_gen),
        "rounds": rounds,
    }
    ratio = trl["median"] / chexrl["median"]["step"]
    g, s = cfg.grpo, cfg.sampling
    return {
        "device": device_description(),
        "config": {
            **sizes,
            "completions_per_step": prompts * n,
            "model": preset or model or "tiny-gemma3",
            "image_size": image_size,
            "max_model_len": max_model_len,
            "ignore_eos": True,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "loss": "dr_grpo",
            "beta": g.beta,
            "epsilon": g.epsilon,
            "epsilon_high": g.epsilon_high,
            "learning_rate": g.learning_rate,
            "lora": g.lora.model_dump(),
            "reward": "hard",
            "chexrl_generation": "vLLM in the Ray rollout actor",
            "chexrl_weight_sync": cfg.rollout.resolved_weight_sync(cuda),
            "trl_generation": trl_generation,
            "trl_rounds": trl_rounds,
        },
        "chexrl": chexrl,
        "trl": trl,
        "trl_over_chexrl": ratio,
        "targets": dict(TARGETS),
        "meets": {
            "overhead_fraction": chexrl["overhead_fraction"] <= TARGETS["overhead_fraction_max"],
            "trl_over_chexrl": ratio >= TARGETS["trl_over_chexrl_min"],
        },
    }


def summary_table(figures: dict) -> str:
    """A short plain-text table of the medians."""
    c, t = figures["chexrl"], figures["trl"]
    lines = [f"{'part':<18}{'median s':>10}{'mean s':>10}{'share':>8}"]
    for part in PARTS:
        lines.append(
            f"{part:<18}{c['median'][part]:>10.4f}{c['mean'][part]:>10.4f}{c['mean_share'][part]:>8.1%}"
        )
    lines.append(f"{'chexrl step':<18}{c['median']['step']:>10.4f}{c['mean']['step']:>10.4f}")
    lines.append(
        f"{'TRL step':<18}{t['median']:>10.4f}{t['mean']:>10.4f}  "
        f"({t['generation']}; its generation: median {t['median_generation']:.4f} s)"
    )
    m, tg = figures["meets"], figures["targets"]
    lines.append(
        f"overhead_fraction {c['overhead_fraction']:.3f} (mean {c['overhead_fraction_mean']:.3f}; "
        f"target <= {tg['overhead_fraction_max']}: {'met' if m['overhead_fraction'] else 'NOT met'})"
    )
    lines.append(
        f"trl_over_chexrl {figures['trl_over_chexrl']:.3f} "
        f"(target >= {tg['trl_over_chexrl_min']}: {'met' if m['trl_over_chexrl'] else 'NOT met'})"
    )
    return "\n".join(lines)
