"""LoRA hot-swap for vLLM 0.32: the only module that knows how an adapter reaches the engine.

vLLM loads a LoRA adapter from a path (there is no in-memory tensor form without a worker extension), so
weights that arrived in memory are written to node-local scratch (/dev/shm: RAM, a few ms) as a PEFT
directory, loaded eagerly with `add_lora`, and the previous version is removed. Every version gets a
fresh `lora_int_id` that is never reused: vLLM keys its prefix cache and loaded-adapter cache by that id,
so nothing computed for an older version can be served for a newer one.

The scratch is private: `rollout.adapter_dir` must be this user's own directory (created mode 700; a
symlink, or one another user owns, is refused: they could read the policy or swap the adapter vLLM
loads), and so must be the way to it: every parent directory, as written and with symlinks resolved,
is refused if another user owns it or may write into it (a sticky one such as /dev/shm excepted), and a
symlinked parent if another user owns the link. Each slot writes into its own `worker-<pid>-<random>` folder in it (mode 700, unpredictable),
removed on close and at interpreter exit; folders left by dead processes (a killed actor runs neither)
are removed when the next slot starts on the node.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from vllm.lora.request import LoRARequest

from chexrl.models.adapter_io import AdapterWeights

log = logging.getLogger(__name__)

PREFIX = "worker-"


def private_scratch(root: str | Path, shared_parents: bool = False) -> Path:
    """A fresh mode-700 folder with an unpredictable name under `root` (this user's own directory, made
    mode 700 if missing, reached through parents no other user may write unless `shared_parents`), after
    removing the folders of dead processes there."""
    root = Path(root)
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700, parents=True)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(
            f"rollout.adapter_dir {root} is a symlink or not a directory: refusing to use it"
        )
    if info.st_uid != os.getuid():
        raise PermissionError(
            f"rollout.adapter_dir {root} belongs to uid {info.st_uid}, not this user ({os.getuid()}): its owner "
            "could read or replace the adapters vLLM loads; set rollout.adapter_dir to a directory of your own"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(root, 0o700)  # made by an older chexrl with the umask's mode
    check_ancestors(root, shared_parents)
    remove_stale(root)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))


def _unsafe_directory(info: os.stat_result, shared_ok: bool) -> str | None:
    """Why another user could replace what lies under this directory, or None if no one can."""
    if shared_ok:
        return None
    if info.st_uid not in (0, os.getuid()):
        return f"belongs to uid {info.st_uid}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:  # sticky (/tmp, /dev/shm): others cannot rename ours
        return f"is writable by others (mode {mode:o})"
    return None


def check_ancestors(root: Path, shared_parents: bool = False) -> None:
    """Every directory above `root`, as written and after resolving symlinks: a symlink owned by root or
    this user only, and no directory another user could write into (unless sticky, or `shared_parents`).
    Otherwise someone else could swap the scratch for a folder they control."""
    written = Path(os.path.abspath(root))
    for path in [*written.parents, *Path(os.path.realpath(root)).parents]:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            why = None if info.st_uid in (0, os.getuid()) else f"is a symlink of uid {info.st_uid}"
        else:
            why = _unsafe_directory(info, shared_parents)
        if why is not None:
            raise PermissionError(
                f"rollout.adapter_dir {root}: {path} {why}, so another user could replace the adapters "
                "vLLM loads; use a directory whose every parent only root or you can write"
            )


def remove_stale(root: Path) -> list[Path]:
    """Remove the `worker-<pid>-*` folders under `root` whose process is gone; returns what was removed."""
    removed = []
    for path in root.glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d adapter folder(s) of dead processes under %s", len(removed), root)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class AdapterSlot:
    """Holds the one live adapter version of an engine and swaps it."""

    def __init__(self, llm, scratch_dir: str, shared_parents: bool = False) -> None:
        self._llm = llm
        self._dir = private_scratch(scratch_dir, shared_parents)
        atexit.register(shutil.rmtree, self._dir, ignore_errors=True)
        self._ids = itertools.count(1)
        self.version = 0
        self.request: LoRARequest | None = None

    @property
    def folder(self) -> str:
        return str(self._dir)

    @property
    def live_path(self) -> str | None:
        return None if self.request is None else self.request.lora_path

    def install(self, adapter: AdapterWeights) -> None:
        """Make `adapter` the live version; returns only once vLLM has loaded it.

        Re-installing the live version is a no-op, so a push retried after a worker restart (which
        already restored that version from the registry) is harmless.
        """
        if adapter.version == self.version:
            return
        if adapter.version < self.version:
            raise ValueError(f"adapter version {adapter.version} is older than live version {self.version}")
        path = self._dir / f"v{adapter.version}"
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.tensors.items()}
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(adapter.config))
        tmp.rename(path)

        request = LoRARequest(f"policy-v{adapter.version}", next(self._ids), str(path))
        if not self._llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM refused adapter version {adapter.version}")
        old = self.request
        self.request, self.version = request, adapter.version
        if old is not None:
            self._llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
