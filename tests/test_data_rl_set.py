"""The RL set of a GRPO run (`grpo.data`, `grpo.limit`, `grpo.sft_data`; chexrl/data/sampling.py `rl_samples`):
a seeded, label-stratified draw of whole patients that shares no patient with the SFT set, never the first N
rows of a file sorted by patient."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.data.loaders import load_dataset
from chexrl.data.sampling import label_rates, load_samples, rl_samples
from chexrl.data.synth import synth_tables


@pytest.fixture(scope="module")
def cx(tmp_path_factory):
    d = tmp_path_factory.mktemp("cx_tables")
    synth_tables("chexpert", d, 3000, seed=5)  # sorted by patient, like MIMIC's files
    return d


@pytest.fixture(scope="module")
def split(cx, tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    args = [
        "data",
        "sample",
        "--spec",
        f"chexpert:{cx}:train",
        "--out",
        str(out),
        "--sft",
        "600",
        "--rl",
        "300",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


def _patients(samples):
    return {s.patient_id for s in samples}


def test_limit_is_a_seeded_stratified_draw_not_the_head_of_the_file(cx):
    spec = f"chexpert:{cx}:train"
    pool = load_dataset(spec)
    logs: list[str] = []
    got = rl_samples(spec, 300, seed=0, log=logs.append)
    assert len(got) == 300 and got != pool[:300]
    assert _patients(got) != _patients(pool[:300])
    assert max(_patients(got)) > max(_patients(pool[:600]))  # drawn from the whole file, not its head
    pool_rates, rates = label_rates(pool), label_rates(got)
    assert all(abs(rates.get(lab, 0) - r) < 0.04 for lab, r in pool_rates.items()), (rates, pool_rates)
    assert rl_samples(spec, 300, seed=0, log=logs.append) == got  # the run's seed decides
    assert rl_samples(spec, 300, seed=1, log=logs.append) != got
    assert any("cannot be kept patient-disjoint" in m for m in logs)  # no SFT set named: said so


def test_rl_draw_shares_no_patient_with_the_sft_set(cx, split, tmp_path):
    from chexrl.traces.generate import template_traces
    from chexrl.traces.store import jobs_from_samples

    spec = f"chexpert:{cx}:train"
    sft = load_samples(split / "sft.jsonl") + load_samples(split / "sft_val.jsonl")
    assert _patients(rl_samples(spec, 300, seed=0, log=print)) & _patients(sft)  # without it they overlap
    got = rl_samples(spec, 300, seed=0, sft_sources=[str(split)], log=print)
    assert len(got) == 300 and not _patients(got) & _patients(sft)
    # a trace file of the SFT set, its image paths under another mount: matched by sample id
    traces = tmp_path / "sft_traces.jsonl"
    template_traces(jobs_from_samples(sft), traces, "only_label")
    moved = tmp_path / "moved.jsonl"
    records = [json.loads(line) for line in traces.read_text().splitlines()]
    moved.write_text(
        "".join(json.dumps({**r, "image": "/elsewhere/" + r["image"][-30:]}) + "\n" for r in records)
    )
    for source in (traces, moved):
        logs: list[str] = []
        got = rl_samples(spec, 300, seed=0, sft_sources=[str(source)], log=logs.append)
        assert not _patients(got) & _patients(sft), source
        assert f"{len(records)} of its {len(records)} records matched" in logs[0]
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        rl_samples(spec, 10, seed=0, sft_sources=[str(tmp_path / "nope.jsonl")])


def test_data_sample_output_is_accepted_as_grpo_data(split):
    rl = load_samples(split / "rl.jsonl")
    assert rl_samples(str(split), None, seed=0) == rl
    assert rl_samples(str(split / "rl.jsonl"), None, seed=0) == rl
    sub = rl_samples(str(split), 100, seed=0)
    assert len(sub) == 100 and set(sub) <= set(rl)


def test_grpo_command_draws_its_rl_set(cx, split, tmp_path, monkeypatch):
    """`chexrl grpo` hands the trainer the draw, not `samples[:limit]` (trainer and Ray stubbed out)."""
    import ray

    import trainer.loop

    seen = {}

    import chexrl.commands.grpo as grpo_command

    monkeypatch.setattr(ray, "init", lambda *a, **k: None)
    # no Ray here, and none of the local-Ray set-up (environment, auth config) leaks into other tests
    monkeypatch.setattr(grpo_command, "connect_ray", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(grpo_command, "check_evaluator", lambda *a, **k: None)  # no evaluator here

    def run_grpo(cfg, data, resume=False, evaluator_token=None):
        seen["samples"] = data.samples
        return [{"reward/total": 0.0}]

    monkeypatch.setattr(trainer.loop, "run_grpo", run_grpo)
    spec = f"chexpert:{cx}:train"
    config = tmp_path / "grpo.yaml"
    grpo = {"model": str(tmp_path), "data": spec, "limit": 50, "seed": 3, "run_dir": str(tmp_path / "run")}
    config.write_text(yaml.safe_dump({"grpo": {**grpo, "sft_data": str(split)}}))
    res = CliRunner().invoke(app, ["grpo", "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert seen["samples"] == rl_samples(spec, 50, seed=3, sft_sources=[str(split)])
    assert not _patients(seen["samples"]) & _patients(load_samples(split / "sft.jsonl"))
    # sft.traces is the default SFT set; a missing one is a clear error, not a silent overlap
    config.write_text(yaml.safe_dump({"grpo": grpo, "sft": {"traces": str(tmp_path / "gone.jsonl")}}))
    res = CliRunner().invoke(app, ["grpo", "--config", str(config)])
    assert res.exit_code == 2 and "gone.jsonl" in res.output
