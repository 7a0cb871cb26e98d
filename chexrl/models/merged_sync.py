"""Merged-weight sync for vLLM 0.32: the adapter still travels, the worker folds it into the base weights.

A pushed adapter's `W0 + (alpha / r) * B @ A` is computed here, per targeted projection, from a host copy
of the base checkpoint's projections (`W0`, never the live weights, so no rounding accumulates across
versions), and reloaded in place into the engine (`reload_weights`: layers whose weights are not sent
keep theirs; packed CPU kernels are rebuilt for those that are). The prefix cache is then reset, since
its KV entries were computed by the previous weights.

Why: the engine then runs without LoRA layers. On vLLM's CPU backend a live LoRA halves decode
throughput (see the README's `chexrl bench step`); TRL's colocate mode syncs PEFT models the same way.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

from chexrl.models.adapter_io import AdapterWeights
from chexrl.models.loading import load_model

PEFT_PREFIX = "base_model.model."
# Adapter features this slot cannot fold into plain weights: a clear error instead of a silent mismatch.
UNSUPPORTED = ("use_dora", "trainable_token_indices", "modules_to_save", "rank_pattern", "alpha_pattern")


def lora_modules(adapter: AdapterWeights) -> dict[str, tuple]:
    """{module name as transformers names it in memory: (A, B)} of a PEFT LoRA state dict."""
    for key in UNSUPPORTED:
        if adapter.config.get(key):
            raise ValueError(f"merged weight sync cannot fold an adapter with {key}={adapter.config[key]!r}")
    modules: dict[str, tuple] = {}
    for key in adapter.tensors:
        if not key.startswith(PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"merged weight sync: unexpected adapter tensor {key!r} (plain LoRA only)")
        if key.endswith(".lora_A.weight"):
            name = key[len(PEFT_PREFIX) : -len(".lora_A.weight")]
            b_key = key[: -len("lora_A.weight")] + "lora_B.weight"
            if b_key not in adapter.tensors:
                raise ValueError(f"merged weight sync: adapter has {key!r} but no {b_key!r}")
            modules[name] = (adapter.tensors[key], adapter.tensors[b_key])
    if not modules:
        raise ValueError("merged weight sync: the adapter holds no LoRA tensors")
    return modules


def lora_scale(config: dict) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    rank, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def merged_weights(base: dict, adapter: AdapterWeights, dtype=None) -> list[tuple[str, object]]:
    """[(name, merged weight)] for every module the adapter targets, in `dtype` (default: the base's).

    Computed in float32 and rounded once: the engine may run in bf16 from a float32 checkpoint, and
    W0 + BA rounded to bf16 is closer to the trainer's policy than bf16 W0 plus a bf16 LoRA path."""
    scale = lora_scale(adapter.config)
    out = []
    for name, (a, b) in lora_modules(adapter).items():
        w0 = base.get(name)
        if w0 is None:
            raise ValueError(f"merged weight sync: the base checkpoint has no projection {name!r}")
        delta = b.float() @ a.float()
        if delta.shape != w0.shape:
            raise ValueError(
                f"merged weight sync: {name}: B @ A is {tuple(delta.shape)}, base is {tuple(w0.shape)}"
            )
        out.append((name + ".weight", (w0.float() + scale * delta).to(dtype or w0.dtype)))
    return out


class MergedWeightsSlot:
    """Same contract as `AdapterSlot` (install a newer version, `version`, `request`), with no LoRA request:
    the engine serves the merged weights to every request."""

    request = None

    def __init__(self, llm, model_dir: str) -> None:
        self._llm = llm
        self._model_dir = model_dir
        self._base: dict = {}
        self.version = 0

    def _base_weights(self, names: list[str]) -> dict:
        """Host copies of the base projections `names` (read once from the checkpoint, then kept)."""
        if any(n not in self._base for n in names):
            model = load_model(self._model_dir)  # in memory names = the adapter's module names
            modules = dict(model.named_modules())
            for n in names:
                if n in modules and hasattr(modules[n], "weight"):
                    self._base[n] = modules[n].weight.detach().clone()
            del model
        return self._base

    def install(self, adapter: AdapterWeights) -> None:
        if adapter.version == self.version:
            return
        if adapter.version < self.version:
            raise ValueError(f"adapter version {adapter.version} is older than live version {self.version}")
        names = list(lora_modules(adapter))
        engine = self._llm.llm_engine
        weights = merged_weights(self._base_weights(names), adapter, engine.model_config.dtype)
        with _quiet_partial_reload():
            self._llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True}
            )
        # KV blocks of the prefix cache were computed by the old weights. The reload also empties the
        # runner's encoder cache, so the scheduler's record of it must go too (or it expects hits).
        self._llm.reset_prefix_cache()
        engine.reset_encoder_cache()
        self.version = adapter.version

    def close(self) -> None:
        self._base.clear()


@contextmanager
def _quiet_partial_reload():
    """vLLM warns, per layer and on every reload, that the layers we deliberately did not send (norms,
    embeddings, the vision tower) 'failed to load'. They keep their weights; the warnings are noise."""
    names = (
        "vllm.model_executor.model_loader.reload.layerwise",
        "vllm.model_executor.model_loader.reload.inplace",
    )
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
