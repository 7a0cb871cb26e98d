"""Atomic, verified checkpoints: a checkpoint directory is complete or absent, never torn, and it is only
ever loaded as data.

Each save writes `step-NNNNNN.tmp/` (state.pt, meta.json, then checksums.json with the SHA-256 of both),
fsyncs every file and the directory, renames it to `step-NNNNNN/` (rename is atomic on POSIX), then
rewrites `latest` (a one-line pointer, also via write-temp-and-rename). A SIGKILL at any point leaves
either the previous `latest` or the new one, each pointing at a complete directory; leftover `*.tmp`
directories are ignored and cleaned on the next save.

Loading is `torch.load(weights_only=True)`: a checkpoint holds tensors, numbers, strings, lists and dicts
only (the learner stores its RNG states as tensors), so whoever can write the checkpoint volume cannot
run code in the driver; `save_checkpoint` refuses anything else up front, naming the key. A latest
checkpoint whose bytes do not match its checksums (bit rot, a truncated copy, an edit) is skipped with a
warning for the newest older one that does match. A checkpoint directory without its state file, or a
run whose checkpoints are all corrupt, is an error: a resume never silently restarts from step 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from chexrl.run_files import atomic_write_text, fsync_dir, write_bytes_synced

log = logging.getLogger(__name__)

LATEST = "latest"
STATE = "state.pt"
META = "meta.json"
CHECKSUMS = "checksums.json"
_STEP_DIR = re.compile(r"step-\d{6,}")

# What torch.load(weights_only=True) loads besides tensors; anything else is refused at save time.
_PLAIN = (torch.Tensor, str, int, float, bool, type(None), torch.Size, torch.dtype, torch.device)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or loaded; the message names the path and the fix."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_loadable(obj, where: str = "state") -> None:
    """Raise TypeError naming the first value `torch.load(weights_only=True)` would refuse."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(f"checkpoint {where}: key {key!r} is a {type(key).__name__}, not str or int")
            check_loadable(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            check_loadable(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__name__}: a checkpoint holds only "
        "tensors, numbers, strings, lists and dicts (it is loaded with torch.load(weights_only=True))"
    )


