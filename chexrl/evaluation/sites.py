"""Several out-of-distribution sites at once: per-site views of an evaluation record, the trade-off's
reach across sites, and the per-site transfer-gap table. Pure: dicts in, dicts and tables out.

An in-training record (RUN_DIR/evals.jsonl) keeps "ood"/"ood_name" for its first OOD site, so every
reader of one site works unchanged; with several sites it adds "ood_sites" {name: metrics}, in order. A
results document (chexrl.evaluation.comparison.build_results) has every OOD set as a dataset of its own,
each scored on its own schema's labels; `site_tradeoffs` says, per child and parent, on which sites the
benchmark-versus-transfer trade-off holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chexrl.evaluation.selection import macro_f1, tradeoff_finding


def ood_sites_of(record: Mapping) -> dict[str, object]:
    """{site name: metrics} of an in-training record: its "ood_sites", else its one "ood".

    >>> ood_sites_of({"ood": 0.3, "ood_name": "nih"})
    {'nih': 0.3}
    """
    sites = record.get("ood_sites")
    if sites:
        return dict(sites)
    return {record.get("ood_name") or "out-of-distribution set": record["ood"]}


def site_view(record: Mapping, site: str) -> dict:
    """The record as if `site` were its only OOD set (what one-site functions such as
    selection.tradeoff_finding and intervals_vs_start read): its metrics as "ood", its answers as
    per_image's "ood".

    >>> site_view({"step": 3, "id": 0.4, "ood": 0.3, "ood_sites": {"a": 0.3, "b": 0.1}}, "b")["ood"]
    0.1
    """
    view = {k: v for k, v in record.items() if k not in ("ood_sites", "per_image_sites")}
    view["ood"], view["ood_name"] = ood_sites_of(record)[site], site
    answers = (record.get("per_image_sites") or {}).get(site)
    if answers is not None and record.get("per_image"):
        view["per_image"] = {**record["per_image"], "ood": answers}
    return view


@dataclass
class SiteFindings:
    """The trade-off of one record against the start, judged per OOD site."""

    warnings: list[str]  # with several sites and any warning, the summary naming them comes first
    notes: list[str]
    held: list[str]  # sites with a warning
    noise: list[str]  # sites with a note (a drop within resampling noise)
    intervals: dict[str, dict | None]  # site -> its paired intervals against the start


def site_findings(first: Mapping, record: Mapping, judge: Callable) -> SiteFindings:
    """`judge(start view, record view)` -> (intervals, selection.Finding or None), per OOD site of `record`
    that the start has too (a site added on resume has no start to compare with)."""
    sites = [site for site in ood_sites_of(record) if site in ood_sites_of(first)]
    out = SiteFindings([], [], [], [], {})
    for site in sites:
        out.intervals[site], finding = judge(site_view(first, site), site_view(record, site))
        if finding is not None:
            (out.warnings if finding.warning else out.notes).append(finding.text)
            (out.held if finding.warning else out.noise).append(site)
    if len(sites) > 1 and out.held:
        who = f"step {first.get('step', 0)} -> step {record.get('step')}"
        out.warnings.insert(0, reach_text(who, out.held, sites, out.noise))
    return out


def reach_text(who: str, held: Sequence[str], sites: Sequence[str], noise: Sequence[str] = ()) -> str:
    """One line naming the sites a trade-off holds on, and the others.

    >>> reach_text("grpo vs sft", ["vindr"], ["nih", "vindr", "padchest"], ["nih"])
    'grpo vs sft: the benchmark-versus-transfer trade-off holds on vindr (1 of 3 OOD sites); within resampling noise on nih; not on padchest'
    """
    rest = [s for s in sites if s not in held and s not in noise]
    text = f"{who}: the benchmark-versus-transfer trade-off holds on {', '.join(held) or 'no site'} "
    text += f"({len(held)} of {len(sites)} OOD sites)"
    if noise:
        text += f"; within resampling noise on {', '.join(noise)}"
    return text + (f"; not on {', '.join(rest)}" if rest else "")


def child_findings(
    systems: Sequence[Mapping],
    changes: Sequence[Mapping],
    metrics: Mapping,
    id_set: str,
    ood_sets,
    margin,
    relative,
) -> Iterator[tuple[Mapping, str, Any]]:
    """(child system, OOD set, its trade-off finding against its parent or None) for every child and OOD
    set: selection.tradeoff_finding with the paired intervals of the child's change on both sets."""
    by_key = {(c["system"], c["dataset"]): c for c in changes}
    for s in systems:
        if s["parent"] is None:
            continue
        for ood in ood_sets:
            records = [
                {"name": name, "id": metrics[name, id_set], "ood": metrics[name, ood], "id_name": id_set}
                | {"ood_name": ood, "n_id": metrics[name, id_set].n, "n_ood": metrics[name, ood].n}
                for name in (s["parent"], s["label"])
            ]
            intervals = {
                side: by_key[s["label"], ds]["macro_f1"].get("interval")
                for side, ds in (("id", id_set), ("ood", ood))
            }
            yield s, ood, tradeoff_finding(*records, margin, relative=relative, intervals=intervals)


def site_tradeoffs(
    systems: Sequence[Mapping],
    changes: Sequence[Mapping],
    metrics: Mapping,
    id_set: str,
    ood_sets,
    margin,
    relative,
) -> list[dict]:
    """Per child and parent: the OOD sites the trade-off holds on (a warning: the OOD drop's interval
    excludes 0, or no interval to judge), those where it is within resampling noise (a note), the rest."""
    found: dict[str, tuple[Mapping, list[str], list[str]]] = {}
    for s, ood, finding in child_findings(systems, changes, metrics, id_set, ood_sets, margin, relative):
        _, held, noise = found.setdefault(s["label"], (s, [], []))
        if finding is not None:
            (held if finding.warning else noise).append(ood)
    out = []
    for s, held, noise in found.values():
        out.append(
            {"system": s["label"], "parent": s["parent"], "id_dataset": id_set, "held_on": held}
            | {"within_noise_on": noise, "not_on": [o for o in ood_sets if o not in held and o not in noise]}
        )
    return out


def reach_warnings(tradeoffs: Sequence[Mapping], n_sites: int) -> list[str]:
    """With several OOD sites: one line per child whose trade-off holds somewhere, naming the sites."""
    if n_sites < 2:
        return []
    return [
        reach_text(
            f"{t['system']} vs {t['parent']}",
            t["held_on"],
            [*t["held_on"], *t["within_noise_on"], *t["not_on"]],
            t["within_noise_on"],
        )
        for t in tradeoffs
        if t["held_on"]
    ]


def site_scalars(record: Mapping) -> dict[str, float]:
    """With several OOD sites: eval/ood_macro_f1/<site> and eval/ood_transfer_gap/<site> per site."""
    if not record.get("ood_sites"):
        return {}
    id_f1 = macro_f1(record["id"])
    out = {}
    for site, m in record["ood_sites"].items():
        f1 = macro_f1(m)
        out[f"eval/ood_macro_f1/{site}"] = f1
        if id_f1:
            out[f"eval/ood_transfer_gap/{site}"] = (f1 - id_f1) / id_f1
    return out
