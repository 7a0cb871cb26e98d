"""One GRPO run as the controller (trainer/loop.py) and the modules of its step (filtering, prefilter,
periodic evaluation) share it: `Run` holds the config, the data (`RunData`) and the actors, and where the
run stands; beside it the phase timer and the run's files written at its start and at each checkpoint.

The config is the run's own: `grpo.model` (the policy's base, also the KL reference), `grpo.run_dir` and
`grpo.run_id` are read from it, never copied.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chexrl.config import ChexrlConfig
from chexrl.core.samples import XraySample
from chexrl.run_files import atomic_write_text
from rollout_worker.router import RolloutRouter
from services.evaluator.client import EvaluatorClient
from trainer.checkpoint import save_checkpoint
from trainer.learner_group import LearnerGroup
from trainer.placement import Placement, placement_record
from trainer.sampler import PromptCursor

NamedSamples = tuple[str, list[XraySample]]  # (the set's name in logs and reports, its samples)


@dataclass(frozen=True)
class HeldOutSets:
    """What is evaluated during training (`grpo.eval_steps`): the held-out in-distribution set and one
    out-of-distribution set per other site. Both or neither, by construction."""

    id_set: NamedSamples
    ood_sets: list[NamedSamples]


@dataclass(frozen=True)
class RunData:
    """A run's samples: the RL set the prompts are drawn from (by index) and, optionally, the held-out
    sets evaluated during training."""

    samples: list[XraySample]
    held_out: HeldOutSets | None = None


@dataclass
class Run:
    """A started GRPO run: config, data, actors and clients, and where it stands. `start_run`
    (trainer/start.py) builds it; every phase of a step takes it."""

    cfg: ChexrlConfig
    data: RunData
    router: RolloutRouter
    learner: LearnerGroup  # one learner actor, or grpo.learners ranks (trainer/learner_group.py)
    client: EvaluatorClient
    cursor: PromptCursor
    messages: list[dict]
    images: list[bytes]  # the RL set's images as prompts carry them, by sample index
    start: int = 0  # the step the run starts from (0, or the resumed checkpoint's)
    # the sample indices the cursor draws (the prefilter's kept images, trainer/prefilter.py); None: all
    pool: list[int] | None = None
    placement: Placement | None = None  # the bundles the actors run in (trainer/placement.py)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.grpo.run_dir)

    @property
    def run_id(self) -> str:
        return self.cfg.grpo.resolved_run_id

    @property
    def samples(self) -> list[XraySample]:
        return self.data.samples

    def close(self) -> None:
        self.client.close()
        self.router.shutdown()
        self.learner.close()
        if self.placement is not None:
            self.placement.remove()


@dataclass
class PhaseTimer:
    """Wall time per named phase of a step (`time/<phase>`); a phase entered twice adds up."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()}


def write_run_config(cfg: ChexrlConfig) -> None:
    """`RUN_DIR/config.yaml`: the resolved configuration this run trains with (the report shows it)."""
    import yaml

    data = cfg.model_dump(mode="json")
    data["grpo"]["run_id"] = cfg.grpo.resolved_run_id
    run_dir = Path(cfg.grpo.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))


# what placement.json keeps of a rollout worker's info()
WORKER_PLACEMENT_KEYS = (
    "node_id", "node_ip", "pid", "weight_sync", "adapter_version", "adapter_scratch", "adapter_path",
)  # fmt: skip


def write_placement(run: Run) -> None:
    """`RUN_DIR/placement.json`: where each rollout worker and learner rank runs (node id and IP, process
    id, bundle) and, for each worker, the adapter version it serves and the node-local folder it was
    loaded from. Written when the actors are up and again when the run ends."""
    workers = [{k: info[k] for k in WORKER_PLACEMENT_KEYS} for info in run.router.info()]
    plan = run.placement.plan if run.placement is not None else None
    record = placement_record(plan, workers, run.learner.nodes())  # run_dir exists: write_run_config made it
    atomic_write_text(run.run_dir / "placement.json", json.dumps(record, indent=1) + "\n")


def save_run_checkpoint(run: Run, step: int) -> None:
    meta = {"cursor": run.cursor.state(), "window": run.client.get_window(run.run_id), "run_id": run.run_id}
    save_checkpoint(run.run_dir / "checkpoints", step, run.learner.state(), meta)
