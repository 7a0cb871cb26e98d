"""Stage manifests and atomic stage outputs.

A stage's manifest (RUN_DIR/.chexrl/STAGE.json) holds a hash of the stage's configuration section and of
its inputs' hashes: a rerun skips a stage whose manifest holds the hash the current configuration gives.
While a stage runs, RUN_DIR/.chexrl/STAGE.running holds the hash it runs under: a rerun under the same hash
resumes it (stages that can), any other hash starts it over. Outputs of stages that cannot resume are written
under a temporary name, fsynced and renamed into place, so a kill leaves the old output or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from chexrl.run_files import atomic_write_text, fsync_dir

STATE_DIR = ".chexrl"
PARTIAL = ".partial"


def section_hash(section: object, inputs: dict[str, str]) -> str:
    """sha256 of a stage's configuration section (JSON, keys sorted) and its inputs' hashes."""
    text = json.dumps({"section": section, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_path(out: Path, stage: str) -> Path:
    return out / STATE_DIR / f"{stage}.json"


def running_path(out: Path, stage: str) -> Path:
    return out / STATE_DIR / f"{stage}.running"


def read_manifest(out: Path, stage: str) -> dict | None:
    path = manifest_path(out, stage)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_stages(out: Path) -> list[dict]:
    """The manifests of every finished stage under `out`, in the order they finished."""
    found = [read_manifest(out, path.stem) for path in (out / STATE_DIR).glob("*.json")]
    return sorted((m for m in found if m), key=lambda m: m.get("finished", 0.0))


def running_hash(out: Path, stage: str) -> str | None:
    """The hash an interrupted run of `stage` ran under (None: it was not interrupted)."""
    try:
        return json.loads(running_path(out, stage).read_text())["hash"]
    except (OSError, ValueError, KeyError):
        return None


def mark_running(out: Path, stage: str, digest: str) -> None:
    """Forget the stage's manifest (its outputs are about to change) and record the hash it runs under."""
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    manifest_path(out, stage).unlink(missing_ok=True)
    atomic_write_text(running_path(out, stage), json.dumps({"hash": digest, "started": time.time()}))


def write_manifest(out: Path, stage: str, digest: str, inputs: dict[str, str], info: dict) -> dict:
    """Record a finished stage (after its outputs are in place) and clear its running mark."""
    manifest = {"stage": stage, "hash": digest, "inputs": inputs, "finished": time.time(), **info}
    atomic_write_text(manifest_path(out, stage), json.dumps(manifest, indent=2, default=str) + "\n")
    running_path(out, stage).unlink(missing_ok=True)
    return manifest


def partial(path: Path) -> Path:
    """Where an atomic output is written before it is renamed into place."""
    return path.with_name(path.name + PARTIAL)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` (or `path` itself) and every folder, children first."""
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def commit(path: Path) -> None:
    """Move `partial(path)` into place: fsync it, swap it in with renames, then drop the old output."""
    staged = partial(path)
    fsync_tree(staged)
    stale = path.with_name(path.name + ".stale")
    remove(stale)
    if path.exists():
        os.replace(path, stale)
    os.replace(staged, path)
    fsync_dir(path.parent)
    remove(stale)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
