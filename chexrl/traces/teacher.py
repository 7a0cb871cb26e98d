"""The deterministic template teacher: radiology-style traces for synthetic data, no endpoint needed.

`template_trace(labels, fmt, seed=..., key=...)` writes a completion in one of the four SFT formats that
is consistent with the gold labels (the evidence for each positive label, the pertinent negatives) and
ends in exactly those labels, so that `parse_completion` accepts it and returns the gold set. The same
(labels, format, seed, key) always gives the same text; phrase choices vary with them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from chexrl.core.parsing import format_completion
from chexrl.core.prompts import get_format
from chexrl.core.schemas import CHEXPERT14, NO_FINDING

TEACHER_NAME = "template"

# Finding-specific evidence for each positive label (several phrasings each).
EVIDENCE: dict[str, tuple[str, ...]] = {
    "Atelectasis": (
        "linear band-like opacity at the {side} base with mild volume loss, in keeping with atelectasis",
        "plate-like density in the {side} lower zone with slight elevation of the hemidiaphragm, "
        "suggesting subsegmental atelectasis",
        "{side} basilar opacity with crowding of the adjacent vessels, favouring atelectasis",
    ),
    "Cardiomegaly": (
        "the cardiac silhouette is enlarged, with a cardiothoracic ratio above 0.5",
        "the heart is enlarged, its transverse diameter exceeding half the thoracic width",
        "globular enlargement of the cardiac silhouette consistent with cardiomegaly",
    ),
    "Consolidation": (
        "dense airspace opacity in the {side} lower lobe with air bronchograms, consistent with "
        "consolidation",
        "homogeneous {side} lung opacity effacing the adjacent border, representing consolidation",
        "confluent airspace filling in the {side} mid zone with air bronchograms",
    ),
    "Edema": (
        "indistinct perihilar vessels and peribronchial cuffing, indicating pulmonary edema",
        "upper-lobe vascular redistribution with interstitial thickening and Kerley B lines, in keeping "
        "with edema",
        "bilateral hazy perihilar opacities with vascular indistinctness, suggesting edema",
    ),
    "Enlarged Cardiomediastinum": (
        "the cardiomediastinal silhouette is widened",
        "the superior mediastinum appears widened with a prominent contour",
        "abnormal widening of the cardiomediastinal contour",
    ),
    "Fracture": (
        "a cortical break of a {side} posterior rib, consistent with a fracture",
        "step-off deformity of a {side} lateral rib suggesting a fracture",
        "a healing {side} rib fracture with callus formation",
    ),
    "Lung Lesion": (
        "a well-circumscribed nodular opacity in the {side} upper zone, a focal lung lesion",
        "a rounded mass-like density in the {side} mid zone",
        "a discrete {side} pulmonary nodule",
    ),
    "Lung Opacity": (
        "increased opacity in the {side} lower zone",
        "patchy parenchymal opacity in the {side} lung",
        "ill-defined hazy opacity projecting over the {side} lung",
    ),
    "Pleural Effusion": (
        "blunting of the {side} costophrenic angle with a meniscus, indicating a pleural effusion",
        "a {side} pleural effusion layering at the base",
        "fluid density obscuring the {side} hemidiaphragm with a meniscus sign",
    ),
    "Pleural Other": (
        "smooth {side} pleural thickening along the lateral chest wall",
        "calcified pleural plaques on the {side}",
        "{side} apical pleural thickening",
    ),
    "Pneumonia": (
        "focal airspace opacity in the {side} lower zone with a pattern compatible with pneumonia",
        "patchy {side} consolidation whose appearance suggests an infectious process",
        "a {side} lobar airspace process compatible with pneumonia",
    ),
    "Pneumothorax": (
        "a visible visceral pleural line at the {side} apex with absent lung markings beyond it, a "
        "pneumothorax",
        "a {side} apical pneumothorax with a thin pleural line",
        "lucency without lung markings along the {side} lateral margin, consistent with pneumothorax",
    ),
    "Support Devices": (
        "support devices are present, including a central venous catheter",
        "an endotracheal tube and an enteric tube are in place",
        "cardiac monitoring leads and a right-sided central line are seen",
    ),
}

# Pertinent negatives: what the reader states when a label is absent.
NEGATIVES: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("no volume loss", "no atelectasis"),
    "Cardiomegaly": ("heart size is normal", "the cardiac silhouette is not enlarged"),
    "Consolidation": ("no focal consolidation", "no airspace consolidation"),
    "Edema": ("no pulmonary edema", "pulmonary vasculature is normal"),
    "Enlarged Cardiomediastinum": ("the mediastinum is not widened", "normal cardiomediastinal contour"),
    "Fracture": ("no displaced fracture", "the osseous structures are intact"),
    "Lung Lesion": ("no pulmonary nodule or mass", "no focal lung lesion"),
    "Lung Opacity": ("the lungs are clear", "no parenchymal opacity"),
    "Pleural Effusion": ("no pleural effusion", "the costophrenic angles are sharp"),
    "Pleural Other": ("no pleural thickening", "the pleural margins are normal"),
    "Pneumonia": ("no findings to suggest pneumonia", "no infectious airspace process"),
    "Pneumothorax": ("no pneumothorax", "no visible pleural line to suggest pneumothorax"),
    "Support Devices": ("no support devices", "no lines or tubes"),
}

NORMAL_STUDY = (
    "no acute cardiopulmonary abnormality",
    "a normal chest radiograph",
    "no radiographic evidence of acute disease",
)
SIDES = ("right", "left")
TECHNIQUE = (
    "frontal projection, adequate inspiration and penetration, no significant rotation",
    "AP portable projection, mildly limited inspiration, acceptable penetration",
    "PA projection, good inspiratory effort, patient not rotated",
)

# Reasoning A: which labels each of the 12 steps reports, and its normal statement.
STEPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Technique and quality", (), ""),
    ("Support devices", ("Support Devices",), "no tubes, lines or devices"),
    ("Airway and trachea", (), "trachea midline, airway patent"),
    ("Mediastinum", ("Enlarged Cardiomediastinum",), "mediastinum not widened"),
    ("Heart size and contour", ("Cardiomegaly",), "heart size within normal limits"),
    ("Hila", (), "hila normal in size and position"),
    (
        "Lungs zone by zone",
        ("Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion"),
        "upper, middle and lower zones clear bilaterally",
    ),
    ("Pleura and costophrenic angles", ("Pleural Effusion", "Pleural Other"), "costophrenic angles sharp"),
    ("Pneumothorax check", ("Pneumothorax",), "no pleural line at the apices or lateral margins"),
    ("Diaphragm", (), "diaphragmatic contours smooth, no free air"),
    ("Bones", ("Fracture",), "no acute osseous abnormality"),
    ("Soft tissues", (), "soft tissues unremarkable"),
)


def _rng(labels: Sequence[str], fmt: str, seed: int, key: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}|{key}|{fmt}|{','.join(labels)}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _ordered(labels: Sequence[str]) -> list[str]:
    unknown = [lab for lab in labels if lab not in CHEXPERT14]
    if unknown:
        raise ValueError(f"labels outside CheXpert's 14: {unknown}")
    if not labels:
        raise ValueError("a sample has at least one label (No Finding when nothing else)")
    return sorted(set(labels), key=CHEXPERT14.index)


def _evidence(label: str, rng: random.Random) -> str:
    return rng.choice(EVIDENCE[label]).format(side=rng.choice(SIDES))


LUNG_LABELS = ("Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Lung Opacity", "Pneumonia")


def _negatives(positive: list[str], rng: random.Random, k: int) -> list[str]:
    absent = [lab for lab in NEGATIVES if lab not in positive]
    if any(lab in positive for lab in LUNG_LABELS):  # "the lungs are clear" would contradict them
        absent = [lab for lab in absent if lab != "Lung Opacity"]
    return [rng.choice(NEGATIVES[lab]) for lab in rng.sample(absent, min(k, len(absent)))]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _pathology(labels: list[str]) -> list[str]:
    return [lab for lab in labels if lab not in (NO_FINDING, "Support Devices")]


def _impression(labels: list[str], rng: random.Random) -> str:
    patho = _pathology(labels)
    parts = [lab.lower() for lab in patho]
    if "Support Devices" in labels:
        parts.append("support devices in place")
    if NO_FINDING in labels:
        parts.append(rng.choice(NORMAL_STUDY) if not patho else "otherwise no further pathology")
    return "; ".join(parts)


def _free_reasoning(labels: list[str], rng: random.Random) -> str:
    sentences = [_sentence(_evidence(lab, rng)) for lab in labels if lab != NO_FINDING]
    if NO_FINDING in labels and not _pathology(labels):
        sentences.insert(0, _sentence(rng.choice(NORMAL_STUDY)))
    negatives = _negatives(labels, rng, 2)
    if negatives:
        sentences.append(_sentence(" and ".join(negatives)))
    sentences.append(_sentence("impression: " + _impression(labels, rng)))
    return " ".join(sentences)


def _narrative(labels: list[str], rng: random.Random) -> str:
    opening = rng.choice(
        ("On review of this radiograph", "Surveying the film systematically", "Reading this chest X-ray")
    )
    lines = [f"{opening}, the study is a {rng.choice(TECHNIQUE)}."]
    for lab in labels:
        if lab == NO_FINDING:
            continue
        lead = rng.choice(("", "Notably, ", "In addition, ", "On closer inspection, "))
        evidence = _evidence(lab, rng)
        lines.append(f"{lead}{evidence}." if lead else _sentence(evidence))
    negatives = _negatives(labels, rng, 3)
    if negatives:
        lines.append(f"Against other processes: {', '.join(negatives)}.")
    patho = _pathology(labels)
    if len(patho) > 1:
        lines.append("Taken together, these findings are concordant and each is independently supported.")
    lines.append(_sentence("overall impression: " + _impression(labels, rng)))
    return " ".join(lines)


def _reasoning_a(labels: list[str], rng: random.Random) -> str:
    lines = []
    for i, (step, step_labels, normal) in enumerate(STEPS, 1):
        if i == 1:
            text = rng.choice(TECHNIQUE)
        else:
            found = [_evidence(lab, rng) for lab in step_labels if lab in labels]
            text = "; ".join(found) if found else normal
        lines.append(f"{i}. {step}: {text}.")
    derived = ", ".join(labels)
    reason = (
        "no pathology identified in any step"
        if not _pathology(labels)
        else "each label maps to an abnormal step above"
    )
    lines.append(f"Derived labels: {derived} ({reason}).")
    return "\n".join(lines)


_WRITERS = {
    "free_reasoning": _free_reasoning,
    "reasoning_narrative": _narrative,
    "reasoning_a": _reasoning_a,
}


def template_think(labels: Sequence[str], fmt: str, *, seed: int = 0, key: str = "") -> str:
    """The think text alone ('' for only_label)."""
    get_format(fmt)  # validates the name
    ordered = _ordered(labels)
    if fmt == "only_label":
        return ""
    return _WRITERS[fmt](ordered, _rng(ordered, fmt, seed, key))


def template_trace(labels: Sequence[str], fmt: str, *, seed: int = 0, key: str = "") -> str:
    """A full completion in format `fmt` ending with the gold labels (CheXpert order).

    >>> from chexrl.core.parsing import parse_completion
    >>> from chexrl.core.schemas import SCHEMAS
    >>> t = template_trace(["Edema", "Cardiomegaly"], "free_reasoning", seed=1, key="s1")
    >>> parse_completion(t, SCHEMAS["chexpert14"]).labels
    ('Cardiomegaly', 'Edema')
    >>> template_trace(["No Finding"], "only_label")
    '<think></think>\\n<solution>No Finding</solution>'
    """
    return format_completion(template_think(labels, fmt, seed=seed, key=key), _ordered(labels))
