"""Pieces every frame reader shares (chexrl.data.loaders for MIMIC, CheXpert and NIH; loaders_external for
the external test sites): the format error, the labels of a frame, file lookup, split filtering, the NIH
image layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chexrl.core.schemas import get_schema

if TYPE_CHECKING:
    import pandas as pd


class DataFormatError(ValueError):
    """A data set's files are missing or do not have the expected format."""


@dataclass
class FrameLabels:
    """The labels of every row of a frame, which rows are kept, and why the others are not."""

    labels: np.ndarray  # object array of label tuples, one per row (meaningful where `keep`)
    keep: np.ndarray  # bool per row
    dropped: dict[str, int]  # reason -> rows dropped for it
    counts: dict[str, int]  # what the policies saw, for `data stats` (see `labeler_labels`)


def label_tuples(bits: np.ndarray, names: list[str], schema: str) -> np.ndarray:
    """Per-row label tuples in schema order, built once per distinct combination (a few thousand at most)."""
    order = get_schema(schema).labels
    weights = 1 << np.arange(len(names), dtype=np.int64)
    codes = bits.astype(np.int64) @ weights if names else np.zeros(len(bits), dtype=np.int64)
    uniq, inverse = np.unique(codes, return_inverse=True)
    table = np.empty(len(uniq), dtype=object)
    for u, code in enumerate(uniq):
        found = {n for b, n in enumerate(names) if code >> b & 1}
        table[u] = tuple(lab for lab in order if lab in found)
    return table[inverse] if len(bits) else np.empty(0, dtype=object)


def find_file(root: Path, name: str) -> Path:
    """`name` or `name.gz` under root (the real MIMIC files ship gzipped)."""
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise DataFormatError(f"{name}(.gz) not found in {root}")


def filter_splits(df: pd.DataFrame, splits: tuple[str, ...] | None, path: Path) -> pd.DataFrame:
    if splits is None:
        return df
    unknown = set(splits) - set(df["split"].unique())
    if unknown and df["split"].size:
        known = sorted(df["split"].unique())
        raise DataFormatError(f"{path}: no split {sorted(unknown)}; the files have {known}")
    return df[df["split"].isin(splits)]


def pd_frame(**cols) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({k: v.to_numpy() if hasattr(v, "to_numpy") else v for k, v in cols.items()})


def nih_image_dir(root: Path, names: pd.Series) -> pd.Series:
    if (root / "images").is_dir() or not any(root.glob("images_*")):
        return str(root / "images") + "/" + names
    found = {p.name: str(p) for p in root.glob("images_*/images/*.png")}  # the Kaggle layout
    return names.map(found).fillna(str(root / "images") + "/" + names)
