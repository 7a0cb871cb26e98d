"""Loaders for the external test sites: NIH's expert relabels (`nih-expert`), VinDr-CXR (`vindr`) and
PadChest (`padchest`), in their public file forms -> the frames and labels of chexrl.data.loaders.

Each reader returns one frame with `image_path, patient_id, study_id, split, view` plus the site's raw
label columns; each label function maps those onto a schema as a `FrameLabels`. `load_dataset` and `data
stats` reach them through the dataset spec (`nih-expert:DIR[:val|test]`, `vindr:DIR`, `padchest:DIR`).
The conventions, each an option, are in docs/data.md ("External test sites"):

* nih-expert: schema nih-expert4 (no No Finding: four NOs are not a normal image); splits from `Set Id`.
* vindr: a class is positive when `min_readers` (default 2, a majority of 3) readers marked it; No Finding
  when that many wrote "No finding". Classes outside the schema are counted and follow `out_of_schema`.
* padchest: physician-labelled rows (`method=physician`) of frontal projections (`frontal=true`: PA, AP,
  AP_horizontal); terms mapped by chexrl.core.site_labels.PADCHEST_TO_CHEXPERT, the rest counted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chexrl.core.label_mapping import check_out_of_schema_policy
from chexrl.core.schemas import NO_FINDING, get_schema
from chexrl.core.site_labels import (
    NIH_EXPERT_FINDINGS,
    NIH_EXPERT_TO_CHEXPERT,
    NIH_EXPERT_VALUES,
    VINDR_CLASSES,
    VINDR_NO_FINDING,
    VINDR_TO_CHEXPERT,
    padchest_labels,
    padchest_unmapped,
    parse_padchest_terms,
    site_schema_labels,
)
from chexrl.data import formats as F
from chexrl.data.frames import (
    DataFormatError,
    FrameLabels,
    filter_splits,
    find_file,
    label_tuples,
    nih_image_dir,
    pd_frame,
)

if TYPE_CHECKING:
    import pandas as pd

EXTERNAL_DATASETS = ("nih-expert", "vindr", "padchest")
_TRUE = ("true", "1", "yes")


def read_external_frame(dataset: str, root: str, splits: tuple[str, ...] | None, opt: dict) -> pd.DataFrame:
    """The frame of an external site's spec (its options already checked by chexrl.data.loaders)."""
    if dataset == "nih-expert":
        return read_nih_expert_frame(root, splits)
    if dataset == "vindr":
        frame = read_vindr_frame(root, int(opt.get("min_readers", "2")), opt.get("images", "auto"))
    else:
        frontal = str(opt.get("frontal", "true")).lower() in _TRUE
        frame = read_padchest_frame(root, opt.get("method", "physician"), frontal)
    attrs = dict(frame.attrs)
    frame = filter_splits(frame, splits, Path(root))
    frame.attrs.update(attrs)
    return frame


def external_labels(frame: pd.DataFrame, dataset: str, schema: str, out_of_schema: str) -> FrameLabels:
    """Labels of an external site's frame on `schema`, which must hold only labels the site has."""
    check_out_of_schema_policy(out_of_schema)
    outside = sorted(set(get_schema(schema).labels) - site_schema_labels(dataset))
    if outside:
        raise ValueError(
            f"schema {schema} has labels {dataset} says nothing about: {outside}; scoring them would count "
            "every prediction of them as a false positive"
        )
    if dataset == "nih-expert":
        return nih_expert_labels(frame, schema)
    if dataset == "vindr":
        return vindr_labels(frame, schema, out_of_schema)
    return padchest_frame_labels(frame, schema, out_of_schema)


def _read_table(path: Path, usecols=None) -> pd.DataFrame:
    """Every cell as text; a file pandas cannot read, or a missing column, is a DataFormatError."""
    import pandas as pd

    try:
        return pd.read_csv(path, usecols=usecols, dtype=str, keep_default_na=True, na_values=[""])
    except ValueError as err:
        raise DataFormatError(f"{path}: {err}") from err


def _missing_columns(path: Path, frame: pd.DataFrame, wanted) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataFormatError(f"{path}: no column {missing}; it has {list(frame.columns)}")


