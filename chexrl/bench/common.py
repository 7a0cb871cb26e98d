"""What every benchmark records besides its figures: the machine, and a percentile helper."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def device_description() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def write_json(path: str | Path, figures: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


class PhasePeaks:
    """Peak memory of one phase at a time: `reset()` at a phase's start, `peak()` at its end. On CUDA the
    bytes PyTorch allocated on the device (`max_memory_allocated`, weights included); on the CPU the
    growth of the process's peak resident memory (VmHWM, which writing 5 to /proc/self/clear_refs sets
    back to the current resident size) over its resident size when this object was made, as chexrl's
    learner side measures (its growth from before the model loads)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.baseline = 0 if cuda else _status_bytes("VmRSS")

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        return _status_bytes("VmHWM") - self.baseline


def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (kB there), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")
