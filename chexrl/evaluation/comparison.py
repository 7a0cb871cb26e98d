"""The results document of `chexrl evaluate`: models x prompts x test sets, and what follows from them.
Pure: dicts in, a JSON-ready dict out.

The first test set is the in-distribution one, every other set is out of distribution. A *system* is one
(model, prompt) pair: a row of the side-by-side tables. Definitions (docs/evaluation.md):

- transfer gap of a system = (OOD macro-F1 - ID macro-F1) / ID macro-F1, per OOD set (None when ID is 0);
  the paper's "-61%" for NV-Reason and "-30%" for ChexReason;
- change against the parent (the model it was trained from, same prompt): relative change of macro-F1 and
  micro-F1 on every set, (child - parent) / parent, None when the parent's is 0; for the fail rate, whose
  parent value is often 0, the difference child - parent;
- a warning for each child whose ID macro-F1 rose over its parent's while an OOD macro-F1 fell by more than
  the margin (selection.tradeoff_warning), the paper's GRPO-versus-SFT finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chexrl.config import GRPOConfig
from chexrl.core.metrics import DatasetMetrics, EvaluationRecord
from chexrl.evaluation.selection import tradeoff_warning


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
    one per (model, prompt, dataset). `extra` (sampling settings, timings) is copied in as is.
    """
    if not datasets:
        raise ValueError("at least one test set is needed")
    check_parents(models)
    keys = [(e["model"], e["prompt"], e["dataset"]) for e in entries]
    found = set(keys)
    wanted = {(m["name"], p, d["name"]) for m in models for p in prompts for d in datasets}
    if found != wanted or len(keys) != len(found):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(
            "entries must hold each (model, prompt, dataset) once: missing "
            f"{sorted(wanted - found)}, unexpected {sorted(found - wanted)}, repeated {repeated}"
        )

    n_models, n_prompts = len(models), len(prompts)
    label = {(m["name"], p): system_label(m["name"], p, n_models, n_prompts) for m in models for p in prompts}
    parent_of = {m["name"]: m.get("parent") for m in models}
    systems = [
        {
            "label": label[m["name"], p],
            "model": m["name"],
            "prompt": p,
            "parent": label[parent_of[m["name"]], p] if parent_of[m["name"]] else None,
        }
        for m in models
        for p in prompts
    ]
    records = [EvaluationRecord.model_validate(e) for e in entries]
    metrics = {(label[r.model, r.prompt], r.dataset): r.metrics for r in records}
    id_set, ood_sets = datasets[0]["name"], [d["name"] for d in datasets[1:]]

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

    changes, warnings = [], []
    for s in systems:
        if s["parent"] is None:
            continue
        for d in datasets:
            child, par = metrics[s["label"], d["name"]], metrics[s["parent"], d["name"]]
            changes.append(
                {
                    "system": s["label"],
                    "parent": s["parent"],
                    "dataset": d["name"],
                    **{
                        key: {"parent": p, "value": c, "change": relative_change(c, p)}
                        for key, p, c in (
                            ("macro_f1", par.macro.f1, child.macro.f1),
                            ("micro_f1", par.micro.f1, child.micro.f1),
                        )
                    },
                    "fail_rate": {
                        "parent": par.fail_rate,
                        "value": child.fail_rate,
                        "delta": child.fail_rate - par.fail_rate,
                    },
                }
            )
        for ood in ood_sets:
            records = [
                {
                    "name": name,
                    "id": metrics[name, id_set],
                    "ood": metrics[name, ood],
                    "id_name": id_set,
                    "ood_name": ood,
                }
                for name in (s["parent"], s["label"])
            ]
            warning = tradeoff_warning(*records, margin, relative=relative)
            if warning:
                warnings.append(warning)

    return {
        "kind": evaluation_kind(n_models, n_prompts),
        "datasets": [{**d, "role": "id" if i == 0 else "ood"} for i, d in enumerate(datasets)],
        "models": [dict(m) for m in models],
        "prompts": list(prompts),
        "systems": systems,
        "entries": [dict(e) for e in entries],
        "transfer_gaps": gaps,
        "changes_vs_parent": changes,
        "warnings": warnings,
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
