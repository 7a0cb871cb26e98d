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
        64,
        ge=2,
        description="Requests in flight; beyond it a request gets 503 at once (/healthz is exempt, so "
        "the liveness probe answers while the slots are full).",
    )
    max_connections: int = Field(
        512,
        ge=4,
        description="Open connections; a new one beyond it closes the oldest connection that is still "
        "waiting for its request headers (never one with a request in flight).",
    )
    header_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds a connection has to complete its request headers (from opening, or from "
        "its previous response); then it is closed.",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Seconds a request has to complete its body after its headers; then its connection "
        "is closed. 10 s carries the largest body (max_body_bytes) at under 7 Mbit/s.",
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
    max_runs: int = Field(
        4096, ge=1, description="Runs whose state is kept; past it the least recently used run is dropped."
    )
    run_idle_expiry_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="A run not scored or written for this many seconds is dropped (a resumed run "
        "restores its window from its checkpoint).",
    )
    max_state_bytes: int = Field(
        256 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes of stored windows and (compressed) answers; past it the least recently used "
        "runs are dropped. The database file stays within about twice this.",
    )
    reserve_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="A file of this size kept in the state directory and given up when the disk is "
        "full, so that clearing a run (DELETE) still works; writes are refused (507) while the "
        "filesystem has less free space than this.",
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
