"""PNG figures: training dynamics (the paper's Figures 2 and 3), in-training ID/OOD macro-F1, the
side-by-side and prompt-ablation bar charts, and Acc@1 against Pass@K. Drawn with matplotlib's Agg canvas directly (no pyplot, so no
global backend state and no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from chexrl.evaluation.comparison import metrics_of
from chexrl.evaluation.selection import POLICIES, ema, macro_f1
from chexrl.evaluation.tables import curve_keys, has_pass_at_k, pass_at_k_of, prompt_title, series

DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _integer_ticks(ax) -> None:
    """Steps are whole numbers: no 1.25 on a short run's axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _raw_and_ema(ax, steps, values, smoothing: float, label: str, color) -> None:
    """The paper's style: faint raw points per step, the bold EMA over them."""
    raw = [math.nan if v is None else v for v in values]
    ax.plot(steps, raw, color=color, alpha=0.3, linewidth=1)
    ax.plot(steps, ema(values, smoothing), color=color, linewidth=2.2, label=label)


def training_curves_png(
    records: Sequence[Mapping], path: str | Path, *, smoothing: float = 0.95, title: str = ""
) -> Path | None:
    """Total reward, each reward component, the valid fraction (when logged) and the completion length per
    step: raw (faint) and EMA (bold). None when the log has none of these series."""
    keys = curve_keys(records)
    if not keys:
        return None
    components = [
        k for k in keys if k.startswith("reward/") and k not in ("reward/total", "reward/valid_fraction")
    ]
    panels = [("Total reward", ["reward/total"]), ("Reward components", components)]
    panels += [
        ("Valid completions (fraction)", ["reward/valid_fraction"]),
        ("Completion length (tokens)", ["completion/length"]),
    ]
    panels = [(name, [k for k in ks if k in keys]) for name, ks in panels]
    panels = [(name, ks) for name, ks in panels if ks]
    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = [f"C{i}" for i in range(10)]
    for ax, (name, ks) in zip(axes, panels, strict=True):
        for i, key in enumerate(ks):
            steps, values = series(records, key)
            _raw_and_ema(ax, steps, values, smoothing, key.split("/", 1)[1], colors[i % 10])
        ax.set_title(name)
        ax.set_xlabel("step")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        if len(ks) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(title or f"GRPO training dynamics (faint: per step; bold: EMA, smoothing {smoothing})")
    return _save(fig, path)


