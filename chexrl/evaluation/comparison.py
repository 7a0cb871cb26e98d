"""The results document of `chexrl evaluate`: models x prompts x test sets, and what follows from them.
Pure: dicts in, a JSON-ready dict out.

The first test set is the in-distribution one, every other set is out of distribution. A *system* is one
(model, prompt) pair: a row of the side-by-side tables. Definitions (docs/evaluation.md):

- transfer gap of a system = (OOD macro-F1 - ID macro-F1) / ID macro-F1, per OOD set (None when ID is 0);
  the paper's "-61%" for NV-Reason and "-30%" for ChexReason;
- change against the parent (the model it was trained from, same prompt): relative change of macro-F1 and
  micro-F1 on every set, (child - parent) / parent, None when the parent's is 0; for the fail rate, whose
  parent value is often 0, the difference child - parent;
- with per-image answers in the entries ("per_image"), a paired bootstrap interval (chexrl.core.paired) on
  each child - parent difference of macro-F1, micro-F1, fail rate and per-label F1, per test set, and on the
  change of the transfer gap, per (in-distribution set, OOD set) pair;
- for each child whose ID macro-F1 rose over its parent's while an OOD macro-F1 fell by more than the
  margin (selection.tradeoff_finding), the paper's GRPO-versus-SFT finding: a warning when the OOD drop's
  interval excludes 0, otherwise a note that the drop is within resampling noise;
- every OOD set is a site scored on its own schema's labels; with several, "site_tradeoffs" says per child
  on which sites the trade-off holds, and a first warning names them (chexrl.evaluation.sites).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chexrl.config import GRPOConfig
from chexrl.core.metrics import DatasetMetrics, EvaluationRecord
from chexrl.core.paired import (
    BOOTSTRAP,
    SET_MEASURES,
    gap_change,
    outcomes_of,
    paired_differences,
)
from chexrl.core.schemas import get_schema
from chexrl.evaluation.sites import child_findings, reach_warnings, site_tradeoffs


def transfer_gap(id_f1: float, ood_f1: float) -> float | None:
    """Relative change of macro-F1 from the ID to the OOD set; None when the ID value is 0.

    >>> round(transfer_gap(0.346, 0.243), 3)
    -0.298
    """
    return (ood_f1 - id_f1) / id_f1 if id_f1 else None


def relative_change(value: float, reference: float) -> float | None:
    """(value - reference) / reference; None when the reference is 0.

    >>> round(relative_change(0.346, 0.282), 3)
    0.227
    """
    return (value - reference) / reference if reference else None


def system_label(model: str, prompt: str, n_models: int, n_prompts: int) -> str:
    """A row's name: the model (one prompt), the prompt (one model, several prompts) or both."""
    if n_prompts == 1:
        return model
    if n_models == 1:
        return prompt
    return f"{model} / {prompt}"


def evaluation_kind(n_models: int, n_prompts: int) -> str:
    if n_prompts == 1:
        return "comparison"
    return "prompt_ablation" if n_models == 1 else "grid"


def check_parents(models: Sequence[Mapping]) -> None:
    """Every parent names another model of the list, and following parents never loops."""
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"model names must be unique, repeated: {dupes}")
    parent = {m["name"]: m.get("parent") for m in models}
    for name, par in parent.items():
        if par is not None and par not in parent:
            raise ValueError(f"model {name!r}: parent {par!r} is not one of the models {names}")
        seen = {name}
        while par is not None:
            if par in seen:
                raise ValueError(f"model {name!r}: the parent relation loops through {par!r}")
            seen.add(par)
            par = parent[par]


def check_entries(entries: Sequence[Mapping], models: Sequence[Mapping], prompts, datasets) -> None:
    """Each (model, prompt, dataset) once, nothing else."""
    keys = [(e["model"], e["prompt"], e["dataset"]) for e in entries]
    found = set(keys)
    wanted = {(m["name"], p, d["name"]) for m in models for p in prompts for d in datasets}
    if found != wanted or len(keys) != len(found):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(
            "entries must hold each (model, prompt, dataset) once: missing "
            f"{sorted(wanted - found)}, unexpected {sorted(found - wanted)}, repeated {repeated}"
        )


