"""Label conventions of the external test sites (pure: no pandas, no I/O): NIH's expert relabels, VinDr-CXR
and PadChest, mapped onto CheXpert's names. docs/data.md, "External test sites", has the reasons.

* NIH expert relabels (Majkowska et al. 2020): four YES/NO findings per image. Airspace opacity becomes
  Lung Opacity and Nodule or mass becomes Lung Lesion; Fracture and Pneumothorax keep their names.
* VinDr-CXR: one row per (image, reader, finding). A class is positive when at least `min_readers` of the
  image's readers marked it (default 2 of 3: a majority). Classes with no CheXpert counterpart map to None.
* PadChest: a list of finding terms per image, mapped term by term with exact (case-folded) names; a term
  may map to two labels (hydropneumothorax). "normal" is No Finding; a mapped pathology next to it wins.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

from chexrl.core.schemas import TRAINING_SCHEMA, get_schema, normalize_label_text

# ---- NIH expert relabels: column name -> CheXpert name.
NIH_EXPERT_FINDINGS: tuple[str, ...] = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
NIH_EXPERT_TO_CHEXPERT: dict[str, str] = {
    "Fracture": "Fracture",
    "Pneumothorax": "Pneumothorax",
    "Airspace opacity": "Lung Opacity",
    "Nodule or mass": "Lung Lesion",
}
NIH_EXPERT_VALUES: tuple[str, ...] = ("YES", "NO")

# ---- VinDr-CXR: class_name (class_id order) -> CheXpert name; None: no counterpart.
VINDR_NO_FINDING = "No finding"
VINDR_TO_CHEXPERT: dict[str, str | None] = {
    "Aortic enlargement": None,  # the aorta, not the cardiac silhouette or a widened mediastinum
    "Atelectasis": "Atelectasis",
    "Calcification": None,
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "ILD": None,
    "Infiltration": None,  # as NIH's Infiltration: no CheXpert class of its own
    "Lung Opacity": "Lung Opacity",
    "Nodule/Mass": "Lung Lesion",
    "Other lesion": None,
    "Pleural effusion": "Pleural Effusion",
    "Pleural thickening": "Pleural Other",  # as NIH's Pleural_Thickening
    "Pneumothorax": "Pneumothorax",
    "Pulmonary fibrosis": None,
    VINDR_NO_FINDING: "No Finding",
}
VINDR_CLASSES: tuple[str, ...] = tuple(VINDR_TO_CHEXPERT)

# ---- PadChest: finding term (case-folded) -> CheXpert names. Terms not listed are outside the 14.
PADCHEST_NORMAL = "normal"
_SUPPORT = "Support Devices"
PADCHEST_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "normal": ("No Finding",),
    "cardiomegaly": ("Cardiomegaly",),
    **dict.fromkeys(
        ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion",
         "costophrenic angle blunting", "empyema"),
        ("Pleural Effusion",),
    ),
    "hydropneumothorax": ("Pleural Effusion", "Pneumothorax"),
    "pneumothorax": ("Pneumothorax",),
    **dict.fromkeys(
        ("atelectasis", "laminar atelectasis", "segmental atelectasis", "lobar atelectasis",
         "total atelectasis", "round atelectasis", "atelectasis basal"),
        ("Atelectasis",),
    ),
    **dict.fromkeys(("consolidation", "air bronchogram"), ("Consolidation",)),
    **dict.fromkeys(("pneumonia", "atypical pneumonia"), ("Pneumonia",)),
    **dict.fromkeys(
        ("pulmonary edema", "heart insufficiency", "kerley lines", "vascular redistribution",
         "central vascular redistribution"),
        ("Edema",),
    ),
    **dict.fromkeys(
        ("infiltrates", "alveolar pattern", "interstitial pattern", "ground glass pattern",
         "reticular interstitial pattern", "reticulonodular interstitial pattern", "increased density",
         "miliary opacities"),
        ("Lung Opacity",),
    ),
    **dict.fromkeys(
        ("nodule", "multiple nodules", "pulmonary mass", "lung metastasis", "cavitation"), ("Lung Lesion",)
    ),
    **dict.fromkeys(
        ("pleural thickening", "apical pleural thickening", "calcified pleural thickening", "pleural plaques",
         "calcified pleural plaques"),
        ("Pleural Other",),
    ),
    **dict.fromkeys(
        ("fracture", "rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture",
         "vertebral fracture"),
        ("Fracture",),
    ),
    **dict.fromkeys(
        ("mediastinal enlargement", "superior mediastinal enlargement"), ("Enlarged Cardiomediastinum",)
    ),
    **dict.fromkeys(
        ("pacemaker", "single chamber device", "dual chamber device", "electrical device", "endotracheal tube",
         "nsg tube", "tracheostomy tube", "chest drain tube", "catheter", "central venous catheter",
         "central venous catheter via jugular vein", "central venous catheter via subclavian vein",
         "central venous catheter via umbilical vein", "reservoir central venous catheter",
         "ventriculoperitoneal drain tube", "artificial heart valve", "artificial mitral heart valve",
         "artificial aortic heart valve"),
        (_SUPPORT,),
    ),
}  # fmt: skip


_SIMPLE_LIST = re.compile(r"\[\s*(?:'[^'\\]*'\s*(?:,\s*'[^'\\]*'\s*)*)?\]")
_QUOTED = re.compile(r"'([^'\\]*)'")


def parse_padchest_terms(text: str | None) -> tuple[str, ...]:
    """A PadChest `Labels` cell (a Python list literal) -> its terms, trimmed and case-folded, in order,
    without empty strings or repeats. A blank cell has no terms; anything else is a ValueError.

    >>> parse_padchest_terms("['normal', ' Cardiomegaly', '', 'cardiomegaly']")
    ('normal', 'cardiomegaly')
    >>> parse_padchest_terms(None)
    ()
    """
    if text is None or text != text or not str(text).strip():  # None, NaN or blank
        return ()
    if _SIMPLE_LIST.fullmatch(str(text)):  # the usual cell: single-quoted terms, no escapes (10x faster)
        return tuple(dict.fromkeys(t for t in map(normalize_label_text, _QUOTED.findall(str(text))) if t))
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError):
        raise ValueError(f"Labels cell {text!r} is not a Python list of strings") from None
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"Labels cell {text!r} is not a Python list of strings")
    terms = (normalize_label_text(t) for t in value)
    return tuple(dict.fromkeys(t for t in terms if t))


def padchest_labels(terms: Iterable[str], schema: str = TRAINING_SCHEMA) -> tuple[tuple[str, ...], str]:
    """Terms -> (labels of `schema`, what kind of row it was). Kinds: "finding" (a mapped label other than
    No Finding), "normal" ("normal" with no mapped pathology: No Finding, plus Support Devices when a
    device term is there), "conflict" ("normal" next to a mapped pathology: the pathology wins),
    "out_of_schema" (terms, none of them mapped) and "no_terms" (an empty list).

    >>> padchest_labels(["normal", "cardiomegaly"])
    (('Cardiomegaly',), 'conflict')
    >>> padchest_labels(["normal", "pacemaker", "scoliosis"])
    (('No Finding', 'Support Devices'), 'normal')
    >>> padchest_labels(["aortic elongation"])
    ((), 'out_of_schema')
    """
    spec = get_schema(schema)
    terms = tuple(terms)
    mapped = {lab for t in terms for lab in PADCHEST_TO_CHEXPERT.get(t, ()) if lab in spec}
    normal = PADCHEST_NORMAL in terms and "No Finding" in spec
    mapped.discard("No Finding")
    pathology = mapped - {_SUPPORT}
    if pathology:
        kind = "conflict" if PADCHEST_NORMAL in terms else "finding"
    elif normal:
        mapped.add("No Finding")
        kind = "normal"
    elif mapped:
        kind = "finding"  # devices only: reported, but the reader did not call the image normal
    else:
        kind = "out_of_schema" if terms else "no_terms"
    return tuple(lab for lab in spec.labels if lab in mapped), kind


def padchest_unmapped(terms: Iterable[str]) -> tuple[str, ...]:
    """The terms no CheXpert label takes (counted by `data stats`).

    >>> padchest_unmapped(["normal", "scoliosis", "exclude"])
    ('scoliosis', 'exclude')
    """
    return tuple(t for t in terms if t not in PADCHEST_TO_CHEXPERT)


def site_schema_labels(dataset: str) -> frozenset[str]:
    """The labels a site's files can say anything about: a schema used with that site must lie within.

    >>> sorted(site_schema_labels("nih-expert"))
    ['Fracture', 'Lung Lesion', 'Lung Opacity', 'Pneumothorax']
    """
    if dataset == "nih-expert":
        return frozenset(NIH_EXPERT_TO_CHEXPERT.values())
    if dataset == "vindr":
        return frozenset(v for v in VINDR_TO_CHEXPERT.values() if v is not None)
    if dataset == "padchest":
        return frozenset(lab for labs in PADCHEST_TO_CHEXPERT.values() for lab in labs)
    raise ValueError(f"unknown external site {dataset!r}; expected nih-expert, vindr or padchest")
