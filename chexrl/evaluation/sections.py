"""What the pages say: the blocks of `results.md` (one `chexrl evaluate`) and of the run report
(`chexrl report`). Pure: documents and already-drawn figures in, a list of blocks out (render.py renders)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chexrl.evaluation.intervals import (
    bootstrap_sentence,
    gap_change_table,
    paired_table,
    per_label_change_table,
)
from chexrl.evaluation.render import Block, Bullets, Code, Heading, Image, Para
from chexrl.evaluation.selection import POLICIES
from chexrl.evaluation.site_tables import evals_sites_table, site_gap_table
from chexrl.evaluation.tables import (
    Table,
    ablation_table,
    evals_table,
    metrics_table,
    overview_table,
    parent_table,
    pass_at_k_table,
    per_label_table,
    selection_table,
    training_table,
)


def _describe_sets(doc: Mapping) -> str:
    parts = []
    for d in doc["datasets"]:
        role = "in distribution" if d["role"] == "id" else "out of distribution"
        parts.append(f"{d['name']} ({role}: {d.get('spec', '?')}, {d['n']} images, schema {d['schema']})")
    return "Test sets: " + "; ".join(parts) + "."


def _describe_decoding(doc: Mapping) -> str:
    s = doc.get("sampling") or {}
    if not s or s.get("greedy", True):
        how = "greedy decoding"
    else:
        seed = f", seed {s['seed']}" if s.get("seed") is not None else ""
        how = f"sampling at temperature {s.get('temperature')}, top-p {s.get('top_p')}{seed}"
    tokens = f", at most {s['max_tokens']} tokens" if "max_tokens" in s else ""
    return f"Prompts: {', '.join(doc['prompts'])}; {how}{tokens}."


def _warning_blocks(warnings: Sequence[str], none_text: str, notes: Sequence[str] = ()) -> list[Block]:
    """Warnings (their evidence excludes noise) in red, then notes (a trade-off within noise)."""
    blocks: list[Block] = [Bullets(tuple(warnings), warning=True)] if warnings else [Para(none_text)]
    if notes:
        blocks += [Para("Within resampling noise (notes, not warnings):"), Bullets(tuple(notes))]
    return blocks


def interval_blocks(doc: Mapping, figure: Image | None, level: int) -> list[Block]:
    """The paired intervals of a results document: how they are made, the differences against the parent,
    the gap changes, their figure and the per-label changes; nothing without intervals."""
    table = paired_table(doc)
    if table is None:
        return []
    blocks: list[Block] = [Heading("Differences with intervals", level), Para(bootstrap_sentence(doc)), table]
    gaps = gap_change_table(doc)
    if gaps is not None:
        blocks.append(gaps)
    if figure:
        blocks.append(figure)
    blocks += [t for t in (per_label_change_table(doc, d["name"]) for d in doc["datasets"]) if t is not None]
    return blocks


def _describe_pass_at_k(doc: Mapping) -> str:
    p = doc.get("pass_at_k_settings") or {}
    k, n = p.get("k", "K"), p.get("n_samples", "n")
    seed = f", seed {p['seed']}" if p.get("seed") is not None else ""
    boot = p.get("bootstrap") or {}
    return (
        f"Acc@1 is the greedy answer; Pass@{k} comes from {n} samples per image at temperature "
        f"{p.get('temperature')}, top-p {p.get('top_p')}{seed} (at most {p.get('max_tokens')} tokens). "
        f"Intervals: {boot.get('level', 0.95):.0%} percentile bootstrap over images "
        f"({boot.get('n_resamples', '?')} resamples, seed {boot.get('seed', '?')}). High Pass@K with lower "
        "Acc@1 is where RL can help: it sharpens answers the model already reaches (arXiv 2603.01301)."
    )


def results_blocks(
    doc: Mapping,
    chart: Image | None,
    level: int = 2,
    warnings: bool = True,
    pass_chart: Image | None = None,
    paired_chart: Image | None = None,
) -> list[Block]:
    """A results document (chexrl.evaluation.comparison.build_results) as page blocks; `warnings=False`
    leaves its trade-off warnings to a page that lists them already. With Pass@K in the document, a section
    "Acc@1 against Pass@K" with its table and `pass_chart`; with paired intervals, a section of them and
    `paired_chart`."""
    sets = [d["name"] for d in doc["datasets"]]
    margin = doc.get("tradeoff_margin")
    mode = "relative" if doc.get("tradeoff_relative") else "absolute"
    blocks: list[Block] = [Para(_describe_sets(doc)), Para(_describe_decoding(doc))]
    if doc["kind"] == "prompt_ablation":
        blocks.append(Heading("Prompt ablation", level))
        blocks += [ablation_table(doc, name) for name in sets]
        if chart:
            blocks.append(chart)
    else:
        blocks.append(Heading("Side by side", level))
        blocks.append(overview_table(doc))
        if chart:
            blocks.append(chart)
        sites = site_gap_table(doc)
        if sites is not None:
            blocks += [Heading("Transfer gap per site", level), sites]
        if warnings:
            blocks.append(Heading("Trade-off warnings", level))
            blocks += _warning_blocks(
                doc.get("warnings", []),
                f"No model gained in distribution over its parent while losing more than {margin} ({mode}) "
                "macro-F1 out of distribution.",
                doc.get("notes", []),
            )
        parents = parent_table(doc)
        if parents is not None:
            blocks += [Heading("Change against the parent model", level), parents]
        blocks += interval_blocks(doc, paired_chart, level)
    passes = pass_at_k_table(doc)
    if passes is not None:
        blocks += [Heading("Acc@1 against Pass@K", level), Para(_describe_pass_at_k(doc)), passes]
        if pass_chart:
            blocks.append(pass_chart)
    blocks.append(Heading("Micro and macro metrics", level))
    blocks += [metrics_table(doc, name) for name in sets]
    blocks.append(Heading("F1 per label", level))
    blocks += [per_label_table(doc, name) for name in sets]
    return blocks


def run_blocks(
    *,
    run_dir: str,
    config_text: str | None,
    records: Sequence[Mapping],
    evals: Sequence[Mapping],
    selection: Mapping | None,
    selection_computed: bool,
    results: Mapping | None,
    figures: Mapping[str, Image],
    missing: Sequence[str],
    smoothing: float,
    prefilter: Sequence[Mapping] = (),
) -> list[Block]:
    """The run report: warnings first (the point of the tool), then selection, in-training evaluation,
    training dynamics, the final side-by-side evaluation and the configuration."""
    blocks: list[Block] = [Para(f"Run directory: {run_dir}")]
    if missing:
        blocks.append(Heading("Missing from the run directory"))
        blocks.append(Bullets(tuple(missing)))

    blocks += generalization_blocks(evals, results)

    if selection:
        blocks.append(Heading("Checkpoint selection"))
        source = "computed from evals.jsonl" if selection_computed else "from selection.json"
        blocks.append(
            Para(f"Which evaluated step each policy keeps ({source}). Step 0 is the starting checkpoint.")
        )
        blocks.append(selection_table(selection))
    if evals:
        blocks.append(Heading("Evaluation during training"))
        blocks.append(evals_table(evals))
        per_site = evals_sites_table(evals)  # several OOD sites: one column per site
        if per_site is not None:
            blocks.append(per_site)
        if "eval_curves" in figures:
            blocks.append(figures["eval_curves"])

    if prefilter:
        blocks += prefilter_blocks(prefilter)

    blocks += training_blocks(records, figures, smoothing)

    if results:
        what = "prompt ablation" if results.get("kind") == "prompt_ablation" else "models side by side"
        blocks.append(Heading(f"Final evaluation: {what}"))
        blocks += results_blocks(
            results,
            figures.get("comparison"),
            level=3,
            warnings=False,
            pass_chart=figures.get("pass_at_k"),
            paired_chart=figures.get("paired"),
        )

    blocks += [Heading("Definitions"), Bullets(DEFINITIONS)]
    blocks.append(Heading("Configuration"))
    blocks.append(Code(config_text) if config_text else Para("No config.yaml in the run directory."))
    return blocks


DEFINITIONS = (
    "transfer gap = (OOD macro-F1 - ID macro-F1) / ID macro-F1",
    "change against the parent = (model - parent) / parent for F1; a difference for the fail rate",
    "interval = 95% paired bootstrap over images: both models rescored on the same 1000 resamples of the "
    "images; one that holds 0 is a difference within resampling noise",
    "fail rate = share of completions without exactly one <think> block followed by one <solution> block; a "
    "failed completion predicts no label",
    *(f"{name}: {text}" for name, text in POLICIES.items()),
)


def training_blocks(
    records: Sequence[Mapping], figures: Mapping[str, Image], smoothing: float
) -> list[Block]:
    """The training dynamics: the per-step metrics' table and curves."""
    if not records:
        return [Heading("Training dynamics"), Para("No per-step metrics (metrics.jsonl) were found.")]
    text = (
        f"{len(records)} logged steps. As the paper's Figures 2 and 3: faint lines per step, bold lines an "
        f"exponential moving average (TensorBoard's debiased smoothing, {smoothing})."
    )
    blocks: list[Block] = [Heading("Training dynamics"), Para(text), training_table(records, smoothing)]
    if "training_curves" in figures:
        blocks.append(figures["training_curves"])
    return blocks


