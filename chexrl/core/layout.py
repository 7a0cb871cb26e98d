"""Where a GRPO run's actors go: one placement bundle per GPU, and each actor's share of its bundle.

Two layouts (`grpo.layout`):

- `colocated`: each GPU holds one rollout worker and one learner rank, which take turns (the engine sleeps
  while the learner trains). `rollout.num_workers` equals `grpo.learners`; that many GPUs.
- `split`: rollout workers and learner ranks get GPUs of their own (no sleep needed, both stay resident);
  `rollout.num_workers + grpo.learners` GPUs.

Pinned to nodes: `grpo.rollout_resource` and `grpo.learner_resource` name Ray custom resources (those a
node is started with, `ray start --resources '{"chexrl_rollout": 4}'`); every bundle asks one unit of the
first per rollout worker it holds and one of the second per learner rank, so Ray places the bundles only
on nodes that have them.

Pure data: the config validates a layout with `layout_problem` and the resource names with
`resource_name_problem`, the trainer turns `plan_layout`'s bundles into a Ray placement group
(trainer/placement.py), and `chexrl plan` sizes each GPU from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Layout = Literal["colocated", "split"]
LAYOUTS: tuple[str, ...] = ("colocated", "split")

# Ray's own resource names, lower-cased (ray start --num-cpus/--num-gpus/--memory set them, Ray 2.60 detects
# the accelerators, placement groups use "bundle"): a pin of that name would count CPUs or devices
RAY_RESOURCES = frozenset(
    {"cpu", "gpu", "memory", "object_store_memory", "tpu", "npu", "hpu", "neuron_cores", "rbln", "furiosa",
     "ttnpu", "mblt", "bundle"}
)  # fmt: skip
_RESOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


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

    @property
    def custom_resources(self) -> list[str]:
        """The custom resources (node pins) the bundles ask for, in order of first appearance."""
        names = [k for b in self.bundles for k in b if k not in ("CPU", "GPU")]
        return list(dict.fromkeys(names))


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


def resource_name_problem(name: str) -> str | None:
    """Why `name` cannot pin bundles to nodes as a Ray custom resource; None when it can."""
    if not _RESOURCE_NAME.fullmatch(name):
        return (
            f"{name!r} is not a custom resource name: a letter, then letters, digits, '_', '.' or '-' "
            "(e.g. chexrl_rollout)"
        )
    if name.lower() in RAY_RESOURCES or "_group_" in name:
        return f"{name!r} is one of Ray's own resources: name a custom one (e.g. chexrl_rollout)"
    return None


def plan_layout(
    layout: str,
    workers: int,
    learners: int,
    *,
    gpus: bool,
    rollout_resource: str | None = None,
    learner_resource: str | None = None,
) -> LayoutPlan:
    """The bundles and slots of a layout; `gpus` False (a CPU cluster) asks for CPUs only, one bundle per
    would-be GPU, so that the same grouping is exercised without a device. `rollout_resource` and
    `learner_resource`: custom resources a bundle asks one unit of per rollout worker, resp. learner
    rank, it holds (None: no pin)."""
    problem = layout_problem(layout, workers, learners)
    if problem:
        raise ValueError(problem)
    gpu = 1.0 if gpus else 0.0
    if layout == "colocated":
        # half a GPU each: Ray places both on the bundle's device; vLLM's gpu_memory_utilization and
        # sleep mode, not Ray, share its memory
        pins = [rollout_resource, learner_resource]
        bundles = [_bundle(gpu, cpus=2, pins=pins) for _ in range(learners)]
        share = gpu / 2
        return LayoutPlan(
            layout,
            bundles,
            workers=[Slot(i, share) for i in range(workers)],
            learners=[Slot(i, share) for i in range(learners)],
        )
    bundles = [_bundle(gpu, cpus=1, pins=[rollout_resource]) for _ in range(workers)]
    bundles += [_bundle(gpu, cpus=1, pins=[learner_resource]) for _ in range(learners)]
    return LayoutPlan(
        layout,
        bundles,
        workers=[Slot(i, gpu) for i in range(workers)],
        learners=[Slot(workers + r, gpu) for r in range(learners)],
    )


def _bundle(gpu: float, *, cpus: float, pins: list[str | None]) -> dict[str, float]:
    bundle = {"CPU": cpus, "GPU": gpu} if gpu else {"CPU": cpus}
    for name in pins:
        if name is not None:  # one unit per actor: the same name for both roles asks two when colocated
            bundle[name] = bundle.get(name, 0.0) + 1.0
    return bundle
