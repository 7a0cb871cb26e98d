"""The run report's numbers against metrics counted by hand from a small set of known completions.

The run directory is written the way the training loop and `chexrl evaluate` write it (metrics through
chexrl's own code); the expected values below are counted by hand, independently of chexrl.core.metrics.
"""

import csv
import io
import json
import re
from fractions import Fraction as F

import pytest
import yaml

from chexrl.core.metrics import completion_metrics
from chexrl.core.paired import ImageOutcomes, paired_differences, per_image_answers
from chexrl.core.schemas import get_schema
from chexrl.evaluation.comparison import build_results
from chexrl.evaluation.report import write_report
from chexrl.evaluation.runner import write_results
from chexrl.evaluation.selection import select_checkpoints, tradeoff_warning


def ok(*labels: str) -> str:
    return f"<think>seen</think>\n<solution>{', '.join(labels)}</solution>"


# In distribution: CheXpert schema (14 labels), 4 images.
ID_GOLD = [("Cardiomegaly",), ("Cardiomegaly", "Edema"), ("No Finding",), ("Pleural Effusion",)]
ID_COMPLETIONS = {
    # Cardiomegaly TP1 FN1 -> P 1, R 1/2, F1 2/3; Edema TP1 -> 1; Pleural Effusion TP1 FP1 -> P 1/2, R 1, F1 2/3;
    # No Finding FN1 (image 3 fails the format) -> 0; 10 labels without support or predictions -> 0.
    # macro-F1 (2/3 + 1 + 2/3) / 14 = 1/6; micro TP 3 FP 1 FN 2 -> P 3/4, R 3/5, F1 2/3; fail 1/4
    "sft": [
        ok("Cardiomegaly"),
        ok("Edema", "Pleural Effusion"),
        "No Finding, I think.",
        ok("Pleural Effusion"),
    ],
    # Cardiomegaly TP2 -> 1; Edema TP1 FP1 -> 2/3; No Finding TP1 -> 1; Pleural Effusion TP1 -> 1
    # macro-F1 (1 + 2/3 + 1 + 1) / 14 = 11/42; micro TP 5 FP 1 FN 0 -> P 5/6, R 1, F1 10/11; fail 0
    "grpo": [
        ok("Cardiomegaly"),
        ok("Cardiomegaly", "Edema"),
        ok("No Finding"),
        ok("Pleural Effusion", "Edema"),
    ],
}
# Out of distribution: the paper's NIH schema (9 labels), 4 images.
OOD_GOLD = [("Atelectasis",), ("Pneumothorax",), ("No Finding",), ("Atelectasis", "Lung Lesion")]
OOD_COMPLETIONS = {
    # Atelectasis TP2 -> 1; Pneumothorax 1; No Finding 1; Lung Lesion FN1 -> 0 (Support Devices is not an NIH
    # label: ignored). macro-F1 3/9 = 1/3; micro TP 4 FP 0 FN 1 -> P 1, R 4/5, F1 8/9; fail 0
    "sft": [ok("Atelectasis"), ok("Pneumothorax"), ok("No Finding"), ok("Atelectasis", "Support Devices")],
    # Atelectasis TP1 FN1 -> 2/3; Pneumothorax 1; Cardiomegaly FP1 -> 0; No Finding FN1 (no think block) -> 0;
    # Lung Lesion FN1 -> 0. macro-F1 (2/3 + 1) / 9 = 5/27; micro TP 2 FP 1 FN 3 -> P 2/3, R 2/5, F1 1/2; fail 1/4
    "grpo": [ok("Cardiomegaly"), ok("Pneumothorax"), "<solution>No Finding</solution>", ok("Atelectasis")],
}
EXPECTED = {  # by hand, from the comments above
    ("sft", "id"): {
        "macro": F(1, 6),
        "micro": F(2, 3),
        "fail": F(1, 4),
        "Cardiomegaly": F(2, 3),
        "Edema": F(1),
    },
    ("grpo", "id"): {
        "macro": F(11, 42),
        "micro": F(10, 11),
        "fail": F(0),
        "Cardiomegaly": F(1),
        "Edema": F(2, 3),
    },
    ("sft", "ood"): {
        "macro": F(1, 3),
        "micro": F(8, 9),
        "fail": F(0),
        "Atelectasis": F(1),
        "Lung Lesion": F(0),
    },
    ("grpo", "ood"): {
        "macro": F(5, 27),
        "micro": F(1, 2),
        "fail": F(1, 4),
        "Atelectasis": F(2, 3),
        "Lung Lesion": F(0),
    },
}
# transfer gap (ood - id) / id: sft (1/3 - 1/6) / (1/6) = +1; grpo (5/27 - 11/42) / (11/42) = 210/297 - 1
GAP = {"sft": F(1), "grpo": F(210, 297) - 1}
# grpo against sft: ID (11/42) / (1/6) - 1 = 4/7; OOD (5/27) / (1/3) - 1 = -4/9
CHANGE = {"id": F(4, 7), "ood": F(-4, 9)}
REWARDS = [1.0, 0.0, 1.0]  # EMA 0.95 (debiased) at the last step: 0.095125 / 0.142625 = 0.66696


