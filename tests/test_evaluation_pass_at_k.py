"""Acc@1 against Pass@K in `chexrl evaluate --samples K`, in its files, in the run report and in evaluation
during training.

The pure tests write a results document with known completions (the expected numbers counted by hand); the
two slow ones go through the session's real vLLM engine on the tiny Gemma3: `chexrl evaluate --samples`
end to end, and PeriodicEvaluator with `samples` (grpo.eval_samples).
"""

import csv
import io
import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.core.metrics import completion_metrics
from chexrl.core.pass_at_k import MEASURES, pass_at_k_summary
from chexrl.core.schemas import get_schema
from chexrl.evaluation import runner
from chexrl.evaluation.comparison import build_results
from chexrl.evaluation.report import write_report
from chexrl.evaluation.runner import pass_at_k_settings, write_results
from chexrl.evaluation.tables import evals_table, results_csv_table
from tests.test_evaluation_cli import SharedEngine, assert_files_agree, invoke
from tests.test_evaluation_report import md_table


def ok(*labels: str) -> str:
    return f"<think>seen</think>\n<solution>{', '.join(labels)}</solution>"


BAD = "no tags"
# Two images per set. K = 2 from n = 3 samples. Per image (greedy exact, pass@2 = 1 - C(3-c, 2)/C(3, 2)):
SETS = {
    "cx": (
        "chexpert14",
        [("Edema",), ("Cardiomegaly", "Edema")],
        {
            # base: image 1 greedy right, samples 1 right -> pass@2 2/3; image 2 greedy wrong, 0 right -> 0
            "base": ([ok("Edema"), ok("Edema")], [[ok("Edema"), BAD, BAD], [BAD, BAD, ok("Edema")]]),
            # tuned: image 1 greedy wrong, 2 right -> 1; image 2 greedy right, 3 right -> 1
            "tuned": (
                [ok("Pneumonia"), ok("Edema", "Cardiomegaly")],
                [[ok("Edema"), ok("Edema"), BAD], [ok("Cardiomegaly", "Edema")] * 3],
            ),
        },
    ),
    "nih": (
        "nih9",
        [("Atelectasis",), ("No Finding",)],
        {
            # base: nothing right anywhere; tuned: image 2's greedy right, its samples 1 right -> 2/3
            "base": ([BAD, ok("Atelectasis")], [[BAD] * 3, [BAD] * 3]),
            "tuned": ([BAD, ok("No Finding")], [[BAD] * 3, [ok("No Finding"), BAD, BAD]]),
        },
    ),
}
EXPECTED = {  # (Acc@1, Pass@2) means, by hand from the comments above
    ("base", "cx"): (1 / 2, (2 / 3 + 0) / 2),
    ("tuned", "cx"): (1 / 2, 1.0),
    ("base", "nih"): (0.0, 0.0),
    ("tuned", "nih"): (1 / 2, (0 + 2 / 3) / 2),
}


def _doc(with_samples: bool = True) -> tuple[dict, list[dict]]:
    from chexrl.config import SamplingConfig

    entries, records = [], []
    for model in ("base", "tuned"):
        for name, (schema, golds, by_model) in SETS.items():
            greedy, sampled = by_model[model]
            entry = {
                "model": model,
                "prompt": "free_reasoning",
                "dataset": name,
                "metrics": completion_metrics(greedy, golds, get_schema(schema)).as_dict(),
            }
            key = {"model": model, "prompt": "free_reasoning", "dataset": name}
            records += [
                key | {"index": i, "completion": t, "labels": list(g)}
                for i, (t, g) in enumerate(zip(greedy, golds, strict=True))
            ]
            if with_samples:
                entry["pass_at_k"] = pass_at_k_summary(greedy, sampled, golds, get_schema(schema), 2)
                records += [
                    key | {"index": i, "sample": j, "completion": t, "labels": list(g)}
                    for i, (texts, g) in enumerate(zip(sampled, golds, strict=True))
                    for j, t in enumerate(texts)
                ]
            entries.append(entry)
    extra = (
        {"pass_at_k_settings": pass_at_k_settings(2, 3, SamplingConfig(seed=4), 64)} if with_samples else {}
    )
    doc = build_results(
        datasets=[
            {"name": "cx", "spec": "chexpert:/d", "schema": "chexpert14", "n": 2},
            {"name": "nih", "spec": "nih:/n", "schema": "nih9", "n": 2},
        ],
        models=[
            {"name": "base", "model": "/m", "adapter": None, "parent": None},
            {"name": "tuned", "model": "/m", "adapter": "/a", "parent": "base"},
        ],
        prompts=["free_reasoning"],
        entries=entries,
        sampling={"greedy": True, "max_tokens": 64},
        **extra,
    )
    return doc, records


