"""The paired intervals of a results document as tables and text: each model against the one it was trained
from, per test set (macro-F1, micro-F1, fail rate, per-label F1) and per (in-distribution set, OOD set) pair
(change of the transfer gap), and the short comparison table the demo prints. Pure: documents in, `Table`
or text out (chexrl.evaluation.render renders the tables).

Every interval is the 95% paired bootstrap of chexrl.core.paired: a difference whose interval holds 0 is
within what resampling the same images moves; "beyond noise" marks one whose interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from chexrl.core.paired import SET_MEASURES, Interval
from chexrl.evaluation.tables import Table

MEASURE_TITLES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "fail_rate": "fail rate"}


def interval_text(iv: Mapping | None) -> str:
    """ "+0.022 [-0.010, +0.051]" of a stored interval; "n/a" for none."""
    return Interval(**iv).text() if iv else "n/a"


def beyond_noise(iv: Mapping | None) -> bool:
    return bool(iv) and Interval(**iv).excludes_zero


def has_intervals(doc: Mapping) -> bool:
    return any("interval" in c["macro_f1"] for c in doc.get("changes_vs_parent", ()))


def bootstrap_sentence(doc: Mapping) -> str:
    """How the intervals were made, for the page."""
    b = doc.get("bootstrap") or {}
    return (
        f"Intervals: {b.get('level', 0.95):.0%} paired bootstrap over images ({b.get('n_resamples', '?')} "
        f"resamples, seed {b.get('seed', '?')}): both models are rescored on the same resampled images, so "
        "what the images share cancels. A difference whose interval holds 0 is within resampling noise at "
        "this many images; one whose interval excludes 0 is marked beyond noise."
    )


def paired_table(doc: Mapping) -> Table | None:
    """Child - parent differences with their intervals, one row per (model, test set); None without
    intervals."""
    if not has_intervals(doc):
        return None
    sizes = {d["name"]: d["n"] for d in doc["datasets"]}
    rows = []
    for c in doc["changes_vs_parent"]:
        ivs = [c[key].get("interval") for key in SET_MEASURES]
        noisy = [MEASURE_TITLES[k] for k, iv in zip(SET_MEASURES, ivs, strict=True) if beyond_noise(iv)]
        rows.append(
            (
                c["system"],
                c["parent"],
                c["dataset"],
                sizes.get(c["dataset"]),
                *tuple(interval_text(iv) for iv in ivs),
                ", ".join(noisy) or "none",
            )
        )
    return Table(
        "Differences against the parent model [95% paired bootstrap interval]",
        (
            "model",
            "trained from",
            "test set",
            "images",
            *tuple(f"{MEASURE_TITLES[k]} difference" for k in SET_MEASURES),
            "beyond noise",
        ),
        ("text", "text", "text", "int") + ("text",) * (len(SET_MEASURES) + 1),
        tuple(rows),
        note="difference = model - parent (macro-F1 and micro-F1 in F1 points; fail rate as a share).",
    )


def gap_change_table(doc: Mapping) -> Table | None:
    """The change of each child's transfer gap against its parent's, per (ID set, OOD set) pair."""
    rows = [
        (
            g["system"],
            g["parent"],
            g["id_dataset"],
            g["ood_dataset"],
            interval_text(g["interval"]),
            "yes" if beyond_noise(g["interval"]) else "no",
        )
        for g in doc.get("gap_changes", ())
    ]
    if not rows:
        return None
    return Table(
        "Change of the transfer gap against the parent model [95% paired bootstrap interval]",
        ("model", "trained from", "ID set", "OOD set", "gap change", "beyond noise"),
        ("text",) * 6,
        tuple(rows),
        note="gap = (OOD macro-F1 - ID macro-F1) / ID macro-F1; change = model's gap - parent's gap "
        "(negative: the model loses more out of distribution, relative to its ID score).",
    )


def per_label_change_table(doc: Mapping, dataset: str) -> Table | None:
    """Each label's F1 change against the parent on one set, one column per (model, parent) pair."""
    changes = [c for c in doc["changes_vs_parent"] if c["dataset"] == dataset and c.get("per_label")]
    if not changes:
        return None
    labels = list(changes[0]["per_label"])
    rows = tuple((label, *(interval_text(c["per_label"][label]) for c in changes)) for label in labels)
    return Table(
        f"{dataset}: F1 change per label against the parent [95% paired bootstrap interval]",
        ("label", *(f"{c['system']} - {c['parent']}" for c in changes)),
        ("text",) * (1 + len(changes)),
        rows,
    )


def comparison_summary(doc: Mapping) -> dict:
    """What a summary (the demo's summary.json) keeps of a results document's comparisons, JSON-ready:
    the bootstrap settings, each child - parent difference per set with its intervals, the gap changes,
    the warnings and the notes."""
    sizes = {d["name"]: d["n"] for d in doc["datasets"]}
    return {
        "bootstrap": doc.get("bootstrap"),
        "differences": [
            {"system": c["system"], "parent": c["parent"], "dataset": c["dataset"], "n": sizes[c["dataset"]]}
            | {key: c[key].get("interval") for key in SET_MEASURES}
            for c in doc["changes_vs_parent"]
        ],
        "gap_changes": list(doc.get("gap_changes", ())),
        "warnings": list(doc.get("warnings", ())),
        "notes": list(doc.get("notes", ())),
    }


def summary_lines(comparison: Mapping) -> list[str]:
    """The differences of a comparison_summary as a Markdown table, each with its 95% paired interval,
    then the gap changes, one line each."""
    lines = [
        "| difference | test set | images | macro-F1 [95% CI] | micro-F1 [95% CI] | fail rate [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for d in comparison["differences"]:
        cells = " | ".join(interval_text(d[key]) for key in SET_MEASURES)
        lines.append(f"| {d['system']} - {d['parent']} | {d['dataset']} | {d['n']} | {cells} |")
    for g in comparison["gap_changes"]:
        lines.append(
            f"transfer gap change {g['system']} - {g['parent']} ({g['id_dataset']} -> {g['ood_dataset']}): "
            f"{interval_text(g['interval'])}"
        )
    b = comparison.get("bootstrap") or {}
    lines.append(
        f"(paired bootstrap over the same images: {b.get('n_resamples', '?')} resamples, seed {b.get('seed', '?')}; "
        "an interval holding 0 is within resampling noise)"
    )
    return lines


def finding_lines(comparison: Mapping) -> list[tuple[str, bool]]:
    """(text, is a warning) for each trade-off finding: warnings (beyond noise) first, then notes."""
    return [(f"WARNING: {w}", True) for w in comparison["warnings"]] + [
        (f"NOTE: {n}", False) for n in comparison["notes"]
    ]