def _apply_policy(mask: np.ndarray, policy: str, reason: str, keep, labels, dropped, schema: str) -> None:
    """Rows with no label of the schema: drop them, call them No Finding, or keep them with no label."""
    if policy == "drop":
        dropped[reason] = int((mask & keep).sum())
        keep &= ~mask
    elif policy == "no_finding" and NO_FINDING in get_schema(schema):
        for i in np.flatnonzero(mask):
            labels[i] = (NO_FINDING,)


# ---------------------------------------------------------------- NIH expert relabels


def read_nih_expert_frame(root, splits=None) -> pd.DataFrame:
    """google2019_nih-chest-xray-labels.csv(.gz) under the NIH root; images as the NIH loader finds them."""
    root = Path(root).expanduser().resolve()
    path = find_file(root, F.NIH_EXPERT_CSV)
    df = _read_table(path)
    required = ("Image Index", "Patient ID", *NIH_EXPERT_FINDINGS, "Set Id")
    _missing_columns(path, df, required)
    for column in NIH_EXPERT_FINDINGS:
        values = df[column].fillna("").str.strip().str.upper()
        bad = ~values.isin(NIH_EXPERT_VALUES)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataFormatError(
                f"{path}: line {row + 2}, column {column!r}: value {df[column].iloc[row]!r} is not YES or NO "
                f"({int(bad.sum())} such cells in the file)"
            )
        df[column] = values == "YES"
    df["split"] = df["Set Id"].fillna("").str.strip().str.lower()
    df = filter_splits(df, splits, path)
    view = df["View Position"] if "View Position" in df.columns else df["Image Index"].map(lambda _: "")
    return pd_frame(
        image_path=nih_image_dir(root, df["Image Index"]),
        patient_id=df["Patient ID"].str.lstrip("0").replace("", "0"),
        study_id=df["Image Index"].str.removesuffix(".png"),
        split=df["split"],
        view=view.fillna(""),
        **{c: df[c] for c in NIH_EXPERT_FINDINGS},
    )


def nih_expert_labels(frame: pd.DataFrame, schema: str) -> FrameLabels:
    """Each YES is its CheXpert label; a row of four NOs has no label (kept: it is a full verdict)."""
    spec = get_schema(schema)
    columns = [c for c in NIH_EXPERT_FINDINGS if NIH_EXPERT_TO_CHEXPERT[c] in spec]
    bits = frame[columns].to_numpy(dtype=bool) if columns else np.zeros((len(frame), 0), dtype=bool)
    labels = label_tuples(bits, [NIH_EXPERT_TO_CHEXPERT[c] for c in columns], schema)
    keep = np.ones(len(frame), dtype=bool)
    return FrameLabels(labels, keep, {}, {"out_of_schema": 0, "all_no": int((~bits.any(axis=1)).sum())})


# ---------------------------------------------------------------- VinDr-CXR


def _vindr_image_ext(image_dir: Path, first_id: str | None, images: str) -> str:
    if images != "auto":
        return images
    for ext in F.VINDR_IMAGE_EXTENSIONS:
        if first_id is not None and (image_dir / f"{first_id}.{ext}").is_file():
            return ext
    return F.VINDR_IMAGE_EXTENSIONS[0]


