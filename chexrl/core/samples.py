"""The record every loader produces and every consumer (prompts, rollouts, SFT, GRPO, evaluation) takes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class XraySample:
    """One image with its gold labels, already mapped to a label schema."""

    image_path: str  # absolute path to the image file
    labels: tuple[str, ...]  # canonical labels of `schema` that are positive; ("No Finding",) when none
    # (a schema without No Finding, nih-expert4, gives () for an image negative on all its labels)
    patient_id: str
    study_id: str
    dataset: str  # "mimic" | "chexpert" | "nih" | "nih-expert" | "vindr" | "padchest"
    split: str  # the dataset's own split name: "train", "validate", "valid", "test", ...
    schema: str  # "chexpert14" | "nih9" | "nih10" | "nih-expert4" | "vindr9"
    view: str = ""  # "PA", "AP", "LATERAL", ... when known
