"""Per-step metrics of a run: one JSON line per step (metrics.jsonl) and TensorBoard scalars.

Keys are namespaced (`reward/...`, `loss/...`, `time/...`, `eval/...`). Steps count from 1; resuming from
a checkpoint taken after step k drops logged steps after k first, so the log never holds a step twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class RunLog:
    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop a line torn by a kill, so the next one starts on its own line
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                self.path.write_text(text[: text.rfind("\n") + 1])
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - held open for the run
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(
            log_dir=str(Path(run_dir) / "tensorboard"),
            purge_step=None if resume_step is None else resume_step + 1,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        for key, value in metrics.items():
            self._tb.add_scalar(key, float(value), step)

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line: drop it


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete line of the run's metrics log (a line torn by a kill is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
