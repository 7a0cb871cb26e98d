"""Where the GRPO actors go: the layouts' bundles and shares (pure), the config-time refusal of a layout
that cannot be placed, and the placement group on a real Ray cluster (CPU bundles stand in for GPUs)."""

import time

import pytest

from chexrl.config import ChexrlConfig
from chexrl.core.layout import plan_layout


@pytest.mark.parametrize(("layout", "workers", "learners"), [("colocated", 1, 1), ("colocated", 4, 4)])
def test_colocated_gpus_hold_a_worker_and_a_learner_rank(layout, workers, learners):
    plan = plan_layout(layout, workers, learners, gpus=True)
    assert plan.gpus == learners
    for bundle in range(len(plan.bundles)):
        on_it = [s for s in plan.workers + plan.learners if s.bundle == bundle]
        assert len(on_it) == 2 and sum(s.num_gpus for s in on_it) == 1  # one engine + one rank per GPU
        assert sum(s.num_cpus for s in on_it) == plan.bundles[bundle]["CPU"]


def test_split_gives_every_worker_and_rank_a_gpu_of_its_own():
    plan = plan_layout("split", 2, 3, gpus=True)
    assert plan.gpus == 5
    slots = plan.workers + plan.learners
    assert sorted(s.bundle for s in slots) == list(range(5)) and all(s.num_gpus == 1 for s in slots)


def test_cpu_cluster_asks_for_no_gpu():
    # a GPU request on a GPU-less cluster would leave the actors pending forever
    plan = plan_layout("colocated", 1, 1, gpus=False)
    assert plan.gpus == 0 and all(s.num_gpus == 0 for s in plan.workers + plan.learners)


PINS = {"rollout_resource": "chexrl_rollout", "learner_resource": "chexrl_learner"}


def test_split_bundles_ask_for_the_custom_resource_of_the_actor_they_hold():
    plan = plan_layout("split", 1, 2, gpus=True, **PINS)
    assert plan.bundles == [
        {"CPU": 1, "GPU": 1, "chexrl_rollout": 1},
        {"CPU": 1, "GPU": 1, "chexrl_learner": 1},
        {"CPU": 1, "GPU": 1, "chexrl_learner": 1},
    ]
    assert plan.custom_resources == ["chexrl_rollout", "chexrl_learner"]
    only_learners = plan_layout("split", 1, 1, gpus=False, learner_resource="chexrl_learner")
    assert only_learners.bundles == [{"CPU": 1}, {"CPU": 1, "chexrl_learner": 1}]


def test_colocated_bundles_ask_for_both_resources_one_unit_per_actor():
    assert (
        plan_layout("colocated", 2, 2, gpus=True, **PINS).bundles
        == [{"CPU": 2, "GPU": 1, "chexrl_rollout": 1, "chexrl_learner": 1}] * 2
    )
    # one name for both roles: the bundle holds two actors that each ask one unit
    same = plan_layout(
        "colocated", 1, 1, gpus=False, rollout_resource="gpu_node", learner_resource="gpu_node"
    )
    assert same.bundles == [{"CPU": 2, "gpu_node": 2}]
    assert plan_layout("colocated", 1, 1, gpus=False).custom_resources == []


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("GPU", "Ray's own"),
        ("cpu", "Ray's own"),
        ("object_store_memory", "Ray's own"),
        ("CPU_group_0_abc", "Ray's own"),
        ("node:127.0.0.1", "not a custom resource name"),
        ("", "not a custom resource name"),
        ("chexrl rollout", "not a custom resource name"),
    ],
)
def test_ray_resource_names_cannot_pin_actors(name, why):
    with pytest.raises(ValueError, match=rf"grpo.learner_resource[\s\S]*{why}"):
        ChexrlConfig.model_validate({"grpo": {"learner_resource": name}})


def test_custom_resource_names_load():
    cfg = ChexrlConfig.model_validate({"grpo": {"layout": "split", **PINS}})
    assert (cfg.grpo.rollout_resource, cfg.grpo.learner_resource) == ("chexrl_rollout", "chexrl_learner")
    assert ChexrlConfig().grpo.rollout_resource is None