def generalization_blocks(evals: Sequence[Mapping], results: Mapping | None) -> list[Block]:
    """Why the run stopped early (grpo.stop_when_ood_drops), then the trade-off warnings and notes of the
    in-training evaluations and of the final comparison."""
    blocks: list[Block] = []
    stops = [f"step {e['step']}: {e['stop']}" for e in evals if e.get("stop")]
    if stops:
        blocks += [Heading("Stopped early"), Bullets(tuple(stops), warning=True)]
    warnings = [f"step {e['step']}: {w}" for e in evals for w in e.get("warnings", [])]
    warnings += list((results or {}).get("warnings", []))
    notes = [f"step {e['step']}: {w}" for e in evals for w in e.get("notes", [])]
    notes += list((results or {}).get("notes", []))
    blocks.append(Heading("Generalization warnings"))
    if not (evals or results):
        return [
            *blocks,
            Para("No evaluation in or out of distribution was found, so nothing could be checked."),
        ]
    return blocks + _warning_blocks(
        warnings,
        "None: in-distribution gains did not come with an out-of-distribution loss beyond the margin "
        "and beyond resampling noise.",
        notes,
    )


def prefilter_blocks(rows: Sequence[Mapping]) -> list[Block]:
    """The RL set's pass-rate prefilter (RUN_DIR/prefilter.jsonl): images kept and set aside, and how many
    images had each pass count out of k (the pass-rate histogram)."""
    kept = sum(bool(r["kept"]) for r in rows)
    k, measure = rows[0]["k"], rows[0]["measure"]
    counts: dict[int, list[int]] = {}
    for r in rows:
        counts.setdefault(int(r["passes"]), [0, 0])[0 if r["kept"] else 1] += 1
    table = Table(
        "Prefilter: pass rate of the starting policy per RL image",
        ("passes", "pass rate", "images kept", "images set aside"),
        ("text", "f3", "int", "int"),
        tuple((f"{c} of {k}", c / k, kc, ac) for c, (kc, ac) in sorted(counts.items())),
    )
    return [
        Heading("RL set prefilter"),
        Para(
            f"Before step 0 the starting policy sampled {k} completions per RL image; a completion passes by "
            f"'{measure}'. Kept {kept} of {len(rows)} images, set aside {len(rows) - kept} (pass rate outside "
            "grpo.prefilter's [min_pass, max_pass]); GRPO drew its prompts from the kept ones only."
        ),
        table,
    ]
