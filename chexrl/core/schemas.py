"""Label schemas: CheXpert's 14 labels, the paper's NIH ChestX-ray14 subsets, and the external test sites'
subsets (NIH's expert relabels, VinDr-CXR).

A schema is an ordered, immutable tuple of canonical label names plus a case-insensitive lookup. The order
is the one used in every table (alphabetical, as CheXpert's own label files and the paper's Tables 5-6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CHEXPERT14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

# The paper's out-of-distribution NIH schema: the 9 NIH findings with a CheXpert counterpart
# (Mass and Nodule -> Lung Lesion, Pleural_Thickening -> Pleural Other). Effusion is left out of the
# paper's 9-label table; NIH10 adds it back as Pleural Effusion.
NIH9: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Lung Lesion",
    "No Finding",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
)
NIH10: tuple[str, ...] = tuple(sorted((*NIH9, "Pleural Effusion")))

# NIH's four radiologist-adjudicated findings (Majkowska et al. 2020) under their CheXpert names: Airspace
# opacity -> Lung Opacity, Nodule or mass -> Lung Lesion. No No Finding: four NOs say nothing about the
# other findings of the image.
NIH_EXPERT4: tuple[str, ...] = ("Fracture", "Lung Lesion", "Lung Opacity", "Pneumothorax")
# The VinDr-CXR classes with a CheXpert counterpart (chexrl.core.site_labels.VINDR_TO_CHEXPERT).
VINDR9: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumothorax",
)

NO_FINDING = "No Finding"

_SPACES = re.compile(r"\s+")


def normalize_label_text(text: str) -> str:
    """Lookup key for a label as written: trimmed, case-folded, inner white space collapsed.

    >>> normalize_label_text("  pleural   EFFUSION ")
    'pleural effusion'
    """
    return _SPACES.sub(" ", text.strip()).casefold()


@dataclass(frozen=True)
class LabelSchema:
    """An ordered set of canonical labels with case-insensitive lookup."""

    name: str
    labels: tuple[str, ...]
    _by_key: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {normalize_label_text(lab): lab for lab in self.labels})

    def canonical(self, text: str) -> str | None:
        """The canonical spelling of `text` in this schema, or None when it is not a label of it.

        >>> SCHEMAS["chexpert14"].canonical("no finding")
        'No Finding'
        >>> SCHEMAS["nih9"].canonical("Support Devices") is None
        True
        """
        return self._by_key.get(normalize_label_text(text))

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and self._by_key.get(normalize_label_text(label)) == label

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        return self.labels.index(label)


# The schema the policy is prompted, trained and rewarded on (the paper's: CheXpert's 14 labels); the other
# schemas are test sites' own, scored after mapping (chexrl/core/label_mapping.py).
TRAINING_SCHEMA = "chexpert14"

SCHEMAS: dict[str, LabelSchema] = {
    TRAINING_SCHEMA: LabelSchema(TRAINING_SCHEMA, CHEXPERT14),
    "nih9": LabelSchema("nih9", NIH9),
    "nih10": LabelSchema("nih10", NIH10),
    "nih-expert4": LabelSchema("nih-expert4", NIH_EXPERT4),
    "vindr9": LabelSchema("vindr9", VINDR9),
}


def get_schema(name: str) -> LabelSchema:
    """Look a schema up by name, with an error that lists the known ones."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown label schema {name!r}; expected one of {sorted(SCHEMAS)}") from None
