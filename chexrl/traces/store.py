"""Trace files: JSONL records, crash-safe appends, torn-line repair, and stable sample ids.

One accepted trace per line:
  {"sample_id", "image", "labels", "trace", "format", "teacher", "schema"}
and one rejection per line in `<out>.rejected.jsonl`:
  {"sample_id", "image", "labels", "format", "teacher", "reason", "attempts", "detail", "last_trace"}

Each record is written as one complete line with append + flush + fsync. A process killed mid-write can
leave a torn last line (no newline, or not JSON); `repair_jsonl` truncates it before a run resumes, so
resuming never duplicates a sample and never keeps half a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from chexrl.core.schemas import TRAINING_SCHEMA


@dataclass(frozen=True)
class TraceJob:
    """One sample to write a trace for."""

    sample_id: str
    image: str
    labels: tuple[str, ...]
    schema: str = TRAINING_SCHEMA


@dataclass(frozen=True)
class TraceRecord:
    sample_id: str
    image: str
    labels: list[str]
    trace: str
    format: str
    teacher: str
    schema: str = TRAINING_SCHEMA

    def to_json(self) -> dict:
        return asdict(self)


def sample_id_for(dataset: str, study_id: str, image_path: str) -> str:
    """A stable id: dataset:study_id:image stem (a study can hold several images).

    >>> sample_id_for("mimic", "s5", "/data/p10/s5/view1.jpg")
    'mimic:s5:view1'
    """
    return f"{dataset}:{study_id}:{Path(image_path).stem}"


def image_hash_id(image_path: str) -> str:
    """Fallback id for inputs without one: a short hash of the image path."""
    return "img:" + hashlib.sha1(image_path.encode()).hexdigest()[:16]


def rejected_path(out: str | Path) -> Path:
    """`runs/traces.jsonl` -> `runs/traces.rejected.jsonl`."""
    out = Path(out)
    return out.with_name(out.stem + ".rejected" + (out.suffix or ".jsonl"))


def repair_jsonl(path: str | Path) -> int:
    """Truncate a torn last line (no trailing newline, or not valid JSON). Returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data:
        return 0
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1  # 0 when the only line is torn
    else:
        last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[last_start:])
        except ValueError:
            keep = last_start
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - keep


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Records of a JSONL file; blank lines are skipped, a torn (non-JSON) line raises."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path)) if Path(path).exists() else []


def done_ids(*paths: str | Path) -> set[str]:
    """sample_ids already final (accepted or rejected) in the given files."""
    ids: set[str] = set()
    for path in paths:
        ids.update(rec["sample_id"] for rec in read_jsonl(path))
    return ids


class JsonlAppender:
    """Appends complete lines durably; safe to share between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "ab")  # noqa: SIM115 -- closed in close()

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False).encode() + b"\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_samples_jsonl(path: str | Path, schema: str = TRAINING_SCHEMA) -> list[TraceJob]:
    """Jobs from a simple samples file: one {"image", "labels", "sample_id"?, "schema"?} per line."""
    jobs = []
    for rec in iter_jsonl(path):
        image = str(rec["image"])
        jobs.append(
            TraceJob(
                sample_id=str(rec.get("sample_id") or image_hash_id(image)),
                image=image,
                labels=tuple(rec["labels"]),
                schema=rec.get("schema", schema),
            )
        )
    return jobs


def jobs_from_samples(samples: list) -> list[TraceJob]:
    """Jobs from chexrl.core.samples.XraySample objects."""
    return [
        TraceJob(sample_id_for(s.dataset, s.study_id, s.image_path), s.image_path, tuple(s.labels), s.schema)
        for s in samples
    ]
