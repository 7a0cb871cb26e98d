"""Several out-of-distribution sites (chexrl/evaluation/sites.py, site_tables.py): each scored on its own
schema, a transfer gap per site in the results document and its tables, the trade-off naming the sites it
holds on, and evaluation during training over several sites (no engine: answers made up here, and
evaluate_samples replaced by a function that returns them)."""

import json
from types import SimpleNamespace

import pytest

from chexrl.config import GRPOConfig, load_config
from chexrl.core.metrics import completion_metrics, label_set_metrics
from chexrl.core.schemas import get_schema
from chexrl.evaluation.comparison import build_results
from chexrl.evaluation.render import markdown_table
from chexrl.evaluation.report import write_report
from chexrl.evaluation.selection import select_checkpoints
from chexrl.evaluation.site_tables import evals_sites_table, site_gap_table
from chexrl.evaluation.sites import reach_text

N = 40
GOLD = {
    "cx": ([["Edema"] if i % 2 else ["Cardiomegaly"] for i in range(N)], "chexpert14"),
    "nih": ([["Atelectasis"] if i % 2 else ["Pneumothorax"] for i in range(N)], "nih9"),
    "vindr": ([["Cardiomegaly"] if i % 2 else ["No Finding"] for i in range(N)], "vindr9"),
    "expert": ([["Fracture"] if i % 2 else ["Lung Opacity"] for i in range(N)], "nih-expert4"),
}


def _entry(model: str, dataset: str, right: int) -> dict:
    gold, schema = GOLD[dataset]
    # wrong answers name a label every schema has (Pneumothorax), so they count as false positives
    preds = [list(g) if i < right else ["Pneumothorax"] for i, g in enumerate(gold)]
    m = label_set_metrics(preds, gold, get_schema(schema))
    per_image = {"gold": gold, "predicted": preds, "invalid": [False] * N}
    return {"model": model, "prompt": "p", "dataset": dataset, "metrics": m.as_dict(), "per_image": per_image}


def _doc(right: dict[tuple[str, str], int]) -> dict:
    sets = ["cx", "nih", "vindr", "expert"]
    return build_results(
        datasets=[{"name": n, "spec": f"{n}:/d", "schema": GOLD[n][1], "n": N} for n in sets],
        models=[
            {"name": "sft", "model": "/m", "adapter": None, "parent": None},
            {"name": "grpo", "model": "/m", "adapter": "/a", "parent": "sft"},
        ],
        prompts=["p"],
        entries=[_entry(m, d, right[m, d]) for m in ("sft", "grpo") for d in sets],
        margin=0.01,
    )


# grpo gains in distribution; loses far beyond noise on vindr, within noise on nih, gains on expert
RIGHT = {("sft", "cx"): 20, ("grpo", "cx"): 32, ("sft", "nih"): 24, ("grpo", "nih"): 20}
RIGHT |= {("sft", "vindr"): 36, ("grpo", "vindr"): 8, ("sft", "expert"): 10, ("grpo", "expert"): 30}


def test_each_site_has_its_gap_on_its_own_schema_and_the_warning_names_the_sites():
    doc = _doc(RIGHT)
    for d in ("nih", "vindr", "expert"):  # each site scored on its schema's labels only
        entry = next(e for e in doc["entries"] if e["dataset"] == d and e["model"] == "grpo")
        assert list(entry["metrics"]["per_label"]) == list(get_schema(GOLD[d][1]).labels)
    gaps = {(g["system"], g["ood_dataset"]): g["gap"] for g in doc["transfer_gaps"]}
    assert set(gaps) == {(s, d) for s in ("sft", "grpo") for d in ("nih", "vindr", "expert")}
    f1 = {(e["model"], e["dataset"]): e["metrics"]["macro"]["f1"] for e in doc["entries"]}
    assert gaps["grpo", "vindr"] == pytest.approx((f1["grpo", "vindr"] - f1["grpo", "cx"]) / f1["grpo", "cx"])
    assert doc["site_tradeoffs"] == [
        {
            "system": "grpo",
            "parent": "sft",
            "id_dataset": "cx",
            "held_on": ["vindr"],
            "within_noise_on": ["nih"],
            "not_on": ["expert"],
        }
    ]
    assert doc["warnings"][0] == reach_text("grpo vs sft", ["vindr"], ["vindr", "nih", "expert"], ["nih"])
    assert (
        "holds on vindr (1 of 3 OOD sites); within resampling noise on nih; not on expert"
        in doc["warnings"][0]
    )
    assert "(vindr)" in doc["warnings"][1] and len(doc["notes"]) == 1 and "(nih)" in doc["notes"][0]


