"""Several rollout workers behind one call: split a batch across them, push every adapter to all."""

from __future__ import annotations

import contextlib

import ray

from chexrl.config import RolloutConfig, SamplingConfig
from chexrl.models.adapter_io import AdapterWeights
from rollout_worker.actor import AdapterRegistry, RolloutWorker
from rollout_worker.types import RolloutError, RolloutGroup, RolloutPrompt


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one.

    >>> split_evenly([1, 2, 3, 4, 5], 2)
    [[1, 2, 3], [4, 5]]
    """
    q, r = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + q + (1 if i < r else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


class RolloutRouter:
    """The trainer's handle on its rollout workers (one by default)."""

    def __init__(
        self,
        cfg: RolloutConfig,
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        worker_options: list[dict] | None = None,
    ) -> None:
        """`worker_options`: each worker's resources and placement (`.options(...)` keys; a GRPO run's
        placement group, trainer/placement.py); None: `num_cpus` and `num_gpus` for every worker."""
        self.cfg = cfg
        self.registry = AdapterRegistry.remote()
        options = worker_options or [{"num_cpus": num_cpus, "num_gpus": num_gpus}] * cfg.num_workers
        if len(options) != cfg.num_workers:
            raise ValueError(f"{len(options)} worker placements for rollout.num_workers={cfg.num_workers}")
        self.workers = [RolloutWorker.spawn(cfg, self.registry, **opts) for opts in options]
        self.version = 0
        ray.get([w.info.remote() for w in self.workers])  # wait until every engine is up

    def generate(self, prompts: list[RolloutPrompt], sampling: SamplingConfig) -> list[RolloutGroup]:
        chunks = split_evenly(prompts, len(self.workers))
        futures = [
            w.generate.remote(chunk, sampling, self.version)
            for w, chunk in zip(self.workers, chunks, strict=True)
            if chunk
        ]
        groups = [g for part in ray.get(futures) for g in part]
        stale = [g.prompt_id for g in groups if g.adapter_version != self.version]
        if stale:
            raise RolloutError(
                f"completions for {stale} came from a stale adapter (expected v{self.version})"
            )
        return groups

    def push_adapter(self, adapter: AdapterWeights | ray.ObjectRef, version: int | None = None) -> int:
        """Install `adapter` on every worker; returns when all serve it.

        `adapter` is the weights, or a reference to them in Ray's object store (the learner actor's export:
        the workers read it from there, no copy passes through this process; give its `version` then)."""
        if isinstance(adapter, ray.ObjectRef):
            if version is None:
                raise ValueError("push_adapter: an adapter passed by reference needs its version")
            ref = adapter
        else:
            ref, version = ray.put(adapter), adapter.version  # one copy, read by every worker
        ray.get(self.registry.publish.remote(version, [ref]))
        versions = ray.get([w.load_adapter.remote(ref) for w in self.workers])
        if any(v != version for v in versions):
            raise RolloutError(f"workers report versions {versions} after pushing v{version}")
        self.version = version
        return self.version

    def sleep(self) -> None:
        ray.get([w.sleep.remote() for w in self.workers])

    def wake_up(self) -> None:
        ray.get([w.wake_up.remote() for w in self.workers])

    def info(self) -> list[dict]:
        return ray.get([w.info.remote() for w in self.workers])

    def shutdown(self) -> None:
        # let each worker clean its scratch folder first; a dead or stuck one is killed regardless
        with contextlib.suppress(Exception):
            ray.get([w.close.remote() for w in self.workers], timeout=30)
        for w in self.workers:
            ray.kill(w, no_restart=True)
        ray.kill(self.registry)
