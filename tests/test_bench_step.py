"""`chexrl bench step` at its smallest size: the JSON's structure and internal consistency (the parts add
up to the step, fractions lie in [0, 1], the ratio is TRL's median over ours). Speed targets are for the
benchmark, not for tests."""

import json
import statistics

import pytest
from typer.testing import CliRunner

from chexrl.bench.common import write_json
from chexrl.bench.step_chexrl import OTHER_PARTS, PARTS, step_split


def _metrics(**overrides) -> dict:
    m = {
        "time/generation": 0.5,
        "time/scoring": 0.01,
        "time/training": 0.4,
        "time/weight_sync": 0.03,
        "time/sleep": 0.002,
        "time/wake": 0.001,
        "time/step": 0.95,
        "time/collate": 0.05,
        "time/forward_backward": 0.3,
        "time/optimizer": 0.01,
        "time/learner_step": 0.37,
    }
    return {**m, **overrides}


def test_step_split_adds_up():
    split = step_split(_metrics())
    assert sum(split[p] for p in PARTS) == pytest.approx(split["step"])
    assert sum(split["other_parts"].values()) == pytest.approx(split["other"])
    assert split["other_parts"]["learner_call"] == pytest.approx(0.4 - 0.37)
    assert split["other_parts"]["sleep_wake"] == pytest.approx(0.003)
    assert split["overhead_fraction"] == pytest.approx((0.95 - 0.5 - 0.3 - 0.01) / 0.95)


def test_command_is_registered():
    from chexrl.cli import app

    res = CliRunner().invoke(app, ["bench", "step", "--help"])
    assert res.exit_code == 0 and "--json" in res.output and "--preset" in res.output


@pytest.mark.slow
def test_bench_step_smallest(ray_session, evaluator, tiny_gemma3_dir, synth_mimic_dir, tmp_path):
    from chexrl.bench.step import bench_step, summary_table

    figures = bench_step(
        steps=1,
        warmup=1,
        prompts=2,
        n=2,
        max_tokens=8,
        micro_batch=2,
        model=str(tiny_gemma3_dir),
        data_dir=synth_mimic_dir,
        trl_rounds=1,
        evaluator_url=evaluator.url,
        work_dir=tmp_path / "work",
    )
    write_json(tmp_path / "step.json", figures)
    fig = json.loads((tmp_path / "step.json").read_text())

    assert set(fig) >= {"device", "config", "chexrl", "trl", "trl_over_chexrl", "targets", "meets"}
    assert fig["config"]["steps"] == 1 and fig["config"]["completions_per_step"] == 4
    assert fig["config"]["chexrl_weight_sync"] == "merged"  # the CPU default
    assert fig["targets"] == {"overhead_fraction_max": 0.10, "trl_over_chexrl_min": 1.0}

    c = fig["chexrl"]
    assert len(c["steps"]) == 1
    for s in c["steps"]:
        assert all(s[p] >= 0 for p in PARTS if p != "other")
        assert sum(s[p] for p in PARTS) == pytest.approx(s["step"], rel=1e-9)
        assert set(s["other_parts"]) == set(OTHER_PARTS)
        assert sum(s["other_parts"].values()) == pytest.approx(s["other"], rel=1e-9, abs=1e-12)
        assert 0.0 <= s["overhead_fraction"] <= 1.0
        expected = (s["step"] - s["generation"] - s["forward_backward"] - s["optimizer"]) / s["step"]
        assert s["overhead_fraction"] == pytest.approx(expected)
    fractions = [s["overhead_fraction"] for s in c["steps"]]
    assert c["overhead_fraction"] == pytest.approx(statistics.median(fractions))
    assert c["overhead_fraction_mean"] == pytest.approx(statistics.fmean(fractions))
    assert c["median"]["step"] == pytest.approx(statistics.median(s["step"] for s in c["steps"]))
    assert sum(c["mean_share"].values()) == pytest.approx(1.0)
    assert all(0.0 <= share <= 1.0 for p, share in c["mean_share"].items() if p != "other")
    assert c["completion_tokens_mean"] == 8  # EOS ignored: equal work

    t = fig["trl"]
    assert len(t["step_seconds"]) == 1 and all(x > 0 for x in t["step_seconds"])
    assert t["median"] == pytest.approx(statistics.median(t["step_seconds"]))
    assert [r["when"] for r in t["rounds"]] == ["after chexrl"]
    assert t["rounds"][0]["completion_tokens_mean"] == 8
    assert 0 < t["median_generation"] <= t["median"]

    assert fig["trl_over_chexrl"] == pytest.approx(t["median"] / c["median"]["step"])
    assert fig["meets"] == {
        "overhead_fraction": c["overhead_fraction"] <= 0.10,
        "trl_over_chexrl": fig["trl_over_chexrl"] >= 1.0,
    }
    assert "trl_over_chexrl" in summary_table(fig)