def f3(x) -> str:
    return f"{float(x):.3f}"


def pct(x) -> str:
    return f"{float(x):+.1%}"


def _metrics(completions, golds, schema):
    return completion_metrics(completions, golds, get_schema(schema)).as_dict()


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"grpo": {"run_id": "hand-run", "model": "/m/sft", "tradeoff_margin": 0.05}})
    )
    with open(run / "metrics.jsonl", "w") as f:
        for step, r in enumerate(REWARDS, start=1):
            rec = {"step": step, "reward/total": r, "reward/jaccard": r, "reward/length_penalty": 0.0}
            f.write(json.dumps(rec | {"completion/length": 10.0 * step, "loss/kl": 0.0}) + "\n")
        f.write('{"step": 4, "reward/tot')  # a line torn by a kill is skipped

    # Evaluation during training, as trainer/periodic_eval.py writes it: step 0 = the SFT start, step 8 =
    # the GRPO completions, step 16 = the SFT completions again.
    evals = []
    for step, who in ((0, "sft"), (8, "grpo"), (16, "sft")):
        rec = {
            "step": step,
            "id": _metrics(ID_COMPLETIONS[who], ID_GOLD, "chexpert14"),
            "ood": _metrics(OOD_COMPLETIONS[who], OOD_GOLD, "nih9"),
            "id_name": "cx-held",
            "ood_name": "nih-held",
        }
        warning = tradeoff_warning(evals[0], rec, 0.05) if evals else None
        evals.append(rec | {"warnings": [warning] if warning else []})
    (run / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    selection = select_checkpoints(evals)
    for pick in selection.values():
        pick["checkpoint"] = f"adapters/step-{pick['step']:06d}" if pick["step"] else None
    (run / "selection.json").write_text(json.dumps(selection))

    # The final evaluation, as `chexrl evaluate --out RUN/evaluation` writes it.
    entries, completions = [], []
    for who in ("sft", "grpo"):
        for name, comps, golds, schema in (
            ("chexpert", ID_COMPLETIONS[who], ID_GOLD, "chexpert14"),
            ("nih", OOD_COMPLETIONS[who], OOD_GOLD, "nih9"),
        ):
            entries.append(
                {
                    "model": who,
                    "prompt": "free_reasoning",
                    "dataset": name,
                    "metrics": _metrics(comps, golds, schema),
                    "per_image": per_image_answers(comps, golds, get_schema(schema)),
                }
            )
            completions += [
                {"model": who, "dataset": name, "completion": c, "labels": list(g)}
                for c, g in zip(comps, golds, strict=True)
            ]
    doc = build_results(
        datasets=[
            {"name": "chexpert", "spec": "chexpert:/d:test", "schema": "chexpert14", "n": 4},
            {"name": "nih", "spec": "nih:/n:test", "schema": "nih9", "n": 4},
        ],
        models=[
            {"name": "sft", "model": "/m/sft", "adapter": None, "parent": None},
            {"name": "grpo", "model": "/m/sft", "adapter": "/a", "parent": "sft"},
        ],
        prompts=["free_reasoning"],
        entries=entries,
        margin=0.05,
        sampling={"greedy": True, "max_tokens": 64},
    )
    write_results(doc, run / "evaluation", completions)
    return run


PAIRED_TITLE = "Differences against the parent model [95% paired bootstrap interval]"


def _outcomes(completions, golds, schema) -> ImageOutcomes:
    return ImageOutcomes.from_completions(completions, golds, get_schema(schema))


def md_table(text: str, title: str) -> list[dict]:
    """The Markdown table under the bold `title` line, as dicts of cell text (bold marks removed)."""
    lines = text.splitlines()
    start = lines.index(f"**{title}**") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r, strict=True)) for r in body]


