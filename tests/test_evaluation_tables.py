"""The results document, its tables and renderings, and the command line's input checks (no engine)."""

import csv
import io

import pytest
from typer.testing import CliRunner

from chexrl.cli import app
from chexrl.core.schemas import CHEXPERT14, NIH9
from chexrl.evaluation.comparison import build_results, check_parents, transfer_gap
from chexrl.evaluation.render import csv_text, html_table, markdown_table
from chexrl.evaluation.runner import ModelSpec, default_set_name, parse_data_arg
from chexrl.evaluation.tables import (
    OVERALL_ROW,
    Table,
    ablation_table,
    overview_table,
    parent_table,
    per_label_table,
    results_csv_table,
)


def _metrics(labels, macro: float, micro: float = 0.5, fail: float = 0.0, f1s: dict | None = None) -> dict:
    per = {
        lab: {"precision": 0.0, "recall": 0.0, "f1": (f1s or {}).get(lab, 0.0), "support": 1, "predicted": 1}
        for lab in labels
    }
    return {
        "n": 10,
        "fail_rate": fail,
        "micro": {"precision": micro, "recall": micro, "f1": micro},
        "macro": {"precision": macro, "recall": macro, "f1": macro},
        "per_label": per,
    }


DATASETS = [
    {"name": "chexpert", "spec": "chexpert:/d:test", "schema": "chexpert14", "n": 10},
    {"name": "nih", "spec": "nih:/n:test", "schema": "nih9", "n": 10},
]
# The paper's Tables 5 and 6 macro-F1 for MedGemma (base), SFT and ChexReason (GRPO).
PAPER = {"base": (0.362, 0.243), "sft": (0.282, 0.299), "grpo": (0.346, 0.243)}


def _paper_doc(margin: float = 0.05) -> dict:
    models = [
        {"name": "base", "model": "/m/base", "adapter": None, "parent": None},
        {"name": "sft", "model": "/m/sft", "adapter": None, "parent": "base"},
        {"name": "grpo", "model": "/m/sft", "adapter": "/a", "parent": "sft"},
    ]
    entries = []
    for name, (id_f1, ood_f1) in PAPER.items():
        fail = {"base": 0.0, "sft": 0.032, "grpo": 0.020}[name]
        cx = _metrics(
            CHEXPERT14,
            id_f1,
            fail=fail,
            f1s={"Cardiomegaly": {"base": 0.627, "sft": 0.442, "grpo": 0.664}[name]},
        )
        entries.append({"model": name, "prompt": "free_reasoning", "dataset": "chexpert", "metrics": cx})
        entries.append(
            {"model": name, "prompt": "free_reasoning", "dataset": "nih", "metrics": _metrics(NIH9, ood_f1)}
        )
    return build_results(
        datasets=DATASETS, models=models, prompts=["free_reasoning"], entries=entries, margin=margin
    )


def test_transfer_gaps_changes_and_warning_reproduce_the_papers_numbers():
    doc = _paper_doc()
    assert doc["kind"] == "comparison" and [d["role"] for d in doc["datasets"]] == ["id", "ood"]
    gaps = {g["system"]: g["gap"] for g in doc["transfer_gaps"]}
    # (0.243 - 0.362) / 0.362 = -0.3287 ("MedGemma baseline drops 33%"); SFT (0.299 - 0.282) / 0.282 = +0.0603;
    # ChexReason (0.243 - 0.346) / 0.346 = -0.2977 ("30%")
    assert gaps == pytest.approx({"base": -0.119 / 0.362, "sft": 0.017 / 0.282, "grpo": -0.103 / 0.346})
    change = {(c["system"], c["dataset"]): c for c in doc["changes_vs_parent"]}
    # "+23%" on CheXpert and "-19%" on NIH for GRPO against SFT
    assert change["grpo", "chexpert"]["macro_f1"]["change"] == pytest.approx(0.064 / 0.282)
    assert change["grpo", "nih"]["macro_f1"]["change"] == pytest.approx(-0.056 / 0.299)
    assert change["grpo", "chexpert"]["fail_rate"]["delta"] == pytest.approx(0.020 - 0.032)
    assert ("base", "chexpert") not in change
    # GRPO: ID up, OOD down by 0.056 > 0.05; SFT against base: ID down -> nothing. Without per-image
    # answers there is no interval: a note, not a warning
    assert doc["warnings"] == [] and len(doc["notes"]) == 1 and doc["notes"][0].startswith("sft -> grpo:")
    assert "OOD macro-F1 (nih) -0.056 (0.299 -> 0.243)" in doc["notes"][0]
    assert _paper_doc(margin=0.06)["notes"] == [] and doc["gap_changes"] == [] and doc["bootstrap"] is None


