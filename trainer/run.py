"""What a GRPO run is made of besides its config, as typed carriers the controller (trainer/loop.py) and
the modules of its step (filtering, prefilter) share: the run's data (`GRPORun`), its actors and where it
stands (`RunParts`), the driver's handle on the learner actor, the phase timer, and the run's files
written at its start and at each checkpoint.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ray

from chexrl.config import ChexrlConfig
from chexrl.core.prompts import DEFAULT_PROMPT
from chexrl.core.samples import XraySample
from chexrl.models.adapter_io import AdapterWeights
from chexrl.run_files import atomic_write_text
from rollout_worker.router import RolloutRouter
from services.evaluator.client import EvaluatorClient
from trainer.checkpoint import save_checkpoint
from trainer.grpo import TrainingExample
from trainer.sampler import PromptCursor


@dataclass(frozen=True)
class GRPORun:
    model_dir: str  # the policy's base: the merged SFT checkpoint (also the KL reference)
    samples: list[XraySample]  # the RL set
    run_dir: str
    run_id: str  # names the run at the evaluator (its nuanced-reward window)
    prompt_name: str = DEFAULT_PROMPT
    evaluator_token: str | None = None
    # (name, samples) of the held-out in-distribution and the out-of-distribution set: both or neither
    id_eval: tuple[str, list[XraySample]] | None = None
    ood_eval: tuple[str, list[XraySample]] | None = None

    def __post_init__(self) -> None:
        # the run-object twin of GRPOConfig's check on grpo.eval_id_data / eval_ood_data (the demo and
        # tests build runs without a config file)
        if (self.id_eval is None) != (self.ood_eval is None):
            raise ValueError("evaluation during training needs both an in- and an out-of-distribution set")


class LearnerHandle:
    """The driver's view of the learner actor: one blocking verb per phase (`ray.get` only here)."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def step(self, examples: list[TrainingExample], rewards: list[float], group_size: int) -> dict:
        return ray.get(self.actor.step.remote(examples, rewards, group_size))

    def export(self, version: int) -> ray.ObjectRef:
        """The adapter as a reference into Ray's object store: the weights go from the learner's process
        to the rollout workers' without a copy through the driver (`RolloutRouter.push_adapter`)."""
        return self.actor.export.remote(version)

    def weights(self, adapter: ray.ObjectRef) -> AdapterWeights:
        """The exported adapter's weights in the driver, for what writes them to disk."""
        return ray.get(adapter)

    def state(self) -> dict:
        return ray.get(self.actor.state.remote())

    def load_state(self, state: dict) -> None:
        ray.get(self.actor.load_state.remote(state))

    def close(self) -> None:
        ray.kill(self.actor)


@dataclass
class RunParts:
    """What a run holds besides its config: the actors and clients, and where it stands."""

    router: RolloutRouter
    learner: LearnerHandle
    client: EvaluatorClient
    cursor: PromptCursor
    messages: list[dict]
    images: list[bytes]  # the RL set's images as prompts carry them, by sample index
    start: int = 0  # the step the run starts from (0, or the resumed checkpoint's)
    # the sample indices the cursor draws (the prefilter's kept images, trainer/prefilter.py); None: all
    pool: list[int] | None = None


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


def save_run_checkpoint(cfg: ChexrlConfig, run: GRPORun, parts: RunParts, step: int) -> None:
    meta = {
        "cursor": parts.cursor.state(),
        "window": parts.client.get_window(run.run_id),
        "run_id": run.run_id,
    }
    save_checkpoint(Path(run.run_dir) / "checkpoints", step, parts.learner.state(), meta)