def test_report_numbers_match_the_hand_counts(run_dir):
    html_path = write_report(run_dir)
    md = (html_path.parent / "report.md").read_text()

    # Evaluation during training
    rows = {r["step"]: r for r in md_table(md, "Evaluation during training: cx-held (ID) and nih-held (OOD)")}
    assert list(rows) == ["0", "8", "16"]
    for step, who in (("0", "sft"), ("8", "grpo"), ("16", "sft")):
        e_id, e_ood = EXPECTED[who, "id"], EXPECTED[who, "ood"]
        assert rows[step]["ID macro-F1"] == f3(e_id["macro"]) and rows[step]["OOD macro-F1"] == f3(
            e_ood["macro"]
        )
        assert rows[step]["ID micro-F1"] == f3(e_id["micro"]) and rows[step]["OOD micro-F1"] == f3(
            e_ood["micro"]
        )
        assert rows[step]["ID fail rate"] == f3(e_id["fail"]) and rows[step]["OOD fail rate"] == f3(
            e_ood["fail"]
        )
        assert rows[step]["transfer gap"] == pct(GAP[who])
    assert [rows[s]["trade-off warning"] for s in ("0", "8", "16")] == ["", "yes", ""]

    # Selection: best ID = step 8 (11/42); final = 16; best OOD = step 0 (1/3, tied with 16: earliest);
    # best worst case = step 8 (min 5/27 against 1/6 at steps 0 and 16)
    sel = {r["policy"]: r for r in md_table(md, "Checkpoint selection")}
    assert {p: r["step"] for p, r in sel.items()} == {
        "best_id": "8",
        "final": "16",
        "best_ood": "0",
        "best_worst_case": "8",
    }
    assert sel["best_id"]["checkpoint"] == "adapters/step-000008"
    assert sel["best_ood"]["checkpoint"] == "the starting checkpoint"
    assert sel["best_worst_case"]["worst case"] == f3(F(5, 27))

    # Warnings: the in-training one at step 8. The final grpo-against-sft trade-off is a note: at 4 images
    # the OOD drop's paired interval holds 0
    warnings = [line for line in md.splitlines() if line.startswith("- **WARNING**")]
    assert len(warnings) == 1
    assert (
        f"step 8: step 0 -> step 8: in-distribution macro-F1 rose {f3(F(1, 6))} -> {f3(F(11, 42))}"
        in warnings[0]
    )
    ood = paired_differences(*(_outcomes(OOD_COMPLETIONS[w], OOD_GOLD, "nih9") for w in ("sft", "grpo")))
    assert ood["macro_f1"].delta == pytest.approx(float(F(5, 27) - F(1, 3)))
    assert ood["macro_f1"].low < 0 <= ood["macro_f1"].high and not ood["macro_f1"].excludes_zero
    note = next(line for line in md.splitlines() if line.startswith("- sft -> grpo:"))
    assert f"OOD macro-F1 (nih) {ood['macro_f1'].text()} ({f3(F(1, 3))} -> {f3(F(5, 27))}, n=4)" in note
    assert "within resampling noise at n=4 images" in note

    # The differences with their intervals, as the core bootstrap gives them
    diffs = {(r["model"], r["test set"]): r for r in md_table(md, PAIRED_TITLE)}
    assert diffs["grpo", "nih"]["macro-F1 difference"] == ood["macro_f1"].text()
    assert diffs["grpo", "nih"]["fail rate difference"] == ood["fail_rate"].text()
    assert ood["fail_rate"].delta == pytest.approx(0.25)

    # Training dynamics: the EMA of the total reward at the last step, counted by hand
    train = {r["metric"]: r for r in md_table(md, "Training metrics")}
    assert train["reward/total"]["steps"] == "3" and train["reward/total"]["last, EMA 0.95"] == f3(
        0.095125 / 0.142625
    )
    assert train["completion/length"]["last"] == "30.000" and "loss/kl" not in train

    # Final evaluation, side by side
    side = {r["model"]: r for r in md_table(md, "Models side by side")}
    for who in ("sft", "grpo"):
        assert side[who]["chexpert (ID) macro-F1"] == f3(EXPECTED[who, "id"]["macro"])
        assert side[who]["nih (OOD) macro-F1"] == f3(EXPECTED[who, "ood"]["macro"])
        assert side[who]["transfer gap -> nih"] == pct(GAP[who])
        assert side[who]["nih fail rate"] == f3(EXPECTED[who, "ood"]["fail"])
    assert side["grpo"]["trained from"] == "sft"
    change = {r["test set"]: r for r in md_table(md, "Change against the model each was trained from")}
    assert change["chexpert"]["macro-F1 change"] == pct(CHANGE["id"]) and change["nih"][
        "macro-F1 change"
    ] == pct(CHANGE["ood"])
    assert change["chexpert"]["micro-F1 change"] == pct(F(10, 11) / F(2, 3) - 1)  # +4/11
    assert change["nih"]["fail change"] == "+0.250"  # 1/4 - 0, a difference

    # Per-label tables in the layout of the paper's Tables 5 and 6
    t5 = {
        r["Category"]: r for r in md_table(md, "chexpert (ID): F1 per label (layout of the paper's Table 5)")
    }
    t6 = {r["Category"]: r for r in md_table(md, "nih (OOD): F1 per label (layout of the paper's Table 6)")}
    assert len(t5) == 15 and len(t6) == 10
    for who in ("sft", "grpo"):
        for label in ("Cardiomegaly", "Edema"):
            assert t5[label][who] == f3(EXPECTED[who, "id"][label])
        for label in ("Atelectasis", "Lung Lesion"):
            assert t6[label][who] == f3(EXPECTED[who, "ood"][label])
        assert t5["Overall Average (Macro F1)"][who] == f3(EXPECTED[who, "id"]["macro"])
        assert t6["Overall Average (Macro F1)"][who] == f3(EXPECTED[who, "ood"]["macro"])


