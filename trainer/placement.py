"""A run's Ray placement group: one bundle per GPU of its layout (chexrl/core/layout.py), reserved before
any actor starts, so that a layout the cluster cannot hold fails at once with what is missing instead of
leaving actors pending forever.

Bundles are packed onto as few nodes as the cluster allows and spread past one node when they must
(Ray's PACK strategy): a two-node cluster holds a layout one node cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from chexrl.core.layout import LayoutPlan, Slot, plan_layout


class PlacementError(RuntimeError):
    """The cluster cannot hold the run's layout; the message names what was asked and what there is."""


@dataclass
class Placement:
    """The reserved placement group and the layout it holds."""

    plan: LayoutPlan
    group: object  # ray.util.placement_group.PlacementGroup

    def options(self, slot: Slot) -> dict:
        """`.options(...)` for the actor of `slot`: its share, pinned to its bundle."""
        return {
            "num_cpus": slot.num_cpus,
            "num_gpus": slot.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=slot.bundle
            ),
        }

    def worker_options(self) -> list[dict]:
        return [self.options(s) for s in self.plan.workers]

    def learner_options(self) -> list[dict]:
        return [self.options(s) for s in self.plan.learners]

    def remove(self) -> None:
        remove_placement_group(self.group)


def reserve(layout: str, workers: int, learners: int, *, timeout_s: float) -> Placement:
    """Reserve the layout's bundles on the connected cluster: GPU bundles when it has GPUs, CPU bundles
    otherwise. Raises PlacementError at once when the cluster's totals are short, and after `timeout_s`
    when the bundles still are not placed (resources held by other jobs, a node gone)."""
    totals = ray.cluster_resources()
    plan = plan_layout(layout, workers, learners, gpus=totals.get("GPU", 0.0) >= 1)
    short = _shortfall(plan, totals)
    if short:
        raise PlacementError(f"{_describe(plan)} {short}")
    group = placement_group(plan.bundles, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise PlacementError(
            f"{_describe(plan)} were not placed within grpo.placement_timeout_s={timeout_s:g} s; the "
            f"cluster has {_resources(ray.available_resources())} free of {_resources(totals)}"
        ) from None
    return Placement(plan, group)


def _shortfall(plan: LayoutPlan, totals: dict) -> str | None:
    """What the cluster lacks in total for the plan (more may be taken by other jobs: that the
    placement timeout catches)."""
    for name in ("GPU", "CPU"):
        need = sum(b.get(name, 0.0) for b in plan.bundles)
        if need > totals.get(name, 0.0):
            return (
                f"need {need:g} {name} in all; the cluster has {totals.get(name, 0.0):g}: add nodes, or "
                "lower rollout.num_workers / grpo.learners (docs/deploy.md, 'More than one GPU')"
            )
    return None


def _describe(plan: LayoutPlan) -> str:
    return (
        f"grpo.layout {plan.layout!r} with {len(plan.workers)} rollout worker(s) and {len(plan.learners)} "
        f"learner rank(s): {len(plan.bundles)} bundle(s) of {_resources(plan.bundles[0])}"
    )


def _resources(res: dict) -> str:
    keys = [k for k in ("GPU", "CPU") if k in res]
    return "{" + ", ".join(f"{k}: {res[k]:g}" for k in keys) + "}"
