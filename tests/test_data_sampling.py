"""Patient-disjoint, stratified budget sampling (chexrl/data/sampling.py)."""

import doctest
import importlib

import numpy as np
import pytest

from chexrl.core.samples import XraySample
from chexrl.data.sampling import (
    budget_sizes,
    label_rates,
    load_samples,
    save_samples,
    stratified_budget_split,
)
from chexrl.data.synth import PATHOLOGIES, sample_findings


def _pool(n_patients=3000, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        for k in range(int(rng.integers(1, 5))):
            labs = tuple(sorted(sample_findings(rng) & set(PATHOLOGIES))) or ("No Finding",)
            out.append(
                XraySample(
                    f"/x/{p}_{k}.png", labs, f"p{p}", f"p{p}s{k}", "mimic", "train", "chexpert14", "PA"
                )
            )
    return out


def test_budgets_disjoint_exact_stratified_deterministic():
    pool = _pool()
    subsets = stratified_budget_split(pool, budget_sizes(), seed=1)
    assert {k: len(v) for k, v in subsets.items()} == {"sft": 1800, "sft_val": 200, "rl": 1000}
    patients = [{s.patient_id for s in v} for v in subsets.values()]
    assert all(not (a & b) for i, a in enumerate(patients) for b in patients[i + 1 :])
    assert len({s.image_path for v in subsets.values() for s in v}) == 3000
    pool_rates = label_rates(pool)
    for name, items in subsets.items():
        rates = label_rates(items)
        for lab, r in pool_rates.items():
            tol = 0.02 if name != "sft_val" else 0.04
            assert abs(rates.get(lab, 0) - r) < tol, (name, lab, rates.get(lab), r)
    again = stratified_budget_split(pool, budget_sizes(), seed=1)
    assert again == subsets
    assert stratified_budget_split(pool, budget_sizes(), seed=2) != subsets


def test_small_pool_and_options(tmp_path):
    pool = _pool(60)
    with pytest.raises(ValueError, match="usable images"):
        stratified_budget_split(pool, budget_sizes())
    sizes = budget_sizes(sft=40, rl=20, val_share=0.1, rl_val_share=0.1)
    subsets = stratified_budget_split(pool, sizes, seed=0, max_per_patient=1)
    assert {k: len(v) for k, v in subsets.items()} == {"sft": 36, "sft_val": 4, "rl": 18, "rl_val": 2}
    assert all(len({s.patient_id for s in v}) == len(v) for v in subsets.values())
    save_samples(subsets["rl"], tmp_path / "rl.jsonl")
    assert load_samples(tmp_path / "rl.jsonl") == subsets["rl"]


@pytest.mark.parametrize("module", ["images", "loaders", "sampling", "formats"])
def test_data_doctests(module):
    mod = importlib.import_module(f"chexrl.data.{module}")
    assert doctest.testmod(mod).failed == 0
