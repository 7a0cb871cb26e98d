"""The rollout worker's adapter scratch (/dev/shm by default) is private: one mode-700 folder with an
unpredictable name per slot, removed on close, and folders of dead processes removed at the next start.
Pure unit tests: a stand-in engine records what vLLM would be asked to load."""

import os
import stat
import subprocess
import sys

import pytest
import torch

from chexrl.models.adapter_io import AdapterWeights
from rollout_worker.adapter_sync import AdapterSlot


class _Engine:
    def __init__(self) -> None:
        self.loaded: dict[int, str] = {}

    def add_lora(self, request) -> bool:
        self.loaded[request.lora_int_id] = request.lora_path
        return True

    def remove_lora(self, lora_id: int) -> None:
        self.loaded.pop(lora_id)


class _LLM:
    def __init__(self) -> None:
        self.llm_engine = _Engine()


def _adapter(version: int) -> AdapterWeights:
    return AdapterWeights(version=version, tensors={"a": torch.ones(2, 2)}, config={"r": 2})


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_each_slot_gets_a_private_unpredictable_folder_removed_on_close(tmp_path):
    root = tmp_path / "scratch"
    first, second = AdapterSlot(_LLM(), str(root)), AdapterSlot(_LLM(), str(root))
    first.install(_adapter(1))
    folder = first.request.lora_path.rsplit("/", 1)[0]
    assert _mode(root) == 0o700 and _mode(folder) == 0o700
    assert os.path.dirname(folder) == str(root)
    names = sorted(p.name for p in root.iterdir())
    assert len(names) == 2 and names[0] != f"worker-{os.getpid()}"
    assert all(
        name.startswith(f"worker-{os.getpid()}-") and len(name) > len(f"worker-{os.getpid()}-") + 6
        for name in names
    )
    first.close()
    second.close()
    assert list(root.iterdir()) == []


def test_folders_of_dead_processes_are_removed_at_the_next_start(tmp_path):
    root = tmp_path / "scratch"
    code = f"import os; os.makedirs({str(root)!r} + f'/worker-{{os.getpid()}}-abc123/v1', mode=0o700); print(os.getpid())"
    dead_pid = int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    live = AdapterSlot(_LLM(), str(root))  # this process: alive, kept
    os.chmod(root, 0o755)  # as an older chexrl left it
    AdapterSlot(_LLM(), str(root))
    names = {p.name for p in root.iterdir()}
    assert f"worker-{dead_pid}-abc123" not in names
    assert live._dir.name in names and len(names) == 2
    assert _mode(root) == 0o700


def test_a_scratch_root_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "scratch").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="symlink"):
        AdapterSlot(_LLM(), str(tmp_path / "scratch"))
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_every_parent_of_the_scratch_root_is_checked(tmp_path):
    # A symlinked parent that points into a directory anyone may write: the last component alone is a
    # fine, private directory, but whoever can write the parent can swap it.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by others, not sticky
    (tmp_path / "link").symlink_to(shared)
    with pytest.raises(PermissionError, match=r"shared is writable by others \(mode 777\)"):
        AdapterSlot(_LLM(), str(tmp_path / "link" / "scratch"))
    with pytest.raises(PermissionError, match="writable by others"):  # written without the link too
        AdapterSlot(_LLM(), str(shared / "scratch"))
    os.chmod(shared, 0o1777)  # sticky, as /tmp and /dev/shm: others cannot rename what is ours
    slot = AdapterSlot(_LLM(), str(tmp_path / "link" / "scratch"))
    assert _mode(shared / "scratch") == 0o700
    slot.close()
