"""What a GRPO run is made of besides its config, as typed carriers the controller (trainer/loop.py) and
the modules of its step (filtering, prefilter) share: the run's data (`GRPORun`), its actors and where it
stands (`RunParts`), the phase timer, and the run's files written at its start and at each checkpoint.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chexrl.config import ChexrlConfig
from chexrl.core.prompts import DEFAULT_PROMPT
from chexrl.core.samples import XraySample
from chexrl.run_files import atomic_write_text
from rollout_worker.router import RolloutRouter
from services.evaluator.client import EvaluatorClient
from trainer.checkpoint import save_checkpoint
from trainer.learner_group import LearnerGroup
from trainer.placement import Placement, placement_record
from trainer.sampler import PromptCursor


@dataclass(frozen=True)
class GRPORun:
    model_dir: str  # the policy's base: the merged SFT checkpoint (also the KL reference)
    samples: list[XraySample]  # the RL set
    run_dir: str
    run_id: str  # names the run at the evaluator (its nuanced-reward window)
    prompt_name: str = DEFAULT_PROMPT
    evaluator_token: str | None = None
    # (name, samples) of the held-out in-distribution and the out-of-distribution set(s, a list for several
    # sites): both or neither
    id_eval: tuple[str, list[XraySample]] | None = None
    ood_eval: tuple[str, list[XraySample]] | list[tuple[str, list[XraySample]]] | None = None

    def __post_init__(self) -> None:
        # the run-object twin of GRPOConfig's check on grpo.eval_id_data / eval_ood_data (the demo and
        # tests build runs without a config file)
        if (self.id_eval is None) != (self.ood_eval is None):
            raise ValueError("evaluation during training needs both an in- and an out-of-distribution set")


@dataclass
class RunParts:
    """What a run holds besides its config: the actors and clients, and where it stands."""

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


def write_run_config(cfg: ChexrlConfig, run: GRPORun) -> None:
    """`RUN_DIR/config.yaml`: the resolved configuration this run trains with (the report shows it)."""
    import yaml

    data = cfg.model_dump(mode="json")
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    data["grpo"].update(model=run.model_dir, run_dir=run.run_dir, run_id=run.run_id, prompt=run.prompt_name)
    atomic_write_text(Path(run.run_dir) / "config.yaml", yaml.safe_dump(data, sort_keys=False))


# what placement.json keeps of a rollout worker's info()
WORKER_PLACEMENT_KEYS = (
    "node_id", "node_ip", "pid", "weight_sync", "adapter_version", "adapter_scratch", "adapter_path",
)  # fmt: skip


def write_placement(run: GRPORun, parts: RunParts) -> None:
    """`RUN_DIR/placement.json`: where each rollout worker and learner rank runs (node id and IP, process
    id, bundle) and, for each worker, the adapter version it serves and the node-local folder it was
    loaded from. Written when the actors are up and again when the run ends."""
    workers = [{k: info[k] for k in WORKER_PLACEMENT_KEYS} for info in parts.router.info()]
    plan = parts.placement.plan if parts.placement is not None else None
    record = placement_record(plan, workers, parts.learner.nodes())
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run.run_dir) / "placement.json", json.dumps(record, indent=1) + "\n")


def save_run_checkpoint(cfg: ChexrlConfig, run: GRPORun, parts: RunParts, step: int) -> None:
    meta = {
        "cursor": parts.cursor.state(),
        "window": parts.client.get_window(run.run_id),
        "run_id": run.run_id,
    }
    save_checkpoint(Path(run.run_dir) / "checkpoints", step, parts.learner.state(), meta)
