"""Atomic checkpoints: a checkpoint directory is complete or absent, never torn.

Each save writes `step-NNNNNN.tmp/`, fsyncs every file and the directory, renames it to `step-NNNNNN/`
(rename is atomic on POSIX), then rewrites `latest` (a one-line pointer, also via write-temp-and-rename).
A SIGKILL at any point leaves either the previous `latest` or the new one, each pointing at a complete
directory; leftover `*.tmp` directories are ignored and cleaned on the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_bytes(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(root: str | Path, step: int, tensors_state: dict, meta: dict, keep: int = 2) -> Path:
    """Write `tensors_state` (torch-serialisable) and `meta` (JSON) as checkpoint `step` under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    tmp.mkdir()
    state_path = tmp / "state.pt"
    torch.save(tensors_state, state_path)
    with open(state_path, "rb+") as f:
        os.fsync(f.fileno())
    _write_bytes(tmp / "meta.json", json.dumps({**meta, "step": step}, indent=2, sort_keys=True).encode())
    _fsync_dir(tmp)
    if final.exists():  # a re-save of the same step after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    _prune(root, keep, protect=final.name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The directory `latest` points at, or None when there is no complete checkpoint."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "meta.json").exists() and (path / "state.pt").exists() else None


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    meta = json.loads((path / "meta.json").read_text())
    return state, meta
