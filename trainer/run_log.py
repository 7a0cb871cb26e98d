"""Per-step metrics of a run: one JSON line per step (metrics.jsonl) and TensorBoard scalars; optionally
every sampled completion with its reward (completions.jsonl), the first place to look when a reward
curve does not move.

Keys are namespaced: `reward/...`, `loss/...` (loss terms only), `policy/...` (entropy, clipping,
importance ratios), `optim/...` (gradient norm, learning rate), `time/...`, `eval/...`. Steps count from
1; resuming from a checkpoint taken after step k drops logged steps after k first, so no log ever holds a
step twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chexrl.run_files import read_jsonl


class RunLog:
    def __init__(
        self, run_dir: str | Path, resume_step: int | None = None, *, completions: bool = False
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = _open_step_log(self.path, resume_step)
        self._completions = (
            _open_step_log(self.path.parent / "completions.jsonl", resume_step) if completions else None
        )
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

    def log_completions(self, step: int, rows: list[dict]) -> None:
        """One line per sampled completion of the step (no-op unless the log was opened with them)."""
        if self._completions is None:
            return
        self._completions.write("".join(json.dumps({"step": step, **row}) + "\n" for row in rows))
        self._completions.flush()

    def close(self) -> None:
        self._file.close()
        if self._completions is not None:
            self._completions.close()
        self._tb.close()


def _open_step_log(path: Path, resume_step: int | None):
    """Open a JSONL log of step records for appending, without a torn last line and, when resuming from
    step k, without the records of steps after k."""
    if path.exists():  # drop a line torn by a kill, so the next one starts on its own line
        text = path.read_text()
        if text and not text.endswith("\n"):
            path.write_text(text[: text.rfind("\n") + 1])
    if resume_step is not None and path.exists():
        kept = [line for line in path.read_text().splitlines() if _step(line) <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")  # held open for the run; the caller closes it


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line: drop it


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete line of the run's metrics log (a line torn by a kill is skipped)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
