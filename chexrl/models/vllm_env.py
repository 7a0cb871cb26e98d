"""The environment every chexrl vLLM engine starts with, set in one place (vLLM reads it at start-up).

- VLLM_CPU_KVCACHE_SPACE: the KV cache in GiB on the CPU backend, where `gpu_memory_utilization` does not
  size it (a GPU ignores the variable): `RolloutConfig.kv_cache_gib`, rounded, at least 1.
- VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core runs in the process that creates the engine. Merged
  weight sync needs it (weights are handed to the worker in memory, `collective_rpc`); in a Ray actor, a
  worker killed by SIGKILL then leaves no orphaned engine process holding memory, and Ray's restart
  brings back the whole engine.
- OMP_NUM_THREADS (rollout worker actors): Ray sets it to the actor's num_cpus (1); vLLM's CPU kernels
  would then run on one thread while an in-process engine uses every core.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

KV_CACHE = "VLLM_CPU_KVCACHE_SPACE"
MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
OMP_THREADS = "OMP_NUM_THREADS"


def vllm_env(kv_cache_gib: float, *, in_process: bool = True) -> dict[str, str]:
    """The variables an engine runs with: the CPU KV cache size and, when `in_process`, the engine core
    in the calling process."""
    env = {KV_CACHE: str(max(1, round(kv_cache_gib)))}
    if in_process:
        env[MULTIPROCESSING] = "0"
    return env


def actor_env(kv_cache_gib: float, num_threads: int | None) -> dict[str, str]:
    """A rollout worker actor's `runtime_env` variables (they replace the node's values): `vllm_env` with
    the engine core in the actor, and `num_threads` CPU threads (None: all cores)."""
    return {**vllm_env(kv_cache_gib), OMP_THREADS: str(num_threads or os.cpu_count() or 1)}


def set_vllm_env(
    kv_cache_gib: float, *, in_process: bool = True, environ: MutableMapping[str, str] | None = None
) -> None:
    """Put `vllm_env` into this process's environment (`environ`, default `os.environ`) before an engine
    starts in it. A KV cache size set by the user is kept; the engine-core switch is forced when
    `in_process` (merged weights need it)."""
    environ = os.environ if environ is None else environ
    for key, value in vllm_env(kv_cache_gib, in_process=in_process).items():
        if key == KV_CACHE:
            environ.setdefault(key, value)
        else:
            environ[key] = value
