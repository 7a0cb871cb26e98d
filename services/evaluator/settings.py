"""The evaluator's settings: limits, state location and the reward weights, validated once at start."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from chexrl.core.config import RewardConfig, StrictModel


class EvaluatorSettings(StrictModel):
    host: str = Field("127.0.0.1", description="Bind address; loopback unless deliberately exposed.")
    port: int = Field(8000, ge=0, le=65535)
    state_dir: str = Field(
        "runs/evaluator-state", description="Where nuanced-reward windows persist (SQLite)."
    )
    max_items_per_request: int = Field(1024, ge=1, description="Items in one /score or /evaluate request.")
    max_completion_chars: int = Field(16384, ge=1, description="Longest completion accepted.")
    max_labels_per_item: int = Field(64, ge=1, description="Most gold labels one item may list.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    max_concurrency: int = Field(
        64, ge=2, description="Open connections plus requests in flight; beyond it uvicorn answers 503."
    )
    offload_chars: int = Field(
        64 * 1024,
        ge=0,
        description="A hard-reward request with more completion characters is scored in a worker thread, "
        "off the event loop (nuanced ones always are: they wait on a run's lock and SQLite).",
    )
    max_validation_errors: int = Field(20, ge=1, description="Most errors one 422 lists (then a count).")
    max_cached_runs: int = Field(
        256, ge=1, description="Nuanced windows kept in memory (LRU; the rest in SQLite)."
    )
    answers_per_run: int = Field(
        64, ge=1, description="Stored answers per run for retried request ids (the most recent ones)."
    )
    reward: RewardConfig = Field(default_factory=RewardConfig)


def load_settings(path: str | Path | None, **overrides) -> EvaluatorSettings:
    data = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read evaluator config {path}: {exc}") from exc
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EvaluatorSettings.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid evaluator config {path or '(defaults)'}:\n{exc}") from exc
