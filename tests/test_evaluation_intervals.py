"""Paired intervals in the results document, its tables, CSV and the demo's lines; the trade-off is a
warning only when the OOD drop's interval excludes 0 (no engine: per-image answers made up here)."""

import csv
import io
import json

import pytest

from chexrl.core.metrics import label_set_metrics
from chexrl.core.paired import ImageOutcomes, gap_change, paired_differences
from chexrl.core.schemas import get_schema
from chexrl.evaluation.comparison import build_results
from chexrl.evaluation.intervals import (
    comparison_summary,
    finding_lines,
    gap_change_table,
    paired_table,
    per_label_change_table,
    summary_lines,
)
from chexrl.evaluation.render import csv_text, markdown_table
from chexrl.evaluation.tables import per_label_csv_table, results_csv_table

N = 40
ID_GOLD = [["Edema"] if i % 2 else ["Cardiomegaly"] for i in range(N)]
OOD_GOLD = [["Atelectasis"] if i % 2 else ["Pneumothorax"] for i in range(N)]


def _answers(gold, right: int) -> list[list[str]]:
    """The first `right` images answered with their gold labels, the others with nothing."""
    return [list(g) if i < right else [] for i, g in enumerate(gold)]


def _entry(model: str, dataset: str, preds, gold, schema: str) -> dict:
    m = label_set_metrics(preds, gold, get_schema(schema))
    per_image = {"gold": gold, "predicted": preds, "invalid": [False] * len(gold)}
    return {"model": model, "prompt": "p", "dataset": dataset, "metrics": m.as_dict(), "per_image": per_image}


def _doc(right: dict[tuple[str, str], int], oods=("nih",)) -> dict:
    """sft and grpo (trained from sft); right[(model, set)] = how many images each answers correctly."""
    sets = [("chexpert", ID_GOLD, "chexpert14")] + [(name, OOD_GOLD, "nih9") for name in oods]
    entries = [
        _entry(model, name, _answers(gold, right[model, name if name == "chexpert" else "ood"]), gold, schema)
        for model in ("sft", "grpo")
        for name, gold, schema in sets
    ]
    return build_results(
        datasets=[{"name": n, "spec": "", "schema": sc, "n": N} for n, _, sc in sets],
        models=[
            {"name": "sft", "model": "/m", "adapter": None, "parent": None},
            {"name": "grpo", "model": "/m", "adapter": "/a", "parent": "sft"},
        ],
        prompts=["p"],
        entries=entries,
        margin=0.001,
    )


def _outcomes(gold, right, schema) -> ImageOutcomes:
    return ImageOutcomes.from_label_sets(_answers(gold, right), gold, get_schema(schema))


def test_a_clear_ood_drop_is_a_warning_with_its_evidence():
    doc = _doc({("sft", "chexpert"): 20, ("grpo", "chexpert"): 30, ("sft", "ood"): 40, ("grpo", "ood"): 10})
    ood = paired_differences(_outcomes(OOD_GOLD, 40, "nih9"), _outcomes(OOD_GOLD, 10, "nih9"))
    idd = paired_differences(_outcomes(ID_GOLD, 20, "chexpert14"), _outcomes(ID_GOLD, 30, "chexpert14"))
    assert ood["macro_f1"].high < 0  # 30 of 40 images lost: far beyond noise
    assert doc["notes"] == [] and len(doc["warnings"]) == 1
    text = doc["warnings"][0]
    assert text.startswith("sft -> grpo: ID macro-F1 (chexpert) " + idd["macro_f1"].text())
    assert f"OOD macro-F1 (nih) {ood['macro_f1'].text()}" in text and "n=40" in text
    change = {(c["system"], c["dataset"]): c for c in doc["changes_vs_parent"]}
    assert change["grpo", "nih"]["macro_f1"]["interval"] == ood["macro_f1"].as_dict()
    assert change["grpo", "nih"]["per_label"]["Atelectasis"] == ood["per_label"]["Atelectasis"].as_dict()
    assert doc["bootstrap"] == {"level": 0.95, "n_resamples": 1000, "seed": 0, "paired_by": "image"}


