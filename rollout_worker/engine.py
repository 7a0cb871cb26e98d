"""The vLLM engine behind a rollout worker, without Ray: render prompts, sample groups, swap adapters.

Kept free of Ray so it can be benchmarked in-process against the actor (`chexrl bench rollout`).
"""

from __future__ import annotations

import logging
import time

from chexrl.config import RolloutConfig, SamplingConfig
from chexrl.data.images import open_image
from chexrl.models.adapter_io import AdapterWeights
from chexrl.models.merged_sync import MergedWeightsSlot
from chexrl.models.vllm_env import set_vllm_env
from rollout_worker.adapter_sync import AdapterSlot
from rollout_worker.types import Completion, RolloutGroup, RolloutPrompt

log = logging.getLogger(__name__)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def multimodal_token_ids(processor) -> list[int]:
    """Ids of the special tokens that stand for image or video input (never valid in a completion)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    names = [t for t in tokenizer.all_special_tokens if any(k in t for k in ("image", "vision", "video"))]
    names += [
        t for t in ("<start_of_image>", "<image_soft_token>", "<end_of_image>") if t in tokenizer.get_vocab()
    ]
    return sorted({tokenizer.convert_tokens_to_ids(t) for t in names})


def decode_image(data: bytes):
    """Encoded image bytes -> RGB PIL image; `ImageError` (a ValueError) says what is wrong with them."""
    return open_image(data)


def engine_kwargs(cfg: RolloutConfig, *, cuda: bool, sleep: bool) -> dict:
    """vLLM `LLM(...)` arguments for `cfg` on this device (CUDA or not) with sleep mode on or off."""
    weight_sync = cfg.resolved_weight_sync(cuda)
    kwargs = dict(
        model=cfg.model,
        enable_lora=weight_sync == "lora",
        max_model_len=cfg.max_model_len,
        dtype=cfg.dtype,
        seed=cfg.seed,
        enforce_eager=cfg.resolved_enforce_eager(cuda),
        limit_mm_per_prompt={"image": 1},
        logprobs_mode=cfg.logprobs_mode,
        enable_prefix_caching=True,
    )
    max_num_seqs = cfg.resolved_max_num_seqs(cuda)
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    if weight_sync == "lora":
        kwargs.update(max_lora_rank=cfg.max_lora_rank, max_loras=1)
    if cfg.mm_processor_kwargs:
        kwargs["mm_processor_kwargs"] = dict(cfg.mm_processor_kwargs)
    if cuda:
        kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=sleep)
    return kwargs


class RolloutEngine:
    """One vLLM engine for one base checkpoint, serving one adapter version at a time: as a live LoRA or
    merged into the weights (`RolloutConfig.weight_sync`)."""

    def __init__(self, cfg: RolloutConfig) -> None:
        from transformers import AutoProcessor
        from vllm import LLM

        self.cfg = cfg
        cuda = has_cuda()
        self.sleep_enabled = cuda if cfg.sleep_between_phases is None else cfg.sleep_between_phases
        self.weight_sync = cfg.resolved_weight_sync(cuda)
        # Merged weights are handed to the worker in memory, which needs the engine core in this process
        # (the Ray actors run it so anyway); the CPU KV cache size unless the user set one.
        set_vllm_env(cfg.kv_cache_gib, in_process=self.weight_sync == "merged")
        started = time.perf_counter()
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        self.llm = LLM(**engine_kwargs(cfg, cuda=cuda, sleep=self.sleep_enabled))
        # A sampled image/video placeholder token would make the completion unusable for training (the
        # model would expect image features for it): such tokens can never be generated.
        self.banned_token_bias = {tok: -100.0 for tok in multimodal_token_ids(self.processor)}
        self.adapter = (
            AdapterSlot(self.llm, cfg.adapter_dir, cfg.adapter_dir_shared_parents)
            if self.weight_sync == "lora"
            else MergedWeightsSlot(self.llm, cfg.model)
        )
        self.asleep = False
        self.start_seconds = time.perf_counter() - started
        log.info("rollout engine for %s ready in %.1fs", cfg.model, self.start_seconds)

    def kv_cache_layout(self) -> dict | None:
        """The KV cache as vLLM laid it out at start-up: `blocks` in the shared pool, `block_size` tokens
        each, `groups` (hybrid models such as Gemma3 keep sliding-window and full-attention layers in
        separate groups that draw from the pool), vLLM's own capacity in `tokens` (requests of
        max_model_len that fit, times max_model_len) and the `dtype` it serves in. None where the engine core runs in another process."""
        core = getattr(self.llm.llm_engine.engine_core, "engine_core", None)  # in-process client only
        if core is None:
            return None
        kv = core.scheduler.kv_cache_config
        cache = self.llm.llm_engine.vllm_config.cache_config
        return {
            "blocks": kv.num_blocks,
            "block_size": cache.block_size,
            "groups": len(kv.kv_cache_groups),
            "tokens": getattr(cache, "kv_cache_size_tokens", None),
            "dtype": str(self.llm.llm_engine.vllm_config.model_config.dtype).removeprefix("torch."),
        }

    # ---- adapters -------------------------------------------------------------------------------
    @property
    def adapter_version(self) -> int:
        return self.adapter.version

    @property
    def adapter_scratch(self) -> str | None:
        """This engine's folder in the node-local `rollout.adapter_dir` (None: merged weights, no files)."""
        return getattr(self.adapter, "folder", None)

    @property
    def adapter_path(self) -> str | None:
        """The folder vLLM loaded the live adapter version from (None: merged, or none pushed yet)."""
        return getattr(self.adapter, "live_path", None)

    def load_adapter(self, adapter: AdapterWeights) -> int:
        if self.weight_sync == "merged" and self.asleep:
            self.wake_up()  # asleep, the weights are offloaded: a reload must write into the live ones
        self.adapter.install(adapter)
        return self.adapter.version

    # ---- colocation ---------------------------------------------------------------------------
    def sleep(self) -> bool:
        """Free accelerator memory for the training phase (level 1: weights kept in host memory)."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True
        return self.asleep

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # ---- generation ---------------------------------------------------------------------------
    def render(self, prompt: RolloutPrompt) -> str:
        return self.processor.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)

    def sampling_params(self, sampling: SamplingConfig):
        from vllm import SamplingParams

        if sampling.greedy:
            return SamplingParams(
                n=1,
                temperature=0.0,
                max_tokens=sampling.max_tokens,
                logprobs=0,
                ignore_eos=sampling.ignore_eos,
            )
        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            logprobs=0,
            seed=sampling.seed,
            ignore_eos=sampling.ignore_eos,
            logit_bias=self.banned_token_bias or None,
        )

    def _prepare(self, prompt: RolloutPrompt) -> tuple[str, dict]:
        n_parts = sum(
            1
            for m in prompt.messages
            for part in (m.get("content") if isinstance(m.get("content"), list) else [])
            if isinstance(part, dict) and part.get("type") == "image"
        )
        if n_parts != len(prompt.images):
            raise ValueError(
                f"messages have {n_parts} image part(s) but {len(prompt.images)} image(s) were sent"
            )
        text = self.render(prompt)
        request: dict = {"prompt": text}
        if prompt.images:
            request["multi_modal_data"] = {"image": [decode_image(b) for b in prompt.images]}
        return text, request

    def generate(self, prompts: list[RolloutPrompt], sampling: SamplingConfig) -> list[RolloutGroup]:
        """Sample a group per prompt with the live adapter. A bad prompt fails alone, with its error."""
        if self.asleep:
            self.wake_up()
        version, lora = self.adapter.version, self.adapter.request
        params = self.sampling_params(sampling)
        groups: list[RolloutGroup | None] = [None] * len(prompts)
        ready: list[tuple[int, str, dict]] = []
        for i, prompt in enumerate(prompts):
            try:
                text, request = self._prepare(prompt)
                ready.append((i, text, request))
            except Exception as exc:
                groups[i] = RolloutGroup(prompt.prompt_id, "", [], version, error=str(exc))
        try:
            outputs = self._run([r for _, _, r in ready], params, lora)
        except Exception as exc:  # one bad item (e.g. over the context length) fails the batch: isolate it
            log.warning("batch failed (%s); retrying item by item", exc)
            outputs = []
            for _, _, request in ready:
                try:
                    outputs.append(self._run([request], params, lora)[0])
                except Exception as item_exc:
                    outputs.append(item_exc)
        for (i, text, _), out in zip(ready, outputs, strict=True):
            pid = prompts[i].prompt_id
            if isinstance(out, Exception):
                groups[i] = RolloutGroup(pid, text, [], version, error=f"{type(out).__name__}: {out}")
            else:
                groups[i] = RolloutGroup(pid, text, [_completion(c) for c in out.outputs], version)
        return groups  # type: ignore[return-value]

    def _run(self, requests: list[dict], params, lora):
        return self.llm.generate(requests, params, lora_request=lora, use_tqdm=False)

    def close(self) -> None:
        self.adapter.close()


def _completion(output) -> Completion:
    token_ids = list(output.token_ids)
    logprobs = [entry[tok].logprob for tok, entry in zip(token_ids, output.logprobs or [], strict=False)]
    return Completion(output.text, token_ids, logprobs, str(output.finish_reason))