def eval_curves_png(
    evals: Sequence[Mapping], path: str | Path, selection: Mapping | None = None
) -> Path | None:
    """ID and OOD macro-F1 at each evaluated step, with the steps the selection policies picked."""
    if not evals:
        return None
    ordered = sorted(evals, key=lambda e: e["step"])
    steps = [e["step"] for e in ordered]
    id_f1 = [macro_f1(e["id"]) for e in ordered]
    ood_f1 = [macro_f1(e["ood"]) for e in ordered]
    fig = _figure(7.5, 3.8)
    ax = fig.subplots()
    ax.plot(steps, id_f1, "o-", color="C0", label=f"ID: {ordered[0].get('id_name', 'in distribution')}")
    ax.plot(
        steps, ood_f1, "s-", color="C3", label=f"OOD: {ordered[0].get('ood_name', 'out of distribution')}"
    )
    for i, site in enumerate(list(ordered[0].get("ood_sites") or {})[1:]):  # further sites, when several
        f1 = [macro_f1(e["ood_sites"][site]) if site in e.get("ood_sites", {}) else None for e in ordered]
        ax.plot(steps, f1, "^--", color=f"C{4 + i}", label=f"OOD: {site}")
    warned = [e for e in ordered if e.get("warnings")]
    if warned:
        ax.scatter(
            [e["step"] for e in warned],
            [macro_f1(e["ood"]) for e in warned],
            s=160,
            facecolors="none",
            edgecolors="red",
            linewidths=2,
            label="trade-off warning",
            zorder=3,
        )
    picked: dict[int, list[str]] = {}
    for name, pick in (selection or {}).items():
        if name in POLICIES:
            picked.setdefault(pick["step"], []).append(name)
    for step, names in picked.items():  # one label per step: policies often agree
        ax.axvline(step, color="gray", alpha=0.25)
        ax.annotate(
            ", ".join(names),
            (step, 0.98),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize="x-small",
            va="top",
            ha="right",
            color="dimgray",
        )
    ax.set_ylim(0, max([*id_f1, *ood_f1, 0.05]) * 1.6)  # from 0 (an honest scale), room for the labels
    ax.set_xlabel("GRPO step")
    _integer_ticks(ax)
    ax.set_ylabel("macro-F1")
    ax.set_title("Evaluation during training: in vs out of distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return _save(fig, path)


def grouped_bars_png(
    categories: Sequence[str],
    bars: Mapping[str, Sequence[float | None]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    notes: Mapping[tuple[str, int], str] | None = None,
) -> Path:
    """One group of bars per category, one bar per series; `notes[(series, i)]` is written above a bar."""
    n = max(len(bars), 1)
    width = 0.8 / n
    fig = _figure(max(6.0, 1.1 * len(categories) * max(n, 2) * 0.6 + 2), 4.2)
    ax = fig.subplots()
    for j, (name, values) in enumerate(bars.items()):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(categories))]
        heights = [0.0 if v is None else v for v in values]
        rects = ax.bar(xs, heights, width, label=name, color=f"C{j % 10}")
        for i, rect in enumerate(rects):
            text = (notes or {}).get((name, i))
            if text:
                ax.annotate(
                    text,
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(
        range(len(categories)),
        categories,
        rotation=20 if len(categories) > 4 else 0,
        ha="right" if len(categories) > 4 else "center",
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    top = max([v for vs in bars.values() for v in vs if v is not None] + [0.05])
    ax.set_ylim(0, top * 1.18)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def comparison_png(doc: Mapping, path: str | Path) -> Path:
    """Macro-F1 of every system on every test set; each OOD bar is labelled with its transfer gap."""
    systems = [s["label"] for s in doc["systems"]]
    bars, notes = {}, {}
    for d in doc["datasets"]:
        key = f"{d['name']} ({d['role'].upper()})"
        bars[key] = [metrics_of(doc, s, d["name"]).macro.f1 for s in systems]
        if d["role"] == "ood":
            for g in doc["transfer_gaps"]:
                if g["ood_dataset"] == d["name"] and g["gap"] is not None:
                    notes[key, systems.index(g["system"])] = f"{g['gap']:+.0%}"
    return grouped_bars_png(
        systems,
        bars,
        path,
        title="Macro-F1 in and out of distribution (labels: transfer gap)",
        ylabel="macro-F1",
        notes=notes,
    )


def ablation_png(doc: Mapping, path: str | Path) -> Path:
    """Micro-F1, macro-F1 and fail rate per prompt variant on the first test set (the paper's Table 1)."""
    dataset = doc["datasets"][0]["name"]
    systems = doc["systems"]
    m = [metrics_of(doc, s["label"], dataset) for s in systems]
    bars = {
        "micro-F1": [x.micro.f1 for x in m],
        "macro-F1": [x.macro.f1 for x in m],
        "fail rate": [x.fail_rate for x in m],
    }
    names = [prompt_title(s["prompt"]) if doc["kind"] == "prompt_ablation" else s["label"] for s in systems]
    return grouped_bars_png(names, bars, path, title=f"Prompt ablation on {dataset}", ylabel="score")


def pass_at_k_png(doc: Mapping, path: str | Path) -> Path | None:
    """Acc@1 (x) against Pass@K (y) per model, a circle in distribution and a square out of it, with the
    bootstrap intervals as error bars; left the exact label-set match, right the Jaccard measures. A point
    above the diagonal is a model whose K samples reach answers its first try misses. None when the
    document holds no Pass@K."""
    if not has_pass_at_k(doc):
        return None
    k = doc["entries"][0]["pass_at_k"]["k"]
    panels = (
        ("exact label-set match", "acc_at_1", "pass_at_k", f"Pass@{k}"),
        ("Jaccard", "acc_at_1_jaccard", "pass_at_k_jaccard", f"best-of-{k} Jaccard"),
    )
    fig = _figure(11.0, 4.8)
    axes = fig.subplots(1, 2)
    systems = [s["label"] for s in doc["systems"]]
    for ax, (title, x_key, y_key, y_label) in zip(axes, panels, strict=True):
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="Pass@K = Acc@1")
        for i, system in enumerate(systems):
            for d in doc["datasets"]:
                p = pass_at_k_of(doc, system, d["name"])
                x, y = p[x_key], p[y_key]
                ax.errorbar(
                    x["mean"],
                    y["mean"],
                    xerr=[[x["mean"] - x["low"]], [x["high"] - x["mean"]]],
                    yerr=[[y["mean"] - y["low"]], [y["high"] - y["mean"]]],
                    fmt="o" if d["role"] == "id" else "s",
                    color=f"C{i % 10}",
                    markersize=7,
                    capsize=3,
                    elinewidth=1,
                    alpha=0.85,  # overlapping intervals stay readable
                    label=f"{system}: {d['name']} ({d['role'].upper()})",
                )
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("Acc@1 (greedy)")
        ax.set_ylabel(f"{y_label} (sampled)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="x-small", loc="lower right")
    fig.suptitle(f"Acc@1 against Pass@{k} per model, in (circle) and out of (square) distribution")
    return _save(fig, path)


def paired_png(doc: Mapping, path: str | Path) -> Path | None:
    """Each model's macro-F1 and micro-F1 difference against its parent, per test set, as a point with its
    paired bootstrap interval as the error bar and a line at 0: a bar crossing the line is a difference
    within resampling noise. None when the document holds no intervals."""
    changes = [c for c in doc.get("changes_vs_parent", ()) if "interval" in c["macro_f1"]]
    if not changes:
        return None
    panels = (("macro_f1", "macro-F1"), ("micro_f1", "micro-F1"))
    fig = _figure(10.0, 1.2 + 0.45 * len(changes))
    axes = fig.subplots(1, 2, sharey=True)
    names = [f"{c['system']} - {c['parent']}: {c['dataset']}" for c in changes]
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.axvline(0.0, color="gray", linewidth=1, linestyle="--")
        for i, c in enumerate(changes):
            iv = c[key]["interval"]
            beyond = iv["low"] > 0 or iv["high"] < 0
            ax.errorbar(
                iv["delta"],
                i,
                xerr=[[iv["delta"] - iv["low"]], [iv["high"] - iv["delta"]]],
                fmt="o",
                color="C3" if beyond else "C0",
                capsize=3,
            )
        ax.set_yticks(range(len(changes)), names)
        ax.set_xlabel(f"{title} difference (model - parent)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # the axes share y: inverting once puts the first difference on top
    fig.suptitle("Differences against the parent, 95% paired bootstrap intervals (red: excludes 0)")
    return _save(fig, path)
