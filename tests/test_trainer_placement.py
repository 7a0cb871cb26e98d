"""Where the GRPO actors go: colocated on one GPU when there is one, on the CPU otherwise."""

import pytest

from trainer.loop import colocated_gpu_share


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_rollout_worker_and_learner_fit_on_one_gpu(gpus):
    share = colocated_gpu_share(gpus)
    assert share > 0 and 2 * share <= 1  # one engine + the learner on a single device


def test_cpu_cluster_requests_no_gpu():
    # a GPU request on a GPU-less cluster would leave the actors pending forever
    assert colocated_gpu_share(0) == 0