def _cell(m: dict) -> str:
    return f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def test_results_files_hold_acc_at_1_against_pass_at_k(tmp_path):
    doc, records = _doc()
    paths = write_results(doc, tmp_path, records)
    saved = json.loads(paths["json"].read_text())
    assert saved["pass_at_k_settings"] == {
        "k": 2,
        "n_samples": 3,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": 4,
        "max_tokens": 64,
        "bootstrap": {"level": 0.95, "n_resamples": 1000, "seed": 0},
    }
    p = {(e["model"], e["dataset"]): e["pass_at_k"] for e in saved["entries"]}
    for key, (acc, pass_k) in EXPECTED.items():
        assert p[key]["acc_at_1"]["mean"] == pytest.approx(acc)
        assert p[key]["pass_at_k"]["mean"] == pytest.approx(pass_k)
        assert p[key]["gap"]["mean"] == pytest.approx(pass_k - acc)
        assert (p[key]["k"], p[key]["n_samples"], p[key]["n_images"]) == (2, 3, 2)

    md = paths["markdown"].read_text()
    title = "Acc@1 (greedy) against Pass@2 (sampled), mean over images [95% bootstrap interval]"
    rows = {(r["model"], r["test set"]): r for r in md_table(md, title)}
    assert set(rows) == {
        ("base", "cx (ID)"),
        ("tuned", "cx (ID)"),
        ("base", "nih (OOD)"),
        ("tuned", "nih (OOD)"),
    }
    r, m = rows["tuned", "nih (OOD)"], p["tuned", "nih"]
    assert r["Acc@1 (exact)"] == _cell(m["acc_at_1"]) and r["Pass@2 (exact)"] == _cell(m["pass_at_k"])
    assert r["best-of-2 Jaccard"] == _cell(m["pass_at_k_jaccard"]) and r["samples"] == "3"
    assert "Pass@2 comes from 3 samples per image at temperature 0.8, top-p 0.95, seed 4" in md
    assert "![Acc@1 against Pass@K](pass_at_k.png)" in md
    assert paths["pass_at_k_chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    csv_rows = {(r["system"], r["dataset"]): r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    for (model, dataset), summary in p.items():
        row = csv_rows[model, dataset]
        assert (row["pass_k"], row["pass_n_samples"]) == ("2", "3")
        for measure in MEASURES:
            for suffix, part in (("", "mean"), ("_low", "low"), ("_high", "high")):
                assert float(row[measure + suffix]) == summary[measure][part]  # full precision

    # greedy answers stay in completions.jsonl (what /evaluate scores); the samples go to samples.jsonl
    greedy = paths["completions"].read_text().splitlines()
    samples = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    assert len(greedy) == 2 * 2 * 2 and len(samples) == 2 * 2 * 2 * 3
    assert {s["sample"] for s in samples} == {0, 1, 2}


def test_without_samples_nothing_changes(tmp_path):
    doc, records = _doc(with_samples=False)
    paths = write_results(doc, tmp_path, records)
    assert "pass_at_k_chart" not in paths and "samples" not in paths
    assert not (tmp_path / "pass_at_k.png").exists()
    assert "Pass@" not in paths["markdown"].read_text()
    assert results_csv_table(doc).header[-1] == "gap_change_vs_parent_high"


def test_results_from_metrics_keeps_a_pass_at_k_summary(tmp_path):
    """The demo's path (metrics it computed itself) carries Pass@K into the same files."""
    from chexrl.evaluation.runner import ModelSpec, results_from_metrics

    doc, _ = _doc()
    by = {(e["model"], e["dataset"]): e for e in doc["entries"]}
    metrics = {
        model: {
            name: by[model, name]["metrics"] | {"pass_at_k": by[model, name]["pass_at_k"]} for name in SETS
        }
        for model in ("base", "tuned")
    }
    models = [ModelSpec("base", "/m"), ModelSpec("tuned", "/m", "/a", "base")]
    again = results_from_metrics(models, metrics, pass_at_k_settings=doc["pass_at_k_settings"])
    assert [e["pass_at_k"] for e in again["entries"]] == [e["pass_at_k"] for e in doc["entries"]]
    assert "pass_at_k_chart" in write_results(again, tmp_path)
    plain = {
        m: {n: {k: v for k, v in x.items() if k != "pass_at_k"} for n, x in d.items()}
        for m, d in metrics.items()
    }
    assert not [e for e in results_from_metrics(models, plain)["entries"] if "pass_at_k" in e]


def test_run_report_shows_pass_at_k_and_its_figure(tmp_path):
    run = tmp_path / "run"
    doc, records = _doc()
    write_results(doc, run / "evaluation", records)
    (run / "config.yaml").write_text(yaml.safe_dump({"grpo": {"run_id": "pk"}}))
    html_path = write_report(run)
    md = (html_path.parent / "report.md").read_text()
    assert "](figures/pass_at_k.png)" in md and "### Acc@1 against Pass@K" in md
    assert (html_path.parent / "figures" / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        len(re.findall(r'<img [^>]*src="data:image/png;base64,', html_path.read_text())) == 2
    )  # + comparison


def test_evals_table_and_scalars_of_an_evaluation_with_pass_at_k():
    from trainer.periodic_eval import eval_scalars

    doc, _ = _doc()
    m = {(e["model"], e["dataset"]): e for e in doc["entries"]}
    with_pass = {
        "step": 5,
        "id": m["tuned", "cx"]["metrics"],
        "ood": m["tuned", "nih"]["metrics"],
        "pass_at_k": {"id": m["tuned", "cx"]["pass_at_k"], "ood": m["tuned", "nih"]["pass_at_k"]},
        "warnings": [],
    }
    without = {k: v for k, v in with_pass.items() if k != "pass_at_k"} | {"step": 0}
    table = evals_table([without, with_pass])
    assert table.header[-4:] == ("ID Acc@1", "ID Pass@2", "OOD Acc@1", "OOD Pass@2")
    assert table.rows[0][-4:] == (None, None, None, None)
    assert table.rows[1][-4:] == pytest.approx((0.5, 1.0, 0.5, 1 / 3))

    scalars = eval_scalars(with_pass)
    assert scalars["eval/id_pass_at_k"] == 1.0 and scalars["eval/ood_pass_at_k"] == pytest.approx(1 / 3)
    assert scalars["eval/ood_pass_at_k_acc_at_1"] == 0.5
    assert scalars["eval/ood_pass_at_k_gap"] == pytest.approx(1 / 3 - 1 / 2)
    assert scalars["eval/id_macro_f1"] == with_pass["id"]["macro"]["f1"]
    assert not [k for k in eval_scalars(without) if "pass_at_k" in k]
    assert evals_table([without]).header[-1] == "trade-off warning"


def _run(args):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--samples", "2", "--temperature", "0.7"], "the main evaluation must be greedy"),
        (["--samples", "3", "--samples-n", "2"], "--samples-n 2 is below --samples 3"),
        (["--samples-n", "2"], "--samples-n needs --samples K"),
        (["--samples", "0"], "--samples"),
    ],
)
def test_evaluate_rejects_bad_sample_options(tmp_path, extra, message):
    (tmp_path / "config.json").write_text("{}")
    code, out = _run(["evaluate", "--model", str(tmp_path), "--data", "chexpert:/x", *extra])
    assert code == 2 and message in out