def test_a_drop_within_noise_is_a_note():
    doc = _doc({("sft", "chexpert"): 20, ("grpo", "chexpert"): 22, ("sft", "ood"): 22, ("grpo", "ood"): 20})
    assert doc["warnings"] == [] and len(doc["notes"]) == 1
    assert "within resampling noise at n=40 images" in doc["notes"][0]


def test_each_ood_set_gets_its_gap_change():
    doc = _doc(
        {("sft", "chexpert"): 20, ("grpo", "chexpert"): 30, ("sft", "ood"): 30, ("grpo", "ood"): 20},
        oods=("nih-a", "nih-b"),
    )
    assert [(g["id_dataset"], g["ood_dataset"]) for g in doc["gap_changes"]] == [
        ("chexpert", "nih-a"),
        ("chexpert", "nih-b"),
    ]
    expected = gap_change(
        _outcomes(ID_GOLD, 20, "chexpert14"),
        _outcomes(OOD_GOLD, 30, "nih9"),
        _outcomes(ID_GOLD, 30, "chexpert14"),
        _outcomes(OOD_GOLD, 20, "nih9"),
    )
    assert doc["gap_changes"][0]["interval"] == expected.as_dict()
    findings = [w for w in doc["warnings"] if not w.startswith("grpo vs sft: ")]  # not the sites' summary
    assert len(findings) + len(doc["notes"]) == 2  # one finding per OOD set
    held = doc["site_tradeoffs"][0]["held_on"]
    assert len(doc["warnings"]) - len(findings) == (1 if held else 0)  # with two sites: which ones, first


def test_tables_csv_and_demo_lines_show_the_intervals():
    doc = _doc({("sft", "chexpert"): 20, ("grpo", "chexpert"): 30, ("sft", "ood"): 40, ("grpo", "ood"): 10})
    change = {c["dataset"]: c for c in doc["changes_vs_parent"]}
    iv = change["nih"]["macro_f1"]["interval"]
    text = f"{iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"
    md = markdown_table(paired_table(doc))
    assert f"| grpo | sft | nih | 40 | {text} |" in md and "| macro-F1" in md.splitlines()[2]
    assert "chexpert | nih |" in markdown_table(gap_change_table(doc))
    assert "| Atelectasis |" in markdown_table(per_label_change_table(doc, "nih"))
    rows = {
        (r["system"], r["dataset"]): r for r in csv.DictReader(io.StringIO(csv_text(results_csv_table(doc))))
    }
    assert float(rows["grpo", "nih"]["macro_f1_diff_vs_parent_low"]) == pytest.approx(iv["low"])
    assert (
        rows["grpo", "nih"]["gap_change_vs_parent"] != "" and rows["sft", "nih"]["gap_change_vs_parent"] == ""
    )
    labels = list(csv.DictReader(io.StringIO(csv_text(per_label_csv_table(doc)))))
    atel = next(
        r for r in labels if (r["system"], r["dataset"], r["label"]) == ("grpo", "nih", "Atelectasis")
    )
    assert float(atel["f1_diff_vs_parent"]) == pytest.approx(
        change["nih"]["per_label"]["Atelectasis"]["delta"]
    )
    summary = json.loads(json.dumps(comparison_summary(doc)))  # as summary.json stores it
    lines = summary_lines(summary)
    assert f"| grpo - sft | nih | 40 | {text} |" in "\n".join(lines)
    assert any(line.startswith("transfer gap change grpo - sft (chexpert -> nih): ") for line in lines)
    assert finding_lines(summary) == [(f"WARNING: {doc['warnings'][0]}", True)]


def test_documents_without_per_image_answers_have_no_interval_tables():
    doc = _doc({("sft", "chexpert"): 20, ("grpo", "chexpert"): 30, ("sft", "ood"): 40, ("grpo", "ood"): 10})
    for e in doc["entries"]:
        del e["per_image"]
    bare = build_results(
        datasets=doc["datasets"], models=doc["models"], prompts=["p"], entries=doc["entries"], margin=0.01
    )
    assert paired_table(bare) is None and gap_change_table(bare) is None
    assert "no per-image answers" in bare["notes"][0]
