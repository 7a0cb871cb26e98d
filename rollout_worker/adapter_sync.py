"""LoRA hot-swap for vLLM 0.32: the only module that knows how an adapter reaches the engine.

vLLM loads a LoRA adapter from a path (there is no in-memory tensor form without a worker extension), so
weights that arrived in memory are written to node-local scratch (/dev/shm: RAM, a few ms) as a PEFT
directory, loaded eagerly with `add_lora`, and the previous version is removed. Every version gets a
fresh `lora_int_id` that is never reused: vLLM keys its prefix cache and loaded-adapter cache by that id,
so nothing computed for an older version can be served for a newer one.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file
from vllm.lora.request import LoRARequest

from rollout_worker.types import AdapterWeights


class AdapterSlot:
    """Holds the one live adapter version of an engine and swaps it."""

    def __init__(self, llm, scratch_dir: str) -> None:
        self._llm = llm
        self._dir = Path(scratch_dir) / f"worker-{os.getpid()}"
        self._ids = itertools.count(1)
        self.version = 0
        self.request: LoRARequest | None = None

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