def test_evaluate_rejects_a_bad_sampling_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "bad.yaml").write_text("sampling:\n  temprature: 0.5\n")
    args = ["evaluate", "--model", str(tmp_path), "--data", "chexpert:/x", "--samples", "2"]
    code, out = _run([*args, "--config", str(tmp_path / "bad.yaml")])
    assert code == 2 and "--config" in out and "temprature" in out


# ------------------------------------------------------------------------------ through the real engine


@pytest.fixture
def engine(rollout_router, tiny_gemma3_dir, monkeypatch) -> SharedEngine:
    shared = SharedEngine(rollout_router, str(tiny_gemma3_dir))
    monkeypatch.setattr(runner, "open_router", shared.open)
    return shared


@pytest.mark.slow
def test_evaluate_with_samples_through_the_engine(
    engine, tiny_gemma3_dir, synth_chexpert_dir, synth_nih_shift_dir, evaluator, tmp_path
):
    """`chexrl evaluate --samples 2 --samples-n 3`: results.json's Pass@K is chexrl.core.pass_at_k on the
    written greedy and sampled completions, at the config's sampling settings."""
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"sampling": {"temperature": 1.0, "top_p": 1.0, "seed": 11}}))
    out = tmp_path / "eval"
    args = ["evaluate", "--model", f"tiny={tiny_gemma3_dir}", "--data", f"cx=chexpert:{synth_chexpert_dir}"]
    args += ["--data", f"nih=nih:{synth_nih_shift_dir}", "--limit", "2", "--max-tokens", "8"]
    result = invoke([*args, "--samples", "2", "--samples-n", "3", "--config", str(config), "--out", str(out)])

    doc = assert_files_agree(out, evaluator)  # the greedy metrics are still /evaluate's
    settings = doc["pass_at_k_settings"]
    assert (settings["k"], settings["n_samples"], settings["temperature"], settings["top_p"]) == (
        2,
        3,
        1.0,
        1.0,
    )
    assert settings["seed"] == 11 and settings["max_tokens"] == 8
    greedy = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    sampled = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(sampled) == 2 * 2 * 3
    schemas = {"cx": "chexpert14", "nih": "nih9"}
    for e in doc["entries"]:
        mine = [c for c in greedy if c["dataset"] == e["dataset"]]
        texts = [
            [s["completion"] for s in sampled if (s["dataset"], s["index"]) == (e["dataset"], c["index"])]
            for c in mine
        ]
        assert [len(t) for t in texts] == [3, 3]
        expected = pass_at_k_summary(
            [c["completion"] for c in mine],
            texts,
            [c["labels"] for c in mine],
            get_schema(schemas[e["dataset"]]),
            2,
        )
        assert e["pass_at_k"] == expected
    assert len({s["completion"] for s in sampled}) > 1, "temperature 1 should not repeat one completion"
    assert (out / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| tiny | nih (OOD) | 2 | 3 |" in result.output and "Pass@2 (exact)" in result.output


@pytest.mark.slow
def test_periodic_evaluation_adds_pass_at_k(engine, synth_chexpert_dir, synth_nih_shift_dir, tmp_path):
    """grpo.eval_samples through PeriodicEvaluator: the record in evals.jsonl carries Pass@K for both sets
    and eval_scalars logs it."""
    from chexrl.config import SamplingConfig
    from chexrl.data.loaders import load_dataset
    from trainer.periodic_eval import PeriodicEvaluator, eval_scalars

    engine.to_base()
    id_set = ("cx-held", load_dataset(f"chexpert:{synth_chexpert_dir}")[:2])
    ood_set = ("nih-held", load_dataset(f"nih:{synth_nih_shift_dir}")[:2])
    evaluator = PeriodicEvaluator(
        tmp_path,
        id_set,
        ood_set,
        prompt_name="free_reasoning",
        max_tokens=8,
        margin=0.05,
        samples=2,
        sampling=SamplingConfig(temperature=1.0, seed=3),
    )
    record = evaluator.evaluate(engine, 0, None)
    saved = json.loads((tmp_path / "evals.jsonl").read_text().splitlines()[0])
    assert saved["pass_at_k"] == record["pass_at_k"]
    for side in ("id", "ood"):
        p = record["pass_at_k"][side]
        assert (p["k"], p["n_samples"], p["n_images"]) == (2, 2, 2)
        assert all(p[x]["low"] <= p[x]["mean"] <= p[x]["high"] for x in MEASURES)
    scalars = eval_scalars(record)
    assert {
        f"eval/{s}_pass_at_k{x}" for s in ("id", "ood") for x in ("", "_jaccard", "_acc_at_1", "_gap")
    } <= set(scalars)
    assert scalars["eval/id_pass_at_k"] == record["pass_at_k"]["id"]["pass_at_k"]["mean"]

    with pytest.raises(ValueError, match=r"grpo\.eval_samples must be at least 1"):
        PeriodicEvaluator(
            tmp_path / "other",
            id_set,
            ood_set,
            prompt_name="free_reasoning",
            max_tokens=8,
            margin=0.05,
            samples=0,
        )