def test_a_cluster_without_the_custom_resource_is_told_how_to_start_its_nodes():
    from trainer.placement import _describe, _shortfall

    plan = plan_layout("split", 1, 2, gpus=False, **PINS)
    short = _shortfall(plan, {"CPU": 8.0, "chexrl_rollout": 1.0})
    assert "need 2 of the custom resource 'chexrl_learner' in all; the cluster's nodes have 0" in short
    assert """ray start --resources '{"chexrl_learner": 2}'""" in short
    assert _shortfall(plan, {"CPU": 8.0, "chexrl_rollout": 1.0, "chexrl_learner": 2.0}) is None
    assert _describe(plan).endswith(
        "1 bundle(s) of {CPU: 1, chexrl_rollout: 1} and 2 bundle(s) of {CPU: 1, chexrl_learner: 1}"
    )


def test_placement_record_names_each_actor_role_index_and_bundle():
    from trainer.placement import placement_record

    plan = plan_layout("split", 1, 2, gpus=False, **PINS)
    where = [{"node_id": f"n{i}", "node_ip": "127.0.0.1", "pid": i} for i in range(3)]
    record = placement_record(plan, where[:1], where[1:])
    assert record["layout"] == "split" and record["bundles"] == plan.bundles
    assert [(a["role"], a["index"], a["bundle"], a["node_id"]) for a in record["actors"]] == [
        ("rollout_worker", 0, 0, "n0"),
        ("learner_rank", 0, 1, "n1"),
        ("learner_rank", 1, 2, "n2"),
    ]
    assert placement_record(None, where[:1], where[1:2])["actors"][1]["bundle"] is None


def test_two_workers_beside_one_learner_on_one_gpu_are_refused_at_config_time():
    """Half a GPU each for two engines left no room for the learner: its step waited forever. Now the
    config names the layouts that work instead."""
    with pytest.raises(ValueError, match=r"rollout.num_workers \(2\) must equal grpo.learners \(1\).*split"):
        ChexrlConfig.model_validate({"rollout": {"model": "m", "num_workers": 2}})
    cfg = ChexrlConfig.model_validate(
        {"rollout": {"model": "m", "num_workers": 2}, "grpo": {"learners": 1, "layout": "split"}}
    )
    assert plan_layout(cfg.grpo.layout, 2, 1, gpus=True).gpus == 3


def test_a_layout_larger_than_the_cluster_fails_at_once(ray_session):
    from trainer.placement import PlacementError, reserve

    t0 = time.perf_counter()
    with pytest.raises(PlacementError, match=r"need 6 CPU in all; the cluster has 4"):
        reserve("split", 3, 3, timeout_s=60)
    assert time.perf_counter() - t0 < 5


def test_a_placement_that_does_not_happen_times_out_with_what_is_free(ray_session):
    from ray.util.placement_group import placement_group, remove_placement_group

    from trainer.placement import PlacementError, reserve

    hog = placement_group([{"CPU": 3}])  # another job holds 3 of the cluster's 4 CPUs
    ray_session.get(hog.ready(), timeout=30)
    try:
        with pytest.raises(PlacementError, match=r"not placed within grpo.placement_timeout_s=1 s"):
            reserve("colocated", 1, 1, timeout_s=1)
    finally:
        remove_placement_group(hog)
    placement = reserve("colocated", 1, 1, timeout_s=30)  # freed: the same layout now places
    try:
        assert placement.plan.bundles == [{"CPU": 2}]
        opts = placement.learner_options()[0]
        assert opts["scheduling_strategy"].placement_group_bundle_index == 0
    finally:
        placement.remove()


def test_split_engines_stay_awake_unless_asked_to_sleep():
    from trainer.start import rollout_config

    colocated = ChexrlConfig.model_validate({"grpo": {"model": "base"}})
    assert rollout_config(colocated).sleep_between_phases is None  # on with a GPU, as on one GPU
    split = ChexrlConfig.model_validate({"grpo": {"model": "base", "layout": "split"}})
    assert rollout_config(split).sleep_between_phases is False
    asked = ChexrlConfig.model_validate(
        {"rollout": {"model": "m", "sleep_between_phases": True}, "grpo": {"layout": "split"}}
    )
    assert rollout_config(asked).sleep_between_phases is True
    assert rollout_config(split).model == "base"
