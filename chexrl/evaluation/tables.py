"""The tables of `chexrl evaluate` and `chexrl report`, in the paper's layouts. Pure: data in, `Table` out;
chexrl.evaluation.render turns a Table into Markdown, HTML or CSV.

Cells keep their raw values (CSV writes them at full precision); each column has a display format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chexrl.core.metrics import DatasetMetrics
from chexrl.core.paired import SET_MEASURES
from chexrl.core.pass_at_k import MEASURES
from chexrl.core.prompts import PROMPTS
from chexrl.evaluation.comparison import metrics_of, transfer_gap
from chexrl.evaluation.selection import POLICIES, TIE_BREAK, ema

# Display formats: text as is, f3 three decimals, pct a signed percentage, delta a signed difference.
FORMATS = ("text", "f3", "pct", "delta", "int")
OVERALL_ROW = "Overall Average (Macro F1)"  # the last row of the paper's Tables 5 and 6


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    formats: tuple[str, ...]
    rows: tuple[tuple, ...]
    bold_row_max: bool = False  # bold each row's highest number (the paper's Tables 5 and 6)
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.formats) != len(self.header) or any(len(r) != len(self.header) for r in self.rows):
            raise ValueError(f"table {self.title!r}: every row and the formats need {len(self.header)} cells")
        bad = set(self.formats) - set(FORMATS)
        if bad:
            raise ValueError(f"table {self.title!r}: unknown formats {sorted(bad)}")


def format_cell(value, fmt: str) -> str:
    """A cell as displayed: None is "n/a".

    >>> format_cell(-0.1875, "pct"), format_cell(0.25, "f3"), format_cell(0.02, "delta"), format_cell(None, "f3")
    ('-18.8%', '0.250', '+0.020', 'n/a')
    """
    if value is None:
        return "n/a"
    if fmt == "f3":
        return f"{value:.3f}"
    if fmt == "pct":
        return f"{value:+.1%}"
    if fmt == "delta":
        return f"{value:+.3f}"
    if fmt == "int":
        return str(int(value))
    return str(value)


# ------------------------------------------------------------------------ results of `chexrl evaluate`


def _role(doc: Mapping, dataset: str) -> str:
    return next(d["role"] for d in doc["datasets"] if d["name"] == dataset).upper()


def _gap(doc: Mapping, system: str, ood: str) -> float | None:
    return next(g["gap"] for g in doc["transfer_gaps"] if g["system"] == system and g["ood_dataset"] == ood)


def overview_table(doc: Mapping) -> Table:
    """One row per system: macro-F1 on every set, the transfer gaps, micro-F1 and fail rates."""
    sets = [d["name"] for d in doc["datasets"]]
    oods = sets[1:]
    header = ["model", "trained from"]
    header += [f"{s} ({_role(doc, s)}) macro-F1" for s in sets]
    header += [f"transfer gap -> {s}" for s in oods]
    header += [f"{s} micro-F1" for s in sets] + [f"{s} fail rate" for s in sets]
    formats = ["text", "text"] + ["f3"] * len(sets) + ["pct"] * len(oods) + ["f3"] * (2 * len(sets))
    rows = []
    for s in doc["systems"]:
        m = {name: metrics_of(doc, s["label"], name) for name in sets}
        rows.append(
            (
                s["label"],
                s["parent"] or "",
                *(m[n].macro.f1 for n in sets),
                *(_gap(doc, s["label"], n) for n in oods),
                *(m[n].micro.f1 for n in sets),
                *(m[n].fail_rate for n in sets),
            )
        )
    return Table(
        "Models side by side",
        tuple(header),
        tuple(formats),
        tuple(rows),
        note="transfer gap = (OOD macro-F1 - ID macro-F1) / ID macro-F1; n/a when ID macro-F1 is 0.",
    )


def metrics_table(doc: Mapping, dataset: str) -> Table:
    """Micro and macro precision, recall and F1 and the fail rate on one set (the paper's Tables 2-4)."""
    rows = []
    for s in doc["systems"]:
        m = metrics_of(doc, s["label"], dataset)
        mi, ma = m.micro, m.macro
        rows.append(
            (s["label"], m.n, mi.precision, mi.recall, mi.f1, ma.precision, ma.recall, ma.f1, m.fail_rate)
        )
    return Table(
        f"{dataset} ({_role(doc, dataset)}): micro and macro metrics",
        ("model", "n", "micro P", "micro R", "micro F1", "macro P", "macro R", "macro F1", "fail rate"),
        ("text", "int") + ("f3",) * 7,
        tuple(rows),
    )


def per_label_table(doc: Mapping, dataset: str) -> Table:
    """F1 per label, one column per system, the macro-F1 last (the paper's Table 5 in distribution,
    Table 6 out of distribution); each row's best is bold."""
    systems = [s["label"] for s in doc["systems"]]
    per = {s: metrics_of(doc, s, dataset) for s in systems}
    labels = list(per[systems[0]].per_label)
    rows = [(label, *(per[s].per_label[label].f1 for s in systems)) for label in labels]
    rows.append((OVERALL_ROW, *(per[s].macro.f1 for s in systems)))
    role = _role(doc, dataset)
    return Table(
        f"{dataset} ({role}): F1 per label (layout of the paper's Table {5 if role == 'ID' else 6})",
        ("Category", *systems),
        ("text",) + ("f3",) * len(systems),
        tuple(rows),
        bold_row_max=True,
    )


def parent_table(doc: Mapping) -> Table | None:
    """Each model against the one it was trained from, on every set; None when no model has a parent."""
    rows = []
    for c in doc["changes_vs_parent"]:
        ma, mi, fr = c["macro_f1"], c["micro_f1"], c["fail_rate"]
        rows.append(
            (
                c["system"],
                c["parent"],
                c["dataset"],
                ma["parent"],
                ma["value"],
                ma["change"],
                mi["parent"],
                mi["value"],
                mi["change"],
                fr["parent"],
                fr["value"],
                fr["delta"],
            )
        )
    if not rows:
        return None
    return Table(
        "Change against the model each was trained from",
        (
            "model",
            "trained from",
            "test set",
            "parent macro-F1",
            "macro-F1",
            "macro-F1 change",
            "parent micro-F1",
            "micro-F1",
            "micro-F1 change",
            "parent fail",
            "fail",
            "fail change",
        ),
        ("text", "text", "text", "f3", "f3", "pct", "f3", "f3", "pct", "f3", "f3", "delta"),
        tuple(rows),
        note="change = (model - parent) / parent; fail change = model - parent (a difference).",
    )


def prompt_title(name: str) -> str:
    """The paper's name of a prompt variant (Table 1), or the name itself when it is not one of them."""
    title = PROMPTS[name].title if name in PROMPTS else name
    return f"{title} (baseline)" if name == "reasoning_a" else title


def ablation_table(doc: Mapping, dataset: str) -> Table:
    """One model, one row per prompt variant: micro-F1, macro-F1, fail rate (the paper's Table 1)."""
    rows = []
    for s in doc["systems"]:
        m = metrics_of(doc, s["label"], dataset)
        rows.append((prompt_title(s["prompt"]), s["prompt"], m.micro.f1, m.macro.f1, m.fail_rate))
    model = doc["systems"][0]["model"]
    return Table(
        f"Prompt ablation of {model} on {dataset} (layout of the paper's Table 1)",
        ("Prompt Configuration", "name", "Micro-F1", "Macro-F1", "Fail Rate"),
        ("text", "text", "f3", "f3", "f3"),
        tuple(rows),
    )


PASS_COLUMNS = (  # (measure of chexrl.core.pass_at_k, column title with K filled in)
    ("acc_at_1", "Acc@1 (exact)"),
    ("pass_at_k", "Pass@{k} (exact)"),
    ("gap", "Pass@{k} - Acc@1"),
    ("acc_at_1_jaccard", "Acc@1 Jaccard"),
    ("pass_at_k_jaccard", "best-of-{k} Jaccard"),
    ("pass_at_1", "sampled pass@1"),
)


def pass_at_k_of(doc: Mapping, system: str, dataset: str) -> Mapping | None:
    """The Pass@K summary of one system on one test set, None when the evaluation sampled none."""
    by_name = {s["label"]: (s["model"], s["prompt"]) for s in doc["systems"]}
    model, prompt = by_name[system]
    for e in doc["entries"]:
        if (e["model"], e["prompt"], e["dataset"]) == (model, prompt, dataset):
            return e.get("pass_at_k")
    raise KeyError(f"no entry for {system!r} on {dataset!r}")


def has_pass_at_k(doc: Mapping) -> bool:
    return any("pass_at_k" in e for e in doc.get("entries", ()))


def _interval(m: Mapping) -> str:
    return f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def pass_at_k_table(doc: Mapping) -> Table | None:
    """Acc@1 against Pass@K, one row per (system, test set): each measure's mean over images with its 95%
    bootstrap interval in brackets. None when the evaluation sampled nothing."""
    if not has_pass_at_k(doc):
        return None
    k = doc["entries"][0]["pass_at_k"]["k"]
    rows = []
    for s in doc["systems"]:
        for d in doc["datasets"]:
            p = pass_at_k_of(doc, s["label"], d["name"])
            rows.append((s["label"], f"{d['name']} ({d['role'].upper()})", p["n_images"], p["n_samples"]))
            rows[-1] += tuple(_interval(p[key]) for key, _ in PASS_COLUMNS)
    header = ("model", "test set", "images", "samples", *(t.format(k=k) for _, t in PASS_COLUMNS))
    return Table(
        f"Acc@1 (greedy) against Pass@{k} (sampled), mean over images [95% bootstrap interval]",
        header,
        ("text", "text", "int", "int") + ("text",) * len(PASS_COLUMNS),
        tuple(rows),
        note="Exact: the label set equals the gold set. Pass@K: unbiased estimate that one of K samples "
        "matches exactly; best-of-K Jaccard: expected best Jaccard of K samples; gap: Pass@K - Acc@1, what "
        "sampling reaches that the first try misses.",
    )


def results_csv_table(doc: Mapping) -> Table:
    """results.csv: one row per (system, test set), every number at full precision; with Pass@K, each
    measure's mean and bootstrap interval (MEASURE, MEASURE_low, MEASURE_high) and k, n_samples."""
    changes = {(c["system"], c["dataset"]): c for c in doc["changes_vs_parent"]}
    with_pass = has_pass_at_k(doc)
    rows = []
    for s in doc["systems"]:
        for d in doc["datasets"]:
            m = metrics_of(doc, s["label"], d["name"])
            c = changes.get((s["label"], d["name"]))
            gap = _gap(doc, s["label"], d["name"]) if d["role"] == "ood" else None
            rows.append(
                (s["label"], s["model"], s["prompt"], s["parent"], d["name"], d["role"], d["schema"], m.n)
                + (m.fail_rate, m.micro.precision, m.micro.recall, m.micro.f1)
                + (m.macro.precision, m.macro.recall, m.macro.f1, gap)
                + (
                    (c["macro_f1"]["change"], c["micro_f1"]["change"], c["fail_rate"]["delta"])
                    if c
                    else (None, None, None)
                )
                + interval_csv_columns(c)
                + _gap_change_cells(doc, s["label"], d["name"])
            )
            if with_pass:
                p = pass_at_k_of(doc, s["label"], d["name"]) or {}
                rows[-1] += (p.get("k"), p.get("n_samples"))
                rows[-1] += tuple(
                    p[x][part] if p else None for x in MEASURES for part in ("mean", "low", "high")
                )
    header = ("system", "model", "prompt", "parent", "dataset", "role", "schema", "n", "fail_rate")
    header += ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1")
    header += ("transfer_gap", "macro_f1_change_vs_parent", "micro_f1_change_vs_parent")
    header += ("fail_rate_delta_vs_parent", *INTERVAL_CSV_HEADER)
    header += ("gap_change_vs_parent", "gap_change_vs_parent_low", "gap_change_vs_parent_high")
    formats = ("text",) * 7 + ("int",) + ("f3",) * 7 + ("pct", "pct", "pct", "delta")
    formats += ("delta",) * (len(INTERVAL_CSV_HEADER) + 3)
    if with_pass:
        header += (
            "pass_k",
            "pass_n_samples",
            *(f"{x}{sfx}" for x in MEASURES for sfx in ("", "_low", "_high")),
        )
        formats += ("int", "int") + ("f3",) * (3 * len(MEASURES))
    return Table("results", header, formats, tuple(rows))


def _gap_change_cells(doc: Mapping, system: str, dataset: str) -> tuple:
    """The change of the transfer gap to `dataset` (an OOD set) against the parent: delta, low, high."""
    for g in doc.get("gap_changes", ()):
        if g["system"] == system and g["ood_dataset"] == dataset and g["interval"]:
            return (g["interval"]["delta"], g["interval"]["low"], g["interval"]["high"])
    return (None, None, None)


def interval_csv_columns(change: Mapping | None) -> tuple:
    """results.csv's interval cells of one (system, test set): delta, low, high per SET_MEASURES."""
    out: tuple = ()
    for key in SET_MEASURES:
        iv = (change or {}).get(key, {}).get("interval")
        out += (iv["delta"], iv["low"], iv["high"]) if iv else (None, None, None)
    return out


INTERVAL_CSV_HEADER = tuple(f"{k}_diff_vs_parent{sfx}" for k in SET_MEASURES for sfx in ("", "_low", "_high"))


def per_label_csv_table(doc: Mapping) -> Table:
    """per_label.csv: one row per (system, test set, label); with paired intervals, the F1 change against
    the parent and its interval (f1_diff_vs_parent, _low, _high)."""
    changes = {(c["system"], c["dataset"]): c.get("per_label") or {} for c in doc["changes_vs_parent"]}
    rows = []
    for s in doc["systems"]:
        for d in doc["datasets"]:
            diffs = changes.get((s["label"], d["name"]), {})
            for label, v in metrics_of(doc, s["label"], d["name"]).per_label.items():
                iv = diffs.get(label)
                rows.append(
                    (
                        s["label"],
                        s["model"],
                        s["prompt"],
                        d["name"],
                        d["role"],
                        label,
                        v.precision,
                        v.recall,
                        v.f1,
                        v.support,
                        v.predicted,
                    )
                    + ((iv["delta"], iv["low"], iv["high"]) if iv else (None, None, None))
                )
    header = ("system", "model", "prompt", "dataset", "role", "label", "precision", "recall", "f1")
    return Table(
        "per label",
        (
            *header,
            "support",
            "predicted",
            "f1_diff_vs_parent",
            "f1_diff_vs_parent_low",
            "f1_diff_vs_parent_high",
        ),
        ("text",) * 6 + ("f3",) * 3 + ("int", "int") + ("delta",) * 3,
        tuple(rows),
    )


# --------------------------------------------------------------------------------- a training run


def _vs_start(record: Mapping, side: str) -> str:
    """A step's macro-F1 minus the start's with its paired interval; "" for the start or without one."""
    iv = (record.get("vs_start") or {}).get(side)
    return f"{iv['delta']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]" if iv else ""


def evals_table(evals: Sequence[Mapping]) -> Table:
    """The in-training evaluations, one row per evaluated step; with Pass@K (grpo.eval_samples), Acc@1
    and Pass@K in and out of distribution as well (n/a at a step without them)."""
    passes = [e["pass_at_k"] for e in evals if e.get("pass_at_k")]
    k = passes[0]["id"]["k"] if passes else None
    rows = []
    for e in sorted(evals, key=lambda e: e["step"]):
        id_m, ood_m = DatasetMetrics.model_validate(e["id"]), DatasetMetrics.model_validate(e["ood"])
        id_f1, ood_f1 = id_m.macro.f1, ood_m.macro.f1
        rows.append(
            (
                e["step"],
                id_f1,
                ood_f1,
                transfer_gap(id_f1, ood_f1),
                id_m.micro.f1,
                ood_m.micro.f1,
                id_m.fail_rate,
                ood_m.fail_rate,
                *(_vs_start(e, side) for side in ("id", "ood")),
                "yes" if e.get("warnings") else ("within noise" if e.get("notes") else ""),
            )
        )
        if k is not None:
            p = e.get("pass_at_k") or {}
            rows[-1] += tuple(
                p[side][key]["mean"] if p else None
                for side in ("id", "ood")
                for key in ("acc_at_1", "pass_at_k")
            )
    first = evals[0] if evals else {}
    id_name, ood_name = first.get("id_name", "ID"), first.get("ood_name", "OOD")
    header = (
        "step",
        "ID macro-F1",
        "OOD macro-F1",
        "transfer gap",
        "ID micro-F1",
        "OOD micro-F1",
        "ID fail rate",
        "OOD fail rate",
        "ID macro-F1 vs start [95%]",
        "OOD macro-F1 vs start [95%]",
        "trade-off warning",
    )
    formats = ("int", "f3", "f3", "pct", "f3", "f3", "f3", "f3", "text", "text", "text")
    if k is not None:
        header += ("ID Acc@1", f"ID Pass@{k}", "OOD Acc@1", f"OOD Pass@{k}")
        formats += ("f3",) * 4
    return Table(
        f"Evaluation during training: {id_name} (ID) and {ood_name} (OOD)", header, formats, tuple(rows)
    )


def _ties(pick: Mapping) -> str:
    """The steps a pick is tied with (within resampling noise) and the rule that chose among them."""
    if "tied_with" not in pick:  # "final", or evaluations without per-image answers
        return ""
    if not pick["tied_with"]:
        return "none"
    steps = ", ".join(str(s) for s in pick["tied_with"])
    return f"tie with step {steps}; broken by {pick.get('tie_break', TIE_BREAK)}"


def selection_table(selection: Mapping[str, Mapping]) -> Table:
    """Which checkpoint each selection policy picked, and the steps it is tied with: those whose paired
    interval against the pick holds 0 (chexrl.evaluation.selection.tied_steps)."""
    order = [p for p in POLICIES if p in selection] + [p for p in selection if p not in POLICIES]
    rows = []
    for name in order:
        pick = selection[name]
        id_f1, ood_f1 = pick["id_macro_f1"], pick["ood_macro_f1"]
        checkpoint = pick.get("checkpoint") or ("the starting checkpoint" if pick["step"] == 0 else "")
        rows.append(
            (
                name,
                POLICIES.get(name, ""),
                pick["step"],
                checkpoint,
                id_f1,
                ood_f1,
                min(id_f1, ood_f1),
                _ties(pick),
            )
        )
    return Table(
        "Checkpoint selection",
        ("policy", "picks", "step", "checkpoint", "ID macro-F1", "OOD macro-F1", "worst case", "ties (95%)"),
        ("text", "text", "int", "text", "f3", "f3", "f3", "text"),
        tuple(rows),
        note="A tie: the paired bootstrap interval of the pick's score minus another step's holds 0 (within "
        "resampling noise on the same images). Empty where the evaluations kept no per-image answers.",
    )


def curve_keys(records: Sequence[Mapping]) -> list[str]:
    """The logged series the paper plots (Figures 2, 3): total reward, each reward component (and the valid
    fraction), completion length; in that order, only those present."""
    keys = {k for r in records for k in r}
    components = sorted(k for k in keys if k.startswith("reward/") and k != "reward/total")
    return [k for k in ("reward/total", *components, "completion/length") if k in keys]


def series(records: Sequence[Mapping], key: str) -> tuple[list[int], list[float | None]]:
    """(steps, values) of one logged key, in step order; a step without the key gives None."""
    ordered = sorted(records, key=lambda r: r["step"])
    return [int(r["step"]) for r in ordered], [r.get(key) for r in ordered]


def training_table(records: Sequence[Mapping], smoothing: float = 0.95) -> Table:
    """First, last and smoothed-last value of each plotted series."""
    rows = []
    for key in curve_keys(records):
        _steps, values = series(records, key)
        present = [v for v in values if v is not None and math.isfinite(v)]
        if not present:  # logged, but never a finite number
            rows.append((key, 0, None, None, None, None, None))
            continue
        smooth = [v for v in ema(values, smoothing) if math.isfinite(v)]  # drops the missing steps
        rows.append((key, len(present), present[0], present[-1], smooth[-1], min(present), max(present)))
    return Table(
        "Training metrics",
        ("metric", "steps", "first", "last", f"last, EMA {smoothing}", "min", "max"),
        ("text", "int", "f3", "f3", "f3", "f3", "f3"),
        tuple(rows),
    )