def build_systems(models: Sequence[Mapping], prompts: Sequence[str]) -> list[dict]:
    """One system per (model, prompt), with its label and its parent's label (same prompt)."""
    n_models, n_prompts = len(models), len(prompts)
    label = {(m["name"], p): system_label(m["name"], p, n_models, n_prompts) for m in models for p in prompts}
    parent_of = {m["name"]: m.get("parent") for m in models}
    return [
        {
            "label": label[m["name"], p],
            "model": m["name"],
            "prompt": p,
            "parent": label[parent_of[m["name"]], p] if parent_of[m["name"]] else None,
        }
        for m in models
        for p in prompts
    ]


def transfer_gaps(systems: Sequence[Mapping], metrics: Mapping, id_set: str, ood_sets: Sequence[str]) -> list:
    """Each system's transfer gap to each OOD set."""
    gaps = []
    for s in systems:
        id_f1 = metrics[s["label"], id_set].macro.f1
        for ood in ood_sets:
            ood_f1 = metrics[s["label"], ood].macro.f1
            gaps.append(
                {
                    "system": s["label"],
                    "id_dataset": id_set,
                    "ood_dataset": ood,
                    "id_macro_f1": id_f1,
                    "ood_macro_f1": ood_f1,
                    "gap": transfer_gap(id_f1, ood_f1),
                }
            )
    return gaps


def parent_change(child: DatasetMetrics, par: DatasetMetrics, paired: Mapping | None) -> dict:
    """Macro-F1, micro-F1 (relative change) and fail rate (difference) of a child against its parent on one
    set; with `paired` (chexrl.core.paired.paired_differences) each gets its "interval" of child - parent,
    and "per_label" the per-label F1 changes."""
    out: dict = {
        key: {"parent": p, "value": c, "change": relative_change(c, p)}
        for key, p, c in (
            ("macro_f1", par.macro.f1, child.macro.f1),
            ("micro_f1", par.micro.f1, child.micro.f1),
        )
    }
    out["fail_rate"] = {
        "parent": par.fail_rate,
        "value": child.fail_rate,
        "delta": child.fail_rate - par.fail_rate,
    }
    if paired is not None:
        for key in SET_MEASURES:
            out[key]["interval"] = paired[key].as_dict()
        out["per_label"] = {label: iv.as_dict() for label, iv in paired["per_label"].items()}
    return out


def parent_changes(
    systems: Sequence[Mapping],
    metrics: Mapping,
    outcomes: Mapping,
    datasets: Sequence[Mapping],
    bootstrap: Mapping,
) -> list[dict]:
    changes = []
    for s in systems:
        if s["parent"] is None:
            continue
        for d in datasets:
            key_c, key_p = (s["label"], d["name"]), (s["parent"], d["name"])
            paired = None
            if key_c in outcomes and key_p in outcomes:
                paired = paired_differences(outcomes[key_p], outcomes[key_c], **bootstrap)
            changes.append(
                {"system": s["label"], "parent": s["parent"], "dataset": d["name"]}
                | parent_change(metrics[key_c], metrics[key_p], paired)
            )
    return changes


def gap_changes(
    systems: Sequence[Mapping], outcomes: Mapping, id_set: str, ood_sets: Sequence[str], bootstrap: Mapping
) -> list[dict]:
    """The change of each child's transfer gap against its parent's, per OOD set, with its paired
    interval (chexrl.core.paired.gap_change); only where both have per-image answers on both sets."""
    out = []
    for s in systems:
        if s["parent"] is None:
            continue
        for ood in ood_sets:
            keys = [(name, ds) for name in (s["parent"], s["label"]) for ds in (id_set, ood)]
            if not all(k in outcomes for k in keys):
                continue
            iv = gap_change(*(outcomes[k] for k in keys), **bootstrap)
            out.append(
                {"system": s["label"], "parent": s["parent"], "id_dataset": id_set, "ood_dataset": ood}
                | {"interval": iv.as_dict() if iv is not None else None}
            )
    return out


