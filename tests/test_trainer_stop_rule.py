"""grpo.stop_when_ood_drops' final adapter: the best-OOD checkpoint (PeriodicEvaluator.keep_best_ood), with
the real adapter files (no engine)."""

import json

import torch

from chexrl.models.adapter_io import AdapterWeights, load_adapter_dir, save_adapter_dir
from trainer.periodic_eval import ADAPTERS, EVALS, PeriodicEvaluator


def _adapter(value: float) -> AdapterWeights:
    tensors = {
        "base_model.model.q_proj.lora_A.weight": torch.full((2, 4), value),
        "base_model.model.q_proj.lora_B.weight": torch.full((4, 2), value),
    }
    return AdapterWeights(3, tensors, {"r": 2, "peft_type": "LORA"})


def _evals(run_dir, ood: list[float]) -> PeriodicEvaluator:
    """A resumed evaluator whose evaluations (step 0, 1, 2, ...) had these OOD macro-F1s."""
    records = [
        {"step": s, "id": 0.3, "ood": f, "id_name": "cx", "ood_name": "nih"} for s, f in enumerate(ood)
    ]
    (run_dir / EVALS).write_text("".join(json.dumps(r) + "\n" for r in records))
    return PeriodicEvaluator(
        run_dir, ("cx", []), ("nih", []), prompt_name="p", max_tokens=8, margin=0.05, resume_step=len(ood)
    )


def test_best_ood_step_becomes_the_final_adapter(tmp_path):
    save_adapter_dir(_adapter(1.0), tmp_path / ADAPTERS / "step-000001")
    periodic = _evals(tmp_path, [0.2, 0.4, 0.1])
    assert periodic.keep_best_ood(tmp_path / "adapter-final", _adapter(7.0)) == 1
    final = load_adapter_dir(tmp_path / "adapter-final", version=3)
    assert all(torch.equal(t, torch.full_like(t, 1.0)) for t in final.tensors.values())


def test_the_start_as_best_ood_is_a_zero_adapter(tmp_path):
    periodic = _evals(tmp_path, [0.4, 0.2, 0.1])
    assert periodic.keep_best_ood(tmp_path / "adapter-final", _adapter(7.0)) == 0
    final = load_adapter_dir(tmp_path / "adapter-final", version=3).tensors
    # B = 0: the adapter adds B @ A = 0, so it serves exactly the starting checkpoint
    assert torch.equal(final["base_model.model.q_proj.lora_B.weight"], torch.zeros(4, 2))
    assert torch.equal(final["base_model.model.q_proj.lora_A.weight"], torch.full((2, 4), 7.0))