def test_results_files_agree_at_full_precision(run_dir):
    out = run_dir / "evaluation"
    doc = json.loads((out / "results.json").read_text())
    rows = {
        (r["system"], r["dataset"]): r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text()))
    }
    for who in ("sft", "grpo"):
        for name, side in (("chexpert", "id"), ("nih", "ood")):
            e = EXPECTED[who, side]
            m = next(x["metrics"] for x in doc["entries"] if (x["model"], x["dataset"]) == (who, name))
            r = rows[who, name]
            for value in (m["macro"]["f1"], float(r["macro_f1"])):
                assert value == pytest.approx(float(e["macro"]), abs=1e-12)
            assert float(r["micro_f1"]) == pytest.approx(float(e["micro"]), abs=1e-12)
            assert float(r["fail_rate"]) == float(e["fail"])
    assert float(rows["grpo", "nih"]["transfer_gap"]) == pytest.approx(float(GAP["grpo"]), abs=1e-12)
    assert float(rows["grpo", "nih"]["macro_f1_change_vs_parent"]) == pytest.approx(
        float(CHANGE["ood"]), abs=1e-12
    )
    per_label = {
        (r["system"], r["dataset"], r["label"]): r
        for r in csv.DictReader(io.StringIO((out / "per_label.csv").read_text()))
    }
    assert len(per_label) == 2 * (14 + 9)
    assert float(per_label["sft", "chexpert", "Pleural Effusion"]["precision"]) == 0.5
    assert per_label["grpo", "chexpert", "Cardiomegaly"]["support"] == "2"
    md = (out / "results.md").read_text()
    assert f"| grpo | sft | {f3(F(11, 42))} | {f3(F(5, 27))} | {pct(GAP['grpo'])} |" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "completions.jsonl").read_text().splitlines()) == 16


