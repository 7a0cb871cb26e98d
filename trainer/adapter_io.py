"""Adapters on disk: a PEFT directory (adapter_config.json + adapter_model.safetensors) <-> AdapterWeights."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from rollout_worker.types import AdapterWeights


def save_adapter_dir(adapter: AdapterWeights, path: str | Path) -> Path:
    """Write atomically (temp dir, then rename): a reader never sees half an adapter."""
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
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    return path


def load_adapter_dir(path: str | Path, version: int) -> AdapterWeights:
    path = Path(path)
    missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if not (path / n).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory (missing {', '.join(missing)})")
    config = json.loads((path / "adapter_config.json").read_text())
    return AdapterWeights(
        version=version, tensors=load_file(str(path / "adapter_model.safetensors")), config=config
    )
