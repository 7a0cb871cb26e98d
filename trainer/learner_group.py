"""The driver's handle on the learner: one actor (`grpo.learners: 1`, the default) or N data-parallel
learner ranks in a torch.distributed group (trainer/ranks.py).

With N ranks each step's groups are dealt out in contiguous runs of whole groups (a group never spans
ranks: its advantages are its own mean-centred rewards), every rank computes its share's loss with the
step's global Dr. GRPO divisor, and the ranks' LoRA gradients are summed before every optimizer step: the
update is the single learner's. Rank 0 exports the adapter (the rollout workers read it from the object
store by reference) and gives the checkpoint state; a checkpoint loads into every rank, whatever N wrote it.

A rank that dies fails the step at once (the driver watches every rank's call, not only rank 0's); the
others, blocked in a collective, give up after `grpo.collective_timeout_s`. The group is then torn down
and the run resumes from its last checkpoint (`run_grpo`), as a single learner's does.
"""

from __future__ import annotations

import ray

from chexrl.config import GRPOConfig
from chexrl.models.adapter_io import AdapterWeights
from rollout_worker.router import split_evenly
from trainer.grpo import GRPOLearner, TrainingExample


class LearnerRankError(RuntimeError):
    """A learner rank died or failed mid-call; the group is closed and the run resumes from a checkpoint."""


class LearnerRank(GRPOLearner):
    """A GRPO learner that can host the group's rendezvous (rank 0)."""

    def rendezvous_address(self) -> str:
        from trainer.ranks import free_address

        return free_address()

    def node(self) -> dict:
        """Where this rank runs (RUN_DIR/placement.json)."""
        from rollout_worker.actor import node_of_this_process

        return node_of_this_process()


class LearnerGroup:
    """One blocking verb per phase (`ray.get` only here); `export` returns an object reference."""

    def __init__(
        self,
        model_dir: str,
        cfg: GRPOConfig,
        *,
        temperature: float,
        max_completion_tokens: int,
        options: list[dict],
        num_threads: int | None = None,
    ) -> None:
        """`options`: each rank's `.options(...)` (its resources and bundle; trainer/placement.py)."""
        self.actors = [
            ray.remote(LearnerRank)
            .options(**opts)
            .remote(
                model_dir,
                cfg,
                temperature=temperature,
                max_completion_tokens=max_completion_tokens,
                num_threads=num_threads,
            )
            for opts in options
        ]
        if len(self.actors) > 1:
            address = self._call([self.actors[0].rendezvous_address.remote()], "rendezvous")[0]
            n = len(self.actors)
            joins = [
                a.join_ranks.remote(rank, n, address, cfg.collective_timeout_s)
                for rank, a in enumerate(self.actors)
            ]
            self._call(joins, "joining the process group")

    @property
    def size(self) -> int:
        return len(self.actors)

    def step(self, examples: list[TrainingExample], rewards: list[float], group_size: int) -> dict:
        """One update on the step's groups; the metrics of the whole step (rank 0's, which every rank
        computes from all ranks' micro-batches)."""
        if self.size == 1:  # the single learner: exactly the one-process update
            return self._call([self.actors[0].step.remote(examples, rewards, group_size)], "step")[0]
        groups = list(range(len(examples) // group_size))
        calls = []
        for rank_groups, actor in zip(split_evenly(groups, self.size), self.actors, strict=True):
            idx = [g * group_size + k for g in rank_groups for k in range(group_size)]
            calls.append(
                actor.step.remote(
                    [examples[i] for i in idx], [rewards[i] for i in idx], group_size, len(examples)
                )
            )
        return self._call(calls, "step")[0]

    def export(self, version: int) -> ray.ObjectRef:
        """The adapter as a reference into Ray's object store (rank 0's; every rank holds the same): the
        weights go from the learner's process to the rollout workers' without a copy through the driver."""
        return self.actors[0].export.remote(version)

    def weights(self, adapter: ray.ObjectRef) -> AdapterWeights:
        """The exported adapter's weights in the driver, for what writes them to disk."""
        return ray.get(adapter)

    def nodes(self) -> list[dict]:
        """Each rank's node id, node IP and process id, in rank order."""
        return self._call([a.node.remote() for a in self.actors], "node")

    def state(self) -> dict:
        return self._call([self.actors[0].state.remote()], "state")[0]

    def load_state(self, state: dict) -> None:
        ref = ray.put(state)  # one copy in the object store, read by every rank
        self._call([a.load_state.remote(ref) for a in self.actors], "load_state")

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def _call(self, refs: list, what: str) -> list:
        """Every rank's result. A rank that died, or gave up in a collective, closes the group and raises
        LearnerRankError at once (a rank waiting in a collective for a dead peer would otherwise hold
        `ray.get` until its timeout); any other error is the learner's own and raises as it is."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception as exc:
                if not _rank_failure(exc):
                    raise
                rank = refs.index(done[0])
                self.close()
                raise LearnerRankError(f"learner rank {rank} failed in {what}: {exc}") from exc
        return ray.get(refs)


def _rank_failure(exc: Exception) -> bool:
    """A dead actor, or a collective that failed or timed out (torch.distributed's errors)."""
    import torch.distributed as dist

    if isinstance(exc, ray.exceptions.RayActorError):
        return True
    return isinstance(getattr(exc, "cause", None), dist.DistError)