def test_transfer_gap_of_a_zero_id_score_is_undefined():
    assert transfer_gap(0.0, 0.3) is None
    assert transfer_gap(0.5, 0.25) == -0.5


def test_overview_and_parent_tables_render_the_numbers():
    doc = _paper_doc()
    md = markdown_table(overview_table(doc))
    assert "| grpo | sft | 0.346 | 0.243 | -29.8% |" in md
    assert "| sft | base | 0.282 | 0.299 | +6.0% |" in md
    md = markdown_table(parent_table(doc))
    assert "| grpo | sft | chexpert | 0.282 | 0.346 | +22.7% |" in md
    assert "| grpo | sft | nih | 0.299 | 0.243 | -18.7% |" in md


def test_per_label_table_is_the_papers_layout_with_the_best_in_bold():
    doc = _paper_doc()
    table = per_label_table(doc, "chexpert")
    assert table.header == ("Category", "base", "sft", "grpo")
    assert [r[0] for r in table.rows] == [*CHEXPERT14, OVERALL_ROW]
    assert "Table 5" in table.title and "Table 6" in per_label_table(doc, "nih").title
    assert [r[0] for r in per_label_table(doc, "nih").rows] == [*NIH9, OVERALL_ROW]
    md = markdown_table(table)
    assert "| Cardiomegaly | 0.627 | 0.442 | **0.664** |" in md
    assert f"| {OVERALL_ROW} | **0.362** | 0.282 | 0.346 |" in md
    assert '<td class="num"><b>0.664</b></td>' in html_table(table)


def test_results_csv_keeps_full_precision():
    doc = _paper_doc()
    rows = list(csv.DictReader(io.StringIO(csv_text(results_csv_table(doc)))))
    assert len(rows) == 6
    grpo_nih = next(r for r in rows if r["system"] == "grpo" and r["dataset"] == "nih")
    assert float(grpo_nih["macro_f1"]) == 0.243 and grpo_nih["role"] == "ood"
    assert float(grpo_nih["transfer_gap"]) == pytest.approx(-0.103 / 0.346, abs=1e-15)
    assert float(grpo_nih["macro_f1_change_vs_parent"]) == pytest.approx(-0.056 / 0.299, abs=1e-15)
    base_cx = next(r for r in rows if r["system"] == "base" and r["dataset"] == "chexpert")
    assert base_cx["transfer_gap"] == "" and base_cx["macro_f1_change_vs_parent"] == ""


def test_prompt_ablation_is_table_one():
    models = [{"name": "medgemma", "model": "/m", "adapter": None, "parent": None}]
    scores = {
        "narrative": (0.524, 0.270, 0.002),
        "reasoning_a": (0.498, 0.245, 0.0),
        "reasoning_c": (0.260, 0.132, 0.482),
    }
    entries = [
        {
            "model": "medgemma",
            "prompt": p,
            "dataset": "chexpert",
            "metrics": _metrics(CHEXPERT14, ma, mi, fail),
        }
        for p, (mi, ma, fail) in scores.items()
    ]
    doc = build_results(datasets=DATASETS[:1], models=models, prompts=list(scores), entries=entries)
    assert doc["kind"] == "prompt_ablation" and [s["label"] for s in doc["systems"]] == list(scores)
    md = markdown_table(ablation_table(doc, "chexpert"))
    assert "| Reasoning Narrative | narrative | 0.524 | 0.270 | 0.002 |" in md
    assert "| Reasoning A (baseline) | reasoning_a | 0.498 | 0.245 | 0.000 |" in md
    assert "| Reasoning C | reasoning_c | 0.260 | 0.132 | 0.482 |" in md


