"""Label conventions of the source datasets, mapped onto chexrl's schemas (pure: no pandas, no I/O).

Owns three decisions every loader shares:

* NIH ChestX-ray14 findings -> CheXpert names. `Finding Labels` is split on `|` and each part is looked
  up by its exact name (no substring matching: "Pleural_Thickening" is not "Thickening"). Mass and Nodule
  both become Lung Lesion (once), Pleural_Thickening becomes Pleural Other, Effusion becomes Pleural
  Effusion, which only the nih10 schema (and chexpert14) contains. Infiltration, Emphysema, Fibrosis and
  Hernia have no counterpart.
* Images whose findings all fall outside the schema (e.g. only "Infiltration"): `OUT_OF_SCHEMA_POLICIES`.
  Default "drop": such an image is abnormal, so calling it "No Finding" would teach a false negative, and
  an empty label set breaks the "No Finding when none" contract of `XraySample`.
* Uncertain (-1) CheXpert-labeler mentions: `UNCERTAIN_POLICIES` (Irvin et al. 2019). Default "zeros"
  (U-Zeros): an uncertain mention is not a confirmed finding, it keeps every image (so the paper's
  2,000/1,000 budgets draw from the full pool), and the evaluation sets (CheXpert valid/test, NIH) have no
  uncertain labels at all, so a positive-only label set matches what the model is scored on.
"""

from __future__ import annotations

from collections.abc import Iterable

from chexrl.core.schemas import NO_FINDING, get_schema

NIH14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"

# Exact NIH name -> CheXpert name; None: no CheXpert counterpart.
NIH_TO_CHEXPERT: dict[str, str | None] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Infiltration": None,
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Emphysema": None,
    "Fibrosis": None,
    "Pleural_Thickening": "Pleural Other",
    "Hernia": None,
}

OUT_OF_SCHEMA_POLICIES: tuple[str, ...] = ("drop", "no_finding", "keep_empty")
DEFAULT_OUT_OF_SCHEMA = "drop"

UNCERTAIN_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore")
DEFAULT_UNCERTAIN = "zeros"
_UNCERTAIN_ALIASES = {"u-zeros": "zeros", "u-ones": "ones", "u-ignore": "ignore"}


def check_out_of_schema_policy(policy: str) -> str:
    """Validate an out-of-schema policy name.

    >>> check_out_of_schema_policy("drop")
    'drop'
    """
    if policy not in OUT_OF_SCHEMA_POLICIES:
        raise ValueError(f"unknown out-of-schema policy {policy!r}; expected one of {OUT_OF_SCHEMA_POLICIES}")
    return policy


def normalize_uncertain_policy(policy: str) -> str:
    """Accept "zeros"/"ones"/"ignore" and the paper-style spellings "U-Zeros", "U-Ones", "U-Ignore".

    >>> normalize_uncertain_policy("U-Ones")
    'ones'
    """
    key = policy.strip().lower()
    key = _UNCERTAIN_ALIASES.get(key, key)
    if key not in UNCERTAIN_POLICIES:
        raise ValueError(f"unknown uncertainty policy {policy!r}; expected one of {UNCERTAIN_POLICIES}")
    return key


def resolve_uncertain(value: float | None, policy: str) -> bool | None:
    """One labeler value (1.0, 0.0, -1.0, or None/NaN for blank) -> positive?, or None to ignore the image.

    U-Ignore cannot mask a single label in a positive-only label set (the Jaccard reward and F1 see the
    whole set), so "ignore" drops images that carry any uncertain label of the schema.

    >>> resolve_uncertain(-1.0, "zeros"), resolve_uncertain(-1.0, "ones"), resolve_uncertain(-1.0, "ignore")
    (False, True, None)
    >>> resolve_uncertain(None, "ones"), resolve_uncertain(1.0, "zeros")
    (False, True)
    """
    if value is None or value != value:  # blank or NaN: not mentioned
        return False
    if value == -1:
        policy = normalize_uncertain_policy(policy)
        return {"zeros": False, "ones": True, "ignore": None}[policy]
    return value == 1


def order_labels(labels: Iterable[str], schema: str) -> tuple[str, ...]:
    """Positive labels in schema order, with No Finding when (and only when) nothing else is positive.

    >>> order_labels(["Pneumothorax", "Atelectasis", "No Finding"], "chexpert14")
    ('Atelectasis', 'Pneumothorax')
    >>> order_labels([], "nih9")
    ('No Finding',)
    """
    spec = get_schema(schema)
    found = {lab for lab in labels if lab != NO_FINDING and lab in spec}
    if not found:
        return (NO_FINDING,)
    return tuple(lab for lab in spec.labels if lab in found)


def map_nih_findings(
    finding_labels: str, schema: str = "nih9", out_of_schema: str = DEFAULT_OUT_OF_SCHEMA
) -> tuple[str, ...] | None:
    """NIH `Finding Labels` ("Mass|Nodule", "No Finding", ...) -> labels of `schema`, or None to drop.

    >>> map_nih_findings("Mass|Nodule|Effusion", "nih9")
    ('Lung Lesion',)
    >>> map_nih_findings("Mass|Nodule|Effusion", "nih10")
    ('Lung Lesion', 'Pleural Effusion')
    >>> map_nih_findings("Infiltration", "nih9") is None
    True
    >>> map_nih_findings("Infiltration", "nih9", out_of_schema="no_finding")
    ('No Finding',)
    >>> map_nih_findings("No Finding", "nih9")
    ('No Finding',)
    """
    check_out_of_schema_policy(out_of_schema)
    spec = get_schema(schema)
    parts = [p.strip() for p in finding_labels.split("|") if p.strip()]
    if not parts:
        raise ValueError(f"empty NIH Finding Labels {finding_labels!r}")
    if parts == [NIH_NO_FINDING]:
        return (NO_FINDING,)
    mapped: set[str] = set()
    for part in parts:
        if part not in NIH_TO_CHEXPERT:
            raise ValueError(f"unknown NIH finding {part!r} in {finding_labels!r}; expected one of {NIH14}")
        target = NIH_TO_CHEXPERT[part]
        if target is not None and target in spec:
            mapped.add(target)
    if mapped:
        return tuple(lab for lab in spec.labels if lab in mapped)
    if out_of_schema == "drop":
        return None
    if out_of_schema == "no_finding":
        return (NO_FINDING,)
    return ()


def chexpert_to_nih_names(labels: Iterable[str], lesion_name: str = "Mass") -> tuple[str, ...]:
    """CheXpert labels -> the NIH names a site writing NIH-style reports would use (synthetic data).

    Labels with no NIH counterpart (Lung Opacity, Enlarged Cardiomediastinum, Fracture, Support Devices)
    are not reported; `lesion_name` picks Mass or Nodule for Lung Lesion.

    >>> chexpert_to_nih_names(["Pleural Effusion", "Lung Lesion", "Support Devices"], "Nodule")
    ('Effusion', 'Nodule')
    >>> chexpert_to_nih_names(["Support Devices"])
    ()
    """
    inverse = {v: k for k, v in NIH_TO_CHEXPERT.items() if v is not None and k not in ("Mass", "Nodule")}
    inverse["Lung Lesion"] = lesion_name
    names = {inverse[lab] for lab in labels if lab in inverse}
    return tuple(n for n in NIH14 if n in names)
