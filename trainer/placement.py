"""A run's Ray placement group: one bundle per GPU of its layout (chexrl/core/layout.py), reserved before
any actor starts, so that a layout the cluster cannot hold fails at once with what is missing instead of
leaving actors pending forever.

Bundles are packed onto as few nodes as the cluster allows and spread past one node when they must
(Ray's PACK strategy): a two-node cluster holds a layout one node cannot. Bundles that ask for a custom
resource (`grpo.rollout_resource`, `grpo.learner_resource`) go only to the nodes started with it.
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


def placement_record(plan: LayoutPlan | None, workers: list[dict], learners: list[dict]) -> dict:
    """RUN_DIR/placement.json's content: the bundles asked for, and every actor's role, index, bundle and
    node as the actor itself reports it (`workers`: RolloutWorker.info(), `learners`: LearnerGroup.nodes(),
    in order). `plan` None: actors started without a placement group."""
    actors = []
    for role, infos, slots in (
        ("rollout_worker", workers, plan.workers if plan else None),
        ("learner_rank", learners, plan.learners if plan else None),
    ):
        for i, info in enumerate(infos):
            bundle = slots[i].bundle if slots else None
            actors.append({"role": role, "index": i, "bundle": bundle, **info})
    return {
        "layout": plan.layout if plan else None,
        "bundles": plan.bundles if plan else None,
        "actors": actors,
    }


def reserve(
    layout: str,
    workers: int,
    learners: int,
    *,
    timeout_s: float,
    rollout_resource: str | None = None,
    learner_resource: str | None = None,
) -> Placement:
    """Reserve the layout's bundles on the connected cluster: GPU bundles when it has GPUs, CPU bundles
    otherwise, each with the custom resources that pin its actors to nodes. Raises PlacementError at once
    when the cluster's totals are short, and after `timeout_s` when the bundles still are not placed
    (resources held by other jobs, a node gone)."""
    totals = ray.cluster_resources()
    plan = plan_layout(
        layout,
        workers,
        learners,
        gpus=totals.get("GPU", 0.0) >= 1,
        rollout_resource=rollout_resource,
        learner_resource=learner_resource,
    )
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
            f"cluster has {_cluster(ray.available_resources(), plan)} free of {_cluster(totals, plan)}"
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
    for name in plan.custom_resources:
        need = sum(b.get(name, 0.0) for b in plan.bundles)
        if need > totals.get(name, 0.0):
            return (
                f"need {need:g} of the custom resource {name!r} in all; the cluster's nodes have "
                f"{totals.get(name, 0.0):g}: start the nodes meant for them with "
                f"`ray start --resources '{{\"{name}\": {need:g}}}'` (units over all nodes), or unset "
                "grpo.rollout_resource / grpo.learner_resource (docs/deploy.md, 'Pinning to nodes')"
            )
    return None


def _describe(plan: LayoutPlan) -> str:
    shapes: dict[str, int] = {}  # each distinct bundle shape and how many bundles have it
    for bundle in plan.bundles:
        shape = _resources(bundle, ["GPU", "CPU", *plan.custom_resources])
        shapes[shape] = shapes.get(shape, 0) + 1
    return (
        f"grpo.layout {plan.layout!r} with {len(plan.workers)} rollout worker(s) and {len(plan.learners)} "
        f"learner rank(s): {' and '.join(f'{n} bundle(s) of {shape}' for shape, n in shapes.items())}"
    )


def _cluster(res: dict, plan: LayoutPlan) -> str:
    """The cluster's GPUs and CPUs, and the plan's custom resources (0 where no node has any left)."""
    return _resources(
        {**{n: 0.0 for n in plan.custom_resources}, **res}, ["GPU", "CPU", *plan.custom_resources]
    )


def _resources(res: dict, names: list[str] | tuple[str, ...] = ("GPU", "CPU")) -> str:
    """`res` restricted to `names`, in that order (a name `res` lacks is left out)."""
    keys = [k for k in names if k in res]
    return "{" + ", ".join(f"{k}: {res[k]:g}" for k in keys) + "}"