def save_checkpoint(root: str | Path, step: int, tensors_state: dict, meta: dict, keep: int = 2) -> Path:
    """Write `tensors_state` (tensors and plain data) and `meta` (JSON) as checkpoint `step` under `root`."""
    check_loadable(tensors_state)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob("step-*.tmp"), *root.glob("step-*.deleting")]:
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    tmp.mkdir()
    state_path = tmp / STATE
    torch.save(tensors_state, state_path)
    with open(state_path, "rb+") as f:
        os.fsync(f.fileno())
    write_bytes_synced(tmp / META, json.dumps({**meta, "step": step}, indent=2, sort_keys=True).encode())
    sums = {name: _sha256(tmp / name) for name in (STATE, META)}
    write_bytes_synced(tmp / CHECKSUMS, json.dumps(sums, indent=2, sort_keys=True).encode())
    fsync_dir(tmp)
    doomed = final.with_name(final.name + ".deleting")
    if final.exists():  # a re-save of the same step after a resume: moved aside whole, never half-deleted
        os.rename(final, doomed)
    os.rename(tmp, final)
    shutil.rmtree(doomed, ignore_errors=True)
    fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    _prune(root, keep, protect=final.name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    for old in _complete_dirs(root)[keep:]:
        if old.name != protect:
            # Renamed first, so a kill during the removal never leaves a half-deleted directory that looks
            # like a checkpoint (the next save removes the leftover).
            doomed = old.with_name(old.name + ".deleting")
            os.rename(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def _complete_dirs(root: Path) -> list[Path]:
    """The renamed (complete) checkpoint directories, newest first."""
    return sorted(
        (p for p in root.glob("step-*") if p.is_dir() and _STEP_DIR.fullmatch(p.name)), reverse=True
    )


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError unless `path` holds state.pt and meta.json whose bytes match checksums.json.

    A missing state.pt is its own error: it is never a torn save (a save
    becomes visible only once complete), so something deleted it, and resuming without it would restart
    the run from step 0.
    """
    path = Path(path)
    if not (path / STATE).is_file():
        raise CheckpointError(
            f"checkpoint {path} has no {STATE}: its learner state is gone, so the run cannot resume from it. "
            f"Restore {path / STATE}, or delete {path.parent} to start the run over from step 0"
        )
    for name in (META, CHECKSUMS):
        if not (path / name).is_file():
            raise CheckpointError(
                f"checkpoint {path} has no {name} (written by an older chexrl, or a partial copy)"
            )
    try:
        sums = json.loads((path / CHECKSUMS).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {CHECKSUMS} is not valid JSON ({exc})") from exc
    for name in (STATE, META):
        actual = _sha256(path / name)
        if not isinstance(sums, dict) or sums.get(name) != actual:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its checksum in {CHECKSUMS}")


def _candidates(root: Path) -> list[Path]:
    """Checkpoints to try, best first: the one `latest` points at (or the newest directory when there is no
    pointer yet: a first save killed between its rename and the pointer's), then the older ones."""
    pointer = root / LATEST
    dirs = _complete_dirs(root)
    if not pointer.exists():
        return dirs
    name = pointer.read_text().strip()
    target = root / name
    if _STEP_DIR.fullmatch(name) and target.is_dir():
        return [target, *(d for d in dirs if d.name < target.name)]
    older = [d for d in dirs if not _STEP_DIR.fullmatch(name) or d.name < name]
    if not older:
        raise CheckpointError(
            f"{pointer} names {name!r}, which is not a checkpoint directory under {root}, and no older "
            f"checkpoint is there: restore it, or delete {root} to start the run over from step 0"
        )
    # A kill while a step was re-saved (after a fall back) can leave the pointer ahead of the directories.
    log.warning("%s names %r, which is missing; trying the previous checkpoint", pointer, name)
    return older


def _first_good(root: Path, check) -> tuple[Path, object] | None:
    """The first candidate `check` accepts (and what it returned); a corrupt one is skipped with a warning,
    one without its state file raises."""
    candidates = _candidates(root)
    if not candidates:
        return None
    errors = []
    for candidate in candidates:
        try:
            result = check(candidate)
        except CheckpointError as exc:
            if not (candidate / STATE).is_file():
                raise
            errors.append(str(exc))
            log.warning("%s; trying the previous checkpoint", exc)
            continue
        if errors:
            log.warning("resuming from %s instead of the corrupt %s", candidate.name, candidates[0].name)
        return candidate, result
    raise CheckpointError(f"no checkpoint under {root} is intact: " + "; ".join(errors))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint under `root` whose files match their checksums, None when `root` holds no
    checkpoint at all. A corrupt one is skipped with a warning for the next older; raises CheckpointError
    when a checkpoint lacks its state file or none is intact."""
    found = _first_good(Path(root), verify_checkpoint)
    return None if found is None else found[0]


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state, meta) of the checkpoint at `path`, verified against its checksums and loaded as data only."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError: all mean "not plain data"
        raise CheckpointError(
            f"checkpoint {path / STATE} does not load as plain tensors and data: {exc}"
        ) from exc
    meta = json.loads((path / META).read_text())
    return state, meta


def load_latest(root: str | Path) -> tuple[Path, dict, dict] | None:
    """(path, state, meta) of the newest checkpoint under `root` that verifies and loads, None when there is
    none. Like `latest_checkpoint` followed by `load_checkpoint`, and it also falls back past a checkpoint
    that verifies but does not load with weights_only=True (one written by an older chexrl)."""
    found = _first_good(Path(root), load_checkpoint)
    if found is None:
        return None
    path, (state, meta) = found
    return path, state, meta
