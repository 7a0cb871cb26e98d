"""Ray actors: `RolloutWorker` hosts a `RolloutEngine`; `AdapterRegistry` remembers the latest adapter.

Recovery: workers are created with `max_restarts` and `max_task_retries`, so when a worker process dies
Ray starts a new one and re-sends the calls that were in flight. The new process restores the latest
adapter from the registry in `__init__`, before Ray lets any call reach it, so no request is ever served
by a stale policy after a restart.
"""

from __future__ import annotations

import os

import ray

from chexrl.config import RolloutConfig, SamplingConfig
from chexrl.models.adapter_io import AdapterWeights
from chexrl.models.vllm_env import actor_env
from rollout_worker.types import RolloutError, RolloutGroup, RolloutPrompt


def node_of_this_process() -> dict:
    """Where the calling Ray worker process runs: its node's id and IP address, and its process id."""
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
    }


@ray.remote(num_cpus=0)
class AdapterRegistry:
    """The latest adapter version and a reference to its weights in Ray's object store."""

    def __init__(self) -> None:
        self._version = 0
        self._weights: list = []  # [ObjectRef]: wrapped in a list so Ray does not resolve it

    def publish(self, version: int, weights: list) -> None:
        if version <= self._version:
            raise ValueError(f"version {version} is not newer than {self._version}")
        self._version, self._weights = version, weights

    def latest(self) -> tuple[int, list]:
        return self._version, self._weights


class RolloutWorker:
    """A vLLM engine in its own process. Created through `RolloutWorker.spawn`."""

    def __init__(self, cfg: dict, registry=None) -> None:
        # Imported here: the engine pulls in vLLM, which only the worker process needs.
        from rollout_worker.engine import RolloutEngine

        self.engine = RolloutEngine(RolloutConfig.model_validate(cfg))
        self.registry = registry
        self.restored_version = self._sync_from_registry()

    def _sync_from_registry(self) -> int:
        if self.registry is None:
            return self.engine.adapter_version
        version, weights = ray.get(self.registry.latest.remote())
        if version > self.engine.adapter_version:
            self.engine.load_adapter(ray.get(weights[0]))
        return self.engine.adapter_version

    def generate(
        self, prompts: list[RolloutPrompt], sampling: SamplingConfig, expected_version: int | None = None
    ) -> list[RolloutGroup]:
        if expected_version is not None and self.engine.adapter_version != expected_version:
            self._sync_from_registry()
            if self.engine.adapter_version != expected_version:
                raise RolloutError(
                    f"worker serves adapter v{self.engine.adapter_version}, caller expects v{expected_version}"
                )
        return self.engine.generate(prompts, sampling)

    def load_adapter(self, adapter: AdapterWeights) -> int:
        return self.engine.load_adapter(adapter)

    def sleep(self) -> bool:
        return self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        """Remove this worker's adapter scratch folder (a plain `ray.kill` skips exit handlers)."""
        self.engine.close()

    def info(self) -> dict:
        return {
            **node_of_this_process(),
            "adapter_version": self.engine.adapter_version,
            # this node's scratch folder and the live adapter's folder in it (None: weight_sync merged)
            "adapter_scratch": self.engine.adapter_scratch,
            "adapter_path": self.engine.adapter_path,
            "restored_version": self.restored_version,
            "engine_start_seconds": self.engine.start_seconds,
            "sleep_enabled": self.engine.sleep_enabled,
            "weight_sync": self.engine.weight_sync,
            "kv_cache": self.engine.kv_cache_layout(),
        }

    @staticmethod
    def spawn(
        cfg: RolloutConfig,
        registry=None,
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        scheduling_strategy=None,
    ):
        """Start one worker actor with restart and retry policies from `cfg` (in a placement group's
        bundle when `scheduling_strategy` names one)."""
        # vLLM's engine core in the actor process, its CPU KV cache and threads (chexrl/models/vllm_env.py)
        env = actor_env(cfg.kv_cache_gib, cfg.num_threads)
        actor = ray.remote(RolloutWorker).options(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            scheduling_strategy=scheduling_strategy,
            max_restarts=cfg.max_restarts,
            max_task_retries=cfg.max_task_retries,
            runtime_env={"env_vars": env},
        )
        return actor.remote(cfg.model_dump(), registry)