def test_the_site_table_shows_schema_gap_and_the_gap_changes_interval():
    doc = _doc(RIGHT)
    md = markdown_table(site_gap_table(doc))
    iv = next(g["interval"] for g in doc["gap_changes"] if g["ood_dataset"] == "vindr")
    gap = next(g["gap"] for g in doc["transfer_gaps"] if (g["system"], g["ood_dataset"]) == ("grpo", "vindr"))
    change = f"{iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"
    assert "| grpo | vindr | vindr9 (9 labels) | 40 |" in md and f"| {gap:+.1%} | {change} | yes |" in md
    assert "| grpo | expert | nih-expert4 (4 labels) | 40 |" in md
    one_site = build_results(
        datasets=[{"name": n, "spec": "", "schema": GOLD[n][1], "n": N} for n in ("cx", "nih")],
        models=[{"name": "sft", "model": "/m", "adapter": None, "parent": None}],
        prompts=["p"],
        entries=[_entry("sft", d, 20) for d in ("cx", "nih")],
    )
    assert site_gap_table(one_site) is None and one_site["warnings"] == []  # one site: pages as before


def _fake_evaluate(answers: dict):
    """evaluate_samples' stand-in: the metrics of made-up completions, per set (told apart by the samples)."""

    def evaluate(router, samples, *, prompt_name, max_tokens):
        name = samples[0].site
        texts = [f"<think>x</think><solution>{a}</solution>" for a in answers[router][name]]
        gold, schema = GOLD[name]
        m = completion_metrics(texts, gold, get_schema(schema)).as_dict()
        return {**m, "schema": schema, "completions": texts}

    return evaluate


def _samples(name: str) -> list[SimpleNamespace]:
    """Stand-ins for a set's XraySamples: its gold labels, and which set it is."""
    return [SimpleNamespace(site=name, labels=tuple(g)) for g in GOLD[name][0]]


def _answers(right: dict[str, int]) -> dict[str, list[str]]:
    return {
        d: [", ".join(g) if i < r else "Pneumothorax" for i, g in enumerate(GOLD[d][0])]
        for d, r in right.items()
    }


def test_evaluation_during_training_over_several_sites(tmp_path, monkeypatch):
    from trainer import periodic_eval
    from trainer.periodic_eval import PeriodicEvaluator, eval_scalars

    routers = {
        "start": _answers({"cx": 20, "nih": 20, "vindr": 36}),
        "later": _answers({"cx": 34, "nih": 21, "vindr": 6}),  # ID up, vindr down: the trade-off on vindr
    }
    monkeypatch.setattr(periodic_eval, "evaluate_samples", _fake_evaluate(routers))
    evaluator = PeriodicEvaluator(
        tmp_path,
        ("cx", _samples("cx")),
        [("nih", _samples("nih")), ("vindr", _samples("vindr"))],
        prompt_name="p",
        max_tokens=8,
        margin=0.05,
    )
    first = evaluator.evaluate("start", 0, None)
    later = evaluator.evaluate("later", 10, None)
    saved = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert saved == [first, later]
    assert later["ood_name"] == "nih" and later["ood"] == later["ood_sites"]["nih"]  # one-site readers: nih
    assert list(later["ood_sites"]) == ["nih", "vindr"]
    assert (
        later["ood_sites"]["vindr"]["schema"] == "vindr9"
        and len(later["ood_sites"]["vindr"]["per_label"]) == 9
    )
    assert later["tradeoff_sites"] == ["vindr"] and first["warnings"] == []
    assert later["warnings"][0].startswith(
        "step 0 -> step 10: the benchmark-versus-transfer trade-off holds on vindr"
    )
    assert "OOD macro-F1 (vindr)" in later["warnings"][1] and len(later["warnings"]) == 2
    assert later["per_image_sites"]["vindr"]["gold"][0] == ["No Finding"]  # each site's own answers
    assert (
        later["vs_start_sites"]["vindr"]["ood"]["high"] < 0
        and later["vs_start"] == later["vs_start_sites"]["nih"]
    )

    scalars = eval_scalars(later)
    assert scalars["eval/ood_macro_f1/vindr"] == later["ood_sites"]["vindr"]["macro"]["f1"]
    assert scalars["eval/ood_macro_f1"] == later["ood"]["macro"]["f1"]
    picks = select_checkpoints(saved)  # OOD: the mean of the sites, in best_ood and best_worst_case alike
    mean = {e["step"]: sum(s["macro"]["f1"] for s in e["ood_sites"].values()) / 2 for e in saved}
    worst = {e["step"]: min(e["id"]["macro"]["f1"], mean[e["step"]]) for e in saved}
    assert picks["best_ood"]["step"] == max(mean, key=mean.get)
    assert picks["best_ood"]["ood_macro_f1"] == pytest.approx(mean[picks["best_ood"]["step"]])
    assert picks["best_worst_case"]["step"] == max(worst, key=worst.get)
    assert "tied_with" not in picks["best_ood"]  # no per-image resample of a mean over sites

    md = markdown_table(evals_sites_table(saved))
    header = (
        "| step | ID macro-F1 | nih macro-F1 | vindr macro-F1 | nih vs start [95%] | vindr vs start [95%] |"
    )
    assert header in md and md.rstrip().endswith("| vindr |")
    iv = later["vs_start_sites"]["vindr"]["ood"]
    assert f"| {iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}] |" in md.splitlines()[-1]
    report = write_report(tmp_path).with_name("report.md").read_text()
    assert "per OOD site" in report and "holds on vindr" in report


