"""Tables of several out-of-distribution sites (chexrl.evaluation.sites): the per-site transfer gap of a
results document, and the per-site macro-F1 of the in-training evaluations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chexrl.evaluation.comparison import metrics_of, transfer_gap
from chexrl.evaluation.selection import macro_f1
from chexrl.evaluation.tables import Table


def site_gap_table(doc: Mapping) -> Table | None:
    """With several OOD sets: per system and site, the site's schema, its macro-F1 on that schema's labels,
    the transfer gap, and the change of the gap against the parent with its paired interval."""
    oods = [d for d in doc["datasets"] if d["role"] == "ood"]
    if len(oods) < 2:
        return None
    changes = {(g["system"], g["ood_dataset"]): g.get("interval") for g in doc.get("gap_changes", ())}
    held = {(t["system"], site) for t in doc.get("site_tradeoffs", ()) for site in t["held_on"]}
    rows = []
    for g in doc["transfer_gaps"]:
        d = next(d for d in oods if d["name"] == g["ood_dataset"])
        iv = changes.get((g["system"], g["ood_dataset"]))
        change = f"{iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]" if iv else ""
        labels = len(metrics_of(doc, g["system"], d["name"]).per_label)
        schema = f"{d['schema']} ({labels} labels)"
        trade = "yes" if (g["system"], d["name"]) in held else ""
        rows.append(
            (
                g["system"],
                d["name"],
                schema,
                d["n"],
                g["id_macro_f1"],
                g["ood_macro_f1"],
                g["gap"],
                change,
                trade,
            )
        )
    return Table(
        "Transfer gap per site (each site scored on its own schema's labels)",
        (
            "model",
            "site",
            "schema",
            "images",
            "ID macro-F1",
            "site macro-F1",
            "transfer gap",
            "gap change vs parent [95%]",
            "trade-off",
        ),
        ("text", "text", "text", "int", "f3", "f3", "pct", "text", "text"),
        tuple(rows),
        note="transfer gap = (site macro-F1 - ID macro-F1) / ID macro-F1; the gap change is the model's gap "
        "minus its parent's, with its paired bootstrap interval over images; trade-off: ID macro-F1 rose over "
        "the parent while this site's fell by more than the margin, beyond resampling noise.",
    )


def evals_sites_table(evals: Sequence[Mapping]) -> Table | None:
    """With several OOD sites during training: per evaluated step, each site's macro-F1, its change against
    the start with the paired interval, the transfer gap, and the sites a trade-off warning held on."""
    with_sites = sorted((e for e in evals if e.get("ood_sites")), key=lambda e: e["step"])
    if not with_sites:
        return None
    sites = list(with_sites[0]["ood_sites"])
    rows = []
    for e in with_sites:
        id_f1 = macro_f1(e["id"])
        f1s = [macro_f1(e["ood_sites"][s]) if s in e["ood_sites"] else None for s in sites]
        vs = [_vs_start_cell((e.get("vs_start_sites") or {}).get(s)) for s in sites]
        gaps = [transfer_gap(id_f1, f) if f is not None else None for f in f1s]
        rows.append((e["step"], id_f1, *f1s, *vs, *gaps, ", ".join(e.get("tradeoff_sites", ()))))
    n = len(sites)
    return Table(
        "Evaluation during training, per OOD site (each on its own schema's labels)",
        (
            "step",
            "ID macro-F1",
            *(f"{s} macro-F1" for s in sites),
            *(f"{s} vs start [95%]" for s in sites),
            *(f"gap -> {s}" for s in sites),
            "trade-off on",
        ),
        ("int", "f3", *("f3",) * n, *("text",) * n, *("pct",) * n, "text"),
        tuple(rows),
    )


def _vs_start_cell(intervals: Mapping | None) -> str:
    """A site's macro-F1 minus the start's with its paired interval; "" at the start or without one."""
    iv = (intervals or {}).get("ood")
    return f"{iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]" if iv else ""
