"""The files of a run directory, read and written one way: JSONL logs read tolerantly (a line torn by a kill
is skipped, a missing file is empty) and small files replaced atomically (write a temp sibling, fsync,
rename, fsync the directory), so a reader sees the old content or the new one, never half of either."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete JSON line (a line torn by a kill is skipped); [] when the file is missing."""
    path = Path(path)
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync the file (not the directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_bytes_synced(tmp, text.encode())
    os.replace(tmp, path)
    fsync_dir(path.parent)
