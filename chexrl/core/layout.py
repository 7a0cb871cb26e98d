"""Where a GRPO run's actors go: one placement bundle per GPU, and each actor's share of its bundle.

Two layouts (`grpo.layout`):

- `colocated`: each GPU holds one rollout worker and one learner rank, which take turns (the engine sleeps
  while the learner trains). `rollout.num_workers` equals `grpo.learners`; that many GPUs.
- `split`: rollout workers and learner ranks get GPUs of their own (no sleep needed, both stay resident);
  `rollout.num_workers + grpo.learners` GPUs.

Pure data: the config validates a layout with `layout_problem`, the trainer turns `plan_layout`'s bundles
into a Ray placement group (trainer/placement.py), and `chexrl plan` sizes each GPU from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layout = Literal["colocated", "split"]
LAYOUTS: tuple[str, ...] = ("colocated", "split")


@dataclass(frozen=True)
class Slot:
    """One actor's place: the bundle it runs in and the resources it asks for there."""

    bundle: int
    num_gpus: float
    num_cpus: float = 1.0


@dataclass(frozen=True)
class LayoutPlan:
    """The bundles of a run's placement group and the slot of every rollout worker and learner rank."""

    layout: str
    bundles: list[dict[str, float]]
    workers: list[Slot]
    learners: list[Slot]

    @property
    def gpus(self) -> int:
        return sum(int(b.get("GPU", 0)) for b in self.bundles)


def layout_problem(layout: str, workers: int, learners: int) -> str | None:
    """Why this layout cannot be placed, naming the fix; None when it can."""
    if layout not in LAYOUTS:
        return f"grpo.layout {layout!r} is not one of {', '.join(LAYOUTS)}"
    if workers < 1 or learners < 1:
        return "a run needs at least one rollout worker and one learner rank"
    if layout == "colocated" and workers != learners:
        return (
            f"grpo.layout 'colocated' puts one rollout worker and one learner rank on each GPU, so "
            f"rollout.num_workers ({workers}) must equal grpo.learners ({learners}): set both to the "
            f"number of GPUs, or use grpo.layout: split ({workers} + {learners} GPUs)"
        )
    return None


def plan_layout(layout: str, workers: int, learners: int, *, gpus: bool) -> LayoutPlan:
    """The bundles and slots of a layout; `gpus` False (a CPU cluster) asks for CPUs only, one bundle per
    would-be GPU, so that the same grouping is exercised without a device."""
    problem = layout_problem(layout, workers, learners)
    if problem:
        raise ValueError(problem)
    gpu = 1.0 if gpus else 0.0
    if layout == "colocated":
        # half a GPU each: Ray places both on the bundle's device; vLLM's gpu_memory_utilization and
        # sleep mode, not Ray, share its memory
        bundles = [_bundle(gpu, cpus=2) for _ in range(learners)]
        share = gpu / 2
        return LayoutPlan(
            layout,
            bundles,
            workers=[Slot(i, share) for i in range(workers)],
            learners=[Slot(i, share) for i in range(learners)],
        )
    bundles = [_bundle(gpu, cpus=1) for _ in range(workers + learners)]
    return LayoutPlan(
        layout,
        bundles,
        workers=[Slot(i, gpu) for i in range(workers)],
        learners=[Slot(workers + r, gpu) for r in range(learners)],
    )


def _bundle(gpu: float, *, cpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpu} if gpu else {"CPU": cpus}
