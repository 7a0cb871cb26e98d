"""LoRA adapters as data: `AdapterWeights` (the tensors and PEFT config that travel from the trainer to the
rollout workers) and the PEFT directory on disk (adapter_config.json + adapter_model.safetensors) <->
AdapterWeights. safetensors (torch) is imported by the functions that read and write files, so the rollout
worker's request types can name AdapterWeights without importing torch."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AdapterWeights:
    """A LoRA adapter as it travels from trainer to workers: PEFT state-dict tensors (torch, on the CPU)
    and PEFT's adapter_config.json as a dict. `version` increases by one per push; 0 is the base model."""

    version: int
    tensors: dict[str, Any]
    config: dict

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def save_adapter_dir(adapter: AdapterWeights, path: str | Path) -> Path:
    """Write atomically (temp dir, then rename): a reader never sees half an adapter."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter.tensors.items()}, str(tmp / "adapter_model.safetensors"))
    (tmp / "adapter_config.json").write_text(json.dumps(adapter.config, indent=2))
    (tmp / "chexrl_version.json").write_text(json.dumps({"version": adapter.version}))
    if path.exists():
        old = path.with_name(path.name + ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def load_adapter_dir(path: str | Path, version: int) -> AdapterWeights:
    from safetensors.torch import load_file

    path = Path(path)
    missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if not (path / n).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory (missing {', '.join(missing)})")
    config = json.loads((path / "adapter_config.json").read_text())
    return AdapterWeights(
        version=version, tensors=load_file(str(path / "adapter_model.safetensors")), config=config
    )
