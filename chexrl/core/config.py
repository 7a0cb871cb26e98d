"""Reward configuration: every weight of both rewards, with the paper's values as defaults.

Models reject unknown keys (`extra="forbid"`) so a typo in a YAML file is an error, not a silent default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chexrl.core.schemas import CHEXPERT14


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Approximate share of studies positive for each label in MIMIC-CXR-JPG's CheXpert-labeler file (the
# paper's training source). Only the ordering and rough magnitude matter: they scale false-positive
# penalties so that shotgun predictions of common labels ("No Finding", "Support Devices") cost more.
MIMIC_LABEL_FREQUENCIES: dict[str, float] = {
    "Atelectasis": 0.20,
    "Cardiomegaly": 0.20,
    "Consolidation": 0.05,
    "Edema": 0.12,
    "Enlarged Cardiomediastinum": 0.03,
    "Fracture": 0.02,
    "Lung Lesion": 0.03,
    "Lung Opacity": 0.23,
    "No Finding": 0.33,
    "Pleural Effusion": 0.24,
    "Pleural Other": 0.01,
    "Pneumonia": 0.07,
    "Pneumothorax": 0.05,
    "Support Devices": 0.29,
}


class HardRewardConfig(StrictModel):
    """Equation 3: Jaccard for a valid completion, minus `lambda_len` when it is short, 0 if invalid."""

    lambda_len: float = Field(
        0.1,
        ge=0,
        description="Penalty for a valid completion shorter than min_length. The paper gives no value; 0.1 is chexrl's.",
    )
    min_length: int = Field(250, ge=0, description="The paper's |t| < 250 threshold.")
    length_unit: Literal["chars", "words", "tokens"] = Field(
        "chars",
        description=(
            "Unit of |t|. The paper does not name one; /score receives text, so chexrl counts characters by "
            "default. 'tokens' uses each item's num_tokens (the trainer sends it)."
        ),
    )


class NuancedRewardConfig(StrictModel):
    """Equation 4: r_match + r_partial - r_FP - r_collapse - r_format."""

    exact_match_reward: float = Field(
        100.0, description="Paper: +100 when the predicted set equals the gold set."
    )
    recall_weight: float = Field(30.0, description="Paper: 30 x correct / |Y|.")
    precision_weight: float = Field(20.0, description="Paper: 20 x correct / |Y_hat|.")
    fp_base_penalty: float = Field(
        5.0, ge=0, description="Every false positive costs this (chexrl's choice; the paper gives no number)."
    )
    fp_frequency_penalty: float = Field(
        15.0,
        ge=0,
        description="Extra false-positive cost scaled by the label's frequency over the most frequent label's (chexrl's choice).",
    )
    label_frequencies: dict[str, float] = Field(
        default_factory=lambda: dict(MIMIC_LABEL_FREQUENCIES),
        description="Label prevalence used to weight false positives; labels missing here weigh 0.",
    )
    window_size: int = Field(
        100, ge=1, description="Paper: the sliding window holds the last 100 predictions of the run."
    )
    collapse_dominance: float = Field(
        0.7, gt=0, le=1, description="Paper: a label in more than 70% of the window dominates."
    )
    collapse_min_window: int = Field(
        20,
        ge=1,
        description="The window must hold this many predictions before collapse penalties apply (chexrl's choice).",
    )
    repetition_penalty: float = Field(
        30.0, ge=0, description="Paper: -30 per predicted label that is already dominant."
    )
    mode_collapse_penalty: float = Field(
        50.0, ge=0, description="Paper: -50 when the prediction repeats a dominant label."
    )
    invalid_label_penalty: float = Field(
        100.0, ge=0, description="Paper: -100 per label that is not a CheXpert label."
    )
    duplicate_label_penalty: float = Field(25.0, ge=0, description="Paper: -25 per duplicated label.")
    outside_text_penalty: float = Field(
        10.0, ge=0, description="Text outside the blocks (paper: a penalty; 10 is chexrl's)."
    )
    invalid_format_penalty: float = Field(
        100.0,
        ge=0,
        description="A completion without exactly one think block then one solution block (chexrl's choice).",
    )

    @model_validator(mode="after")
    def _known_labels(self) -> NuancedRewardConfig:
        unknown = sorted(set(self.label_frequencies) - set(CHEXPERT14))
        if unknown:
            raise ValueError(f"label_frequencies has labels outside CheXpert's 14: {unknown}")
        return self


class ScoringClientConfig(StrictModel):
    """How the trainer's client calls the evaluator's /score and /evaluate."""

    timeout_s: float = Field(60.0, gt=0, description="Seconds one HTTP request may take.")
    retries: int = Field(
        8, ge=0, description="Retries of a request after a connection error, a timeout or a 5xx answer."
    )
    backoff_s: float = Field(
        0.5, ge=0, description="First wait between retries, doubled each time (exponential backoff)."
    )


class RewardConfig(StrictModel):
    hard: HardRewardConfig = Field(default_factory=HardRewardConfig)
    nuanced: NuancedRewardConfig = Field(default_factory=NuancedRewardConfig)