def test_one_site_records_keep_their_shape(tmp_path, monkeypatch):
    from trainer import periodic_eval
    from trainer.periodic_eval import PeriodicEvaluator

    monkeypatch.setattr(
        periodic_eval, "evaluate_samples", _fake_evaluate({"r": _answers({"cx": 20, "nih": 20})})
    )
    evaluator = PeriodicEvaluator(
        tmp_path, ("cx", _samples("cx")), ("nih", _samples("nih")), prompt_name="p", max_tokens=8, margin=0.05
    )
    evaluator.evaluate("r", 0, None)
    record = evaluator.evaluate("r", 5, None)  # one site: the keys, in order, of a one-site evaluator
    assert list(record) == [
        "step",
        "id",
        "ood",
        "id_name",
        "ood_name",
        "per_image",
        "vs_start",
        "warnings",
        "notes",
    ]
    with pytest.raises(ValueError, match="OOD sets need distinct names"):
        PeriodicEvaluator(
            tmp_path / "x", ("cx", ["cx"]), [("a", []), ("a", [])], prompt_name="p", max_tokens=8, margin=0
        )


def test_config_takes_one_ood_spec_or_a_list():
    one = GRPOConfig(eval_id_data="chexpert:/a:valid", eval_ood_data="nih:/b:test")
    assert one.eval_ood_specs == ["nih:/b:test"] and one.eval_ood_data == "nih:/b:test"
    several = GRPOConfig(eval_id_data="chexpert:/a:valid", eval_ood_data=["nih:/b:test", "vindr:/c"])
    assert several.eval_ood_specs == ["nih:/b:test", "vindr:/c"]
    with pytest.raises(ValueError, match="empty list"):
        GRPOConfig(eval_id_data="chexpert:/a:valid", eval_ood_data=[])
    with pytest.raises(ValueError, match=r"names \['vindr:/c'\] more than once"):
        GRPOConfig(eval_id_data="chexpert:/a:valid", eval_ood_data=["vindr:/c", "vindr:/c"])
    assert GRPOConfig().eval_ood_specs == []


def test_the_shipped_configs_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parent.parent / "chexrl" / "configs"
    demo = load_config(configs / "demo.yaml")  # the demo keeps its one shifted site, the recipe's ood_test
    assert demo.grpo.eval_ood_data is None and demo.recipe.data.ood_test.startswith("nih:")
    multi = load_config(configs / "multisite.yaml")
    assert [s.split(":")[0] for s in multi.grpo.eval_ood_specs] == ["nih", "vindr", "padchest", "nih-expert"]