def test_results_need_every_combination_and_valid_parents():
    models = [{"name": "a", "model": "/a", "parent": None}, {"name": "b", "model": "/b", "parent": "a"}]
    with pytest.raises(ValueError, match="missing"):
        build_results(datasets=DATASETS, models=models, prompts=["p"], entries=[])
    with pytest.raises(ValueError, match="parent 'zz'"):
        check_parents([{"name": "a", "parent": "zz"}])
    with pytest.raises(ValueError, match="loops"):
        check_parents([{"name": "a", "parent": "b"}, {"name": "b", "parent": "a"}])
    with pytest.raises(ValueError, match="unique"):
        check_parents([{"name": "a"}, {"name": "a"}])


def test_table_shape_is_checked_and_markdown_escapes():
    with pytest.raises(ValueError, match="cells"):
        Table("t", ("a", "b"), ("text", "f3"), (("x",),))
    md = markdown_table(Table("t", ("a",), ("text",), (("x|<think>",),)))
    assert "x\\|&lt;think>" in md


def test_model_and_data_arguments_parse():
    assert ModelSpec.parse("sft=/runs/sft/merged") == ModelSpec("sft", "/runs/sft/merged")
    assert ModelSpec.parse("/runs/sft/merged@/runs/grpo/adapter-final").name == "merged+adapter-final"
    with pytest.raises(ValueError, match="bad model 'x='"):
        ModelSpec.parse("x=")
    assert parse_data_arg("held=chexpert:/d:valid") == ("held", "chexpert:/d:valid")
    assert default_set_name("nih:/data/nih:test:nih10") == "nih-test"
    assert default_set_name("chexpert:/d") == "chexpert"


# ---------------------------------------------------------------------- bad input at the command line


def _run(args):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})  # no wrapped error lines
    return result.exit_code, " ".join(result.output.split())


def test_evaluate_rejects_a_missing_model_dir(tmp_path):
    code, out = _run(["evaluate", "--model", f"m={tmp_path / 'nope'}", "--data", "chexpert:/x"])
    assert code == 2 and "not a checkpoint directory" in out and "nope" in out


def test_evaluate_rejects_an_adapter_that_is_not_one(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, out = _run(
        ["evaluate", "--model", str(tmp_path), "--adapter", str(tmp_path), "--data", "chexpert:/x"]
    )
    assert code == 2 and "not a PEFT adapter directory" in out


def test_evaluate_rejects_an_unknown_prompt(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, out = _run(
        ["evaluate", "--model", str(tmp_path), "--data", "chexpert:/x", "--prompts", "narrative,bogus"]
    )
    assert code == 2 and "unknown prompt 'bogus'" in out


def test_evaluate_rejects_a_bad_data_spec(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, out = _run(["evaluate", "--model", str(tmp_path), "--data", "imagenet:/x"])
    assert code == 2 and "bad dataset spec" in out and "imagenet" in out
    code, out = _run(["evaluate", "--model", str(tmp_path), "--data", f"chexpert:{tmp_path / 'none'}"])
    assert code == 2 and "--data" in out


def test_evaluate_rejects_an_unknown_parent(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, out = _run(["evaluate", "--model", f"a={tmp_path}", "--parent", "a=b", "--data", "chexpert:/x"])
    assert code == 2 and "CHILD=PARENT" in out


def test_report_rejects_a_missing_or_empty_run_dir(tmp_path):
    code, out = _run(["report", str(tmp_path / "nope")])
    assert code == 2 and "does not exist" in out
    code, out = _run(["report", str(tmp_path)])
    assert code == 2 and "not a chexrl run directory" in out


def test_evaluate_rejects_bad_sampling_settings(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    args = ["evaluate", "--model", str(tmp_path), "--data", "chexpert:/x"]
    code, out = _run([*args, "--temperature", "0.8", "--top-p", "0"])
    assert code == 2 and "--top-p" in out and "greater than 0" in out