def _vindr_votes(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Per image: how many distinct readers marked each class (a reader's several boxes count once)."""
    names = df["class_name"].fillna("").str.strip()
    unknown = ~names.isin(VINDR_CLASSES)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataFormatError(
            f"{path}: line {row + 2}, column 'class_name': {df['class_name'].iloc[row]!r} is not a VinDr-CXR "
            f"class; expected one of {list(VINDR_CLASSES)}"
        )
    df = df.assign(class_name=names).drop_duplicates(["image_id", "class_name", "rad_id"])
    votes = df.groupby(["image_id", "class_name"]).size().unstack(fill_value=0)
    votes = votes.reindex(columns=list(VINDR_CLASSES), fill_value=0)
    votes["readers"] = df.groupby("image_id")["rad_id"].nunique()
    return votes


def read_vindr_frame(root, min_readers: int = 2, images: str = "auto") -> pd.DataFrame:
    """Kaggle train.csv -> one row per image: per class, whether `min_readers` readers marked it."""
    if min_readers < 1:
        raise ValueError(f"min_readers must be at least 1, not {min_readers}")
    root = Path(root).expanduser().resolve()
    path = find_file(root, F.VINDR_CSV)
    df = _read_table(path)
    _missing_columns(path, df, ("image_id", "class_name", "rad_id"))
    votes = _vindr_votes(df, path)
    ids = votes.index.to_series().astype(str)
    image_dir = root / F.VINDR_IMAGE_DIR
    ext = _vindr_image_ext(image_dir, ids.iloc[0] if len(ids) else None, images)
    frame = pd_frame(
        image_path=str(image_dir) + "/" + ids + f".{ext}",
        patient_id=ids,  # VinDr-CXR publishes no patient identifier: each image is its own patient
        study_id=ids,
        split=ids.map(lambda _: "train"),
        view=ids.map(lambda _: "PA"),  # the Kaggle release is posteroanterior films only
        readers=votes["readers"],
        **{c: votes[c] >= min_readers for c in VINDR_CLASSES},
    )
    frame.attrs["votes"] = {c: int((votes[c] > 0).sum()) for c in VINDR_CLASSES}  # images any reader marked
    return frame


def vindr_labels(frame: pd.DataFrame, schema: str, out_of_schema: str) -> FrameLabels:
    """Agreed classes mapped onto `schema`; an agreed "No finding" is No Finding unless a class was
    agreed too (only possible below a majority: that class wins, counted as a conflict). Images with no
    agreed label of the schema: an agreed class outside it (`out_of_schema`) or no agreement at all
    (`no_agreement`); both follow `out_of_schema`."""
    spec = get_schema(schema)
    findings = [c for c in VINDR_CLASSES if c != VINDR_NO_FINDING]
    targets = sorted({VINDR_TO_CHEXPERT[c] for c in findings if VINDR_TO_CHEXPERT[c] in spec})
    n = len(frame)
    pos = np.zeros((n, len(targets)), dtype=bool)
    for c in findings:
        if VINDR_TO_CHEXPERT[c] in targets:
            pos[:, targets.index(VINDR_TO_CHEXPERT[c])] |= frame[c].to_numpy(dtype=bool)
    any_class = frame[findings].to_numpy(dtype=bool).any(axis=1) if n else np.zeros(0, dtype=bool)
    said_normal = frame[VINDR_NO_FINDING].to_numpy(dtype=bool) if n else np.zeros(0, dtype=bool)
    no_finding = said_normal & ~any_class & (NO_FINDING in spec)
    names = targets + ([NO_FINDING] if NO_FINDING in spec else [])
    bits = np.column_stack([pos, no_finding]) if NO_FINDING in spec else pos
    labels = label_tuples(bits, names, schema)
    empty = ~bits.any(axis=1) if n else np.zeros(0, dtype=bool)
    outside, no_agreement = empty & any_class, empty & ~any_class
    keep, dropped = np.ones(n, dtype=bool), {}
    _apply_policy(outside, out_of_schema, "out_of_schema", keep, labels, dropped, schema)
    _apply_policy(no_agreement, out_of_schema, "no_agreement", keep, labels, dropped, schema)
    counts = {
        "out_of_schema": int(outside.sum()),
        "no_agreement": int(no_agreement.sum()),
        "no_finding_conflicts": int((said_normal & any_class).sum()),
    }
    return FrameLabels(labels, keep, {k: v for k, v in dropped.items() if v}, counts)


# ---------------------------------------------------------------- PadChest


def _padchest_file(root: Path) -> Path:
    try:
        return find_file(root, F.PADCHEST_CSV)
    except DataFormatError:
        found = sorted(root.glob("PADCHEST_chest_x_ray_images_labels_*.csv*"))
        if not found:
            raise
        return found[0]


def _padchest_terms(labels: pd.Series, path: Path) -> list[tuple[str, ...]]:
    """Parse each distinct `Labels` cell once (160,861 rows, far fewer distinct cells)."""
    cells = labels.where(labels.notna(), "").tolist()
    parsed: dict[str, tuple[str, ...]] = {}
    for row, cell in zip(labels.index, cells, strict=True):  # the index is the file's data row
        if cell not in parsed:
            try:
                parsed[cell] = parse_padchest_terms(cell)
            except ValueError as err:
                raise DataFormatError(f"{path}: line {row + 2}, column 'Labels': {err}") from None
    return [parsed[cell] for cell in cells]


def read_padchest_frame(root, method: str = "physician", frontal_only: bool = True) -> pd.DataFrame:
    """The PadChest table, physician-labelled frontal rows by default, images as <ImageDir>/<ImageID>."""
    root = Path(root).expanduser().resolve()
    path = _padchest_file(root)
    cols = ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "MethodLabel", "Labels"]
    df = _read_table(path, cols)
    filtered = {"rows": len(df)}
    if method == "physician":
        machine = df["MethodLabel"].fillna("").str.strip() != F.PADCHEST_PHYSICIAN
        filtered["not_physician"] = int(machine.sum())
        df = df[~machine]
    if frontal_only:
        lateral = ~df["Projection"].fillna("").str.strip().isin(F.PADCHEST_FRONTAL)
        filtered["not_frontal"] = int(lateral.sum())
        df = df[~lateral]
    frame = pd_frame(
        image_path=str(root) + "/" + df["ImageDir"].str.strip() + "/" + df["ImageID"],
        patient_id=df["PatientID"],
        study_id=df["StudyID"],
        split=df["ImageID"].map(lambda _: "all"),  # PadChest publishes no splits
        view=df["Projection"].fillna(""),
    )
    frame["terms"] = _padchest_terms(df["Labels"], path)
    frame.attrs["filtered"] = filtered
    return frame


def padchest_frame_labels(frame: pd.DataFrame, schema: str, out_of_schema: str) -> FrameLabels:
    """Terms mapped by `padchest_labels`; rows with only unmapped terms, or none, follow `out_of_schema`."""
    n = len(frame)
    mapped = {terms: padchest_labels(terms, schema) for terms in set(frame["terms"])}
    labels = np.empty(n, dtype=object)
    labels[:] = [mapped[t][0] for t in frame["terms"]]
    kinds = np.array([mapped[t][1] for t in frame["terms"]], dtype=object)
    keep, dropped = np.ones(n, dtype=bool), {}
    outside, no_terms = kinds == "out_of_schema", kinds == "no_terms"
    _apply_policy(outside, out_of_schema, "out_of_schema", keep, labels, dropped, schema)
    _apply_policy(no_terms, out_of_schema, "no_terms", keep, labels, dropped, schema)
    counts = {
        "out_of_schema": int(outside.sum()),
        "no_terms": int(no_terms.sum()),
        "normal_conflicts": int((kinds == "conflict").sum()),
    }
    return FrameLabels(labels, keep, {k: v for k, v in dropped.items() if v}, counts)


# ---------------------------------------------------------------- stats


def external_stats(frame: pd.DataFrame, dataset: str) -> dict:
    """What `data stats` adds for a site: the raw labels before mapping (nih-expert: YES rows per
    finding; vindr: images per agreed class, and images any reader marked; padchest: rows per term and the
    unmapped terms) and the rows the reader filtered out."""
    if dataset == "nih-expert":
        return {"site_labels": {c: int(frame[c].sum()) for c in NIH_EXPERT_FINDINGS}}
    if dataset == "vindr":
        return {
            "site_labels": {c: int(frame[c].sum()) for c in VINDR_CLASSES},
            "marked_by_any_reader": dict(frame.attrs.get("votes", {})),
        }
    terms = Counter(t for row in frame["terms"] for t in row)
    unmapped = Counter(t for row in frame["terms"] for t in padchest_unmapped(row))
    return {
        "site_labels": dict(sorted(terms.items())),
        "unmapped_terms": dict(unmapped.most_common()),
        "filtered": dict(frame.attrs.get("filtered", {})),
    }