def tradeoff_findings(
    systems: Sequence[Mapping],
    changes: Sequence[Mapping],
    metrics: Mapping,
    id_set: str,
    ood_sets,
    margin,
    relative,
) -> tuple[list[str], list[str]]:
    """(warnings, notes): the trade-off of each child against its parent per OOD set
    (selection.tradeoff_finding), a warning only when the OOD drop's interval excludes 0."""
    warnings, notes = [], []
    for _, _, finding in child_findings(systems, changes, metrics, id_set, ood_sets, margin, relative):
        if finding is not None:
            (warnings if finding.warning else notes).append(finding.text)
    return warnings, notes


def entry_outcomes(entries: Sequence[Mapping], label: Mapping, schemas: Mapping[str, str]) -> dict:
    """{(system label, dataset): ImageOutcomes} for the entries that carry per-image answers."""
    out = {}
    for e in entries:
        if e.get("per_image"):
            schema = get_schema(schemas[e["dataset"]])
            out[label[e["model"], e["prompt"]], e["dataset"]] = outcomes_of(e["per_image"], schema)
    return out


def build_results(
    *,
    datasets: Sequence[Mapping],
    models: Sequence[Mapping],
    prompts: Sequence[str],
    entries: Sequence[Mapping],
    margin: float = GRPOConfig.model_fields["tradeoff_margin"].default,
    relative: bool = False,
    **extra,
) -> dict:
    """The results document from the raw evaluations.

    datasets: [{"name", "spec", "schema", "n"}], the in-distribution set first; models: [{"name", "model",
    "adapter", "parent"}]; entries: [{"model", "prompt", "dataset", "metrics"}] with /evaluate's metrics,
    one per (model, prompt, dataset), and optionally "per_image" (chexrl.core.paired.per_image_answers) from which the
    comparisons get their paired bootstrap intervals. `extra` (sampling settings, timings) is copied in as is.
    """
    if not datasets:
        raise ValueError("at least one test set is needed")
    check_parents(models)
    check_entries(entries, models, prompts, datasets)
    systems = build_systems(models, prompts)
    label = {(s["model"], s["prompt"]): s["label"] for s in systems}
    records = [EvaluationRecord.model_validate(e) for e in entries]
    metrics = {(label[r.model, r.prompt], r.dataset): r.metrics for r in records}
    id_set, ood_sets = datasets[0]["name"], [d["name"] for d in datasets[1:]]
    outcomes = entry_outcomes(entries, label, {d["name"]: d["schema"] for d in datasets})
    changes = parent_changes(systems, metrics, outcomes, datasets, BOOTSTRAP)
    warnings, notes = tradeoff_findings(systems, changes, metrics, id_set, ood_sets, margin, relative)
    reach = site_tradeoffs(systems, changes, metrics, id_set, ood_sets, margin, relative)
    warnings = reach_warnings(reach, len(ood_sets)) + warnings  # with several sites: which ones, first
    return {
        "kind": evaluation_kind(len(models), len(prompts)),
        "datasets": [{**d, "role": "id" if i == 0 else "ood"} for i, d in enumerate(datasets)],
        "models": [dict(m) for m in models],
        "prompts": list(prompts),
        "systems": systems,
        "entries": [dict(e) for e in entries],
        "transfer_gaps": transfer_gaps(systems, metrics, id_set, ood_sets),
        "changes_vs_parent": changes,
        "gap_changes": gap_changes(systems, outcomes, id_set, ood_sets, BOOTSTRAP),
        "bootstrap": {**BOOTSTRAP, "paired_by": "image"} if outcomes else None,
        "warnings": warnings,
        "notes": notes,
        "site_tradeoffs": reach,
        "tradeoff_margin": margin,
        "tradeoff_relative": relative,
        **extra,
    }


def record_of(doc: Mapping, system: str, dataset: str) -> EvaluationRecord:
    """The evaluation of one system on one test set of a results document."""
    by_name = {s["label"]: (s["model"], s["prompt"]) for s in doc["systems"]}
    model, prompt = by_name[system]
    for e in doc["entries"]:
        if (e["model"], e["prompt"], e["dataset"]) == (model, prompt, dataset):
            return EvaluationRecord.model_validate(e)
    raise KeyError(f"no metrics for {system!r} on {dataset!r}")


def metrics_of(doc: Mapping, system: str, dataset: str) -> DatasetMetrics:
    """The metrics of one system on one test set of a results document."""
    return record_of(doc, system, dataset).metrics