def test_html_is_self_contained_and_figures_are_next_to_the_markdown(run_dir):
    html_path = write_report(run_dir)
    html = html_path.read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "&lt;think&gt;" in html  # text is escaped
    md = (html_path.parent / "report.md").read_text()
    for name in ("training_curves", "eval_curves", "comparison", "paired"):
        assert f"](figures/{name}.png)" in md
        assert (html_path.parent / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "run_id: hand-run" in md and md.startswith("# chexrl run report: hand-run")


def test_missing_files_are_reported_not_fatal(run_dir):
    for name in ("selection.json", "config.yaml", "metrics.jsonl"):
        (run_dir / name).unlink()
    (run_dir / "evaluation" / "results.json").unlink()
    md = (write_report(run_dir).parent / "report.md").read_text()
    missing = md.split("## Missing from the run directory\n\n")[1].split("\n\n")[0]
    assert missing.splitlines() == [
        "- config.yaml",
        "- metrics.jsonl",
        "- selection.json",
        "- evaluation/results.json",
    ]
    assert "computed from evals.jsonl" in md  # selection recomputed with the loop's own function
    assert {r["policy"]: r["step"] for r in md_table(md, "Checkpoint selection")}["best_id"] == "8"
    assert "No per-step metrics" in md and "No config.yaml" in md


def test_the_demos_comparison_from_metrics_it_computed(tmp_path):
    """The demo's path: metrics it computed itself (evaluate_samples' output, "schema" and "completions"
    included) -> results_from_metrics -> write_results under the GRPO run -> write_report."""
    from chexrl.evaluation.runner import ModelSpec, results_from_metrics

    run = tmp_path / "grpo"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"grpo": {"run_id": "demo-grpo", "model": "/m/sft"}}))
    computed = {}
    for who, id_comps, ood_comps in (
        ("base", ["no tags"] * 4, ["no tags"] * 4),  # fails the format everywhere: all 0, fail 1
        ("sft", ID_COMPLETIONS["sft"], OOD_COMPLETIONS["sft"]),
        ("grpo", ID_COMPLETIONS["grpo"], OOD_COMPLETIONS["grpo"]),
    ):
        computed[who] = {
            "chexpert": {"schema": "chexpert14", **_metrics(id_comps, ID_GOLD, "chexpert14")}
            | {"completions": id_comps},
            "nih site-b": _metrics(ood_comps, OOD_GOLD, "nih9"),  # no "schema": found from its labels
        }
    models = [
        ModelSpec("base", "/m/base"),
        ModelSpec("sft", "/m/sft", parent="base"),
        ModelSpec("grpo", "/m/sft", "/runs/grpo/adapter-final", parent="sft"),
    ]
    doc = results_from_metrics(
        models,
        computed,
        specs={"chexpert": "chexpert:/d", "nih site-b": "nih:/n"},
        sampling={"greedy": True, "max_tokens": 64},
    )
    assert [(d["name"], d["role"], d["schema"], d["n"]) for d in doc["datasets"]] == [
        ("chexpert", "id", "chexpert14", 4),
        ("nih site-b", "ood", "nih9", 4),
    ]
    assert all(set(e["metrics"]) == {"n", "fail_rate", "micro", "macro", "per_label"} for e in doc["entries"])
    paths = write_results(doc, run / "evaluation")
    assert sorted(paths) == ["chart", "csv", "json", "markdown", "per_label_csv"]

    md = (write_report(run).parent / "report.md").read_text()
    assert md.startswith("# chexrl run report: demo-grpo")
    side = {r["model"]: r for r in md_table(md, "Models side by side")}
    assert list(side) == ["base", "sft", "grpo"]
    assert (
        side["base"]["transfer gap -> nih site-b"] == "n/a" and side["base"]["chexpert fail rate"] == "1.000"
    )
    assert side["grpo"]["transfer gap -> nih site-b"] == pct(GAP["grpo"])
    assert side["grpo"]["nih site-b (OOD) macro-F1"] == f3(F(5, 27))
    change = md_table(md, "Change against the model each was trained from")
    # sft against base: the base's macro-F1 is 0, so no relative change
    assert [(r["model"], r["test set"], r["macro-F1 change"]) for r in change] == [
        ("sft", "chexpert", "n/a"),
        ("sft", "nih site-b", "n/a"),
        ("grpo", "chexpert", pct(CHANGE["id"])),
        ("grpo", "nih site-b", pct(CHANGE["ood"])),
    ]
    # no per-image answers: the trade-off cannot be told from noise, so it is a note, not a warning
    assert not [line for line in md.splitlines() if line.startswith("- **WARNING**")]
    assert "no per-image answers to tell it from resampling noise" in md and "sft -> grpo" in md
    with pytest.raises(ValueError, match="different sizes"):
        results_from_metrics(
            models[:2],
            {"base": computed["base"], "sft": {"chexpert": {**computed["sft"]["chexpert"], "n": 3}}},
        )


def test_models_from_a_run_directory(tmp_path):
    from chexrl.evaluation.runner import ModelSpec, models_from_run

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match=r"no config\.yaml"):
        models_from_run(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"grpo": {"model": "/m/sft"}}))
    with pytest.raises(ValueError, match="no GRPO checkpoint"):
        models_from_run(run)
    (run / "adapter-final").mkdir()  # a run without evaluation during training: its final adapter
    assert models_from_run(run) == [
        ModelSpec("start", "/m/sft"),
        ModelSpec("grpo-final", "/m/sft", str(run / "adapter-final"), "start"),
    ]
    selection = {
        "best_id": {"step": 8, "checkpoint": "adapters/step-000008"},
        "final": {"step": 16, "checkpoint": "adapters/step-000016"},
        "best_ood": {"step": 0, "checkpoint": None},
        "best_worst_case": {"step": 8, "checkpoint": "adapters/step-000008"},
    }
    (run / "selection.json").write_text(json.dumps(selection))
    assert [(m.name, m.adapter) for m in models_from_run(run)] == [
        ("start", None),
        ("grpo-step8", str(run / "adapters/step-000008")),
        ("grpo-step16", str(run / "adapters/step-000016")),
    ]
