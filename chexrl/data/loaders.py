"""Loaders for the real file layouts of MIMIC-CXR-JPG, CheXpert and NIH ChestX-ray14 -> `XraySample`s.

Each loader has two layers: `read_*_frame` turns the files into one pandas frame (vectorised: `usecols`,
joins, string ops; no per-row Python), with columns `image_path, patient_id, study_id, split, view` plus the
raw label columns; `frame_to_samples` maps the labels onto a schema and builds the samples. `data stats`
uses the frames only. `load_dataset("nih:/data/nih:test:nih10")` is the entry point for configs and the
CLI; the spec grammar is in `DatasetSpec` and docs/data.md.

No Finding is derived, never read: it is positive exactly when no other label of the schema is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chexrl.core.label_mapping import (
    DEFAULT_OUT_OF_SCHEMA,
    DEFAULT_UNCERTAIN,
    check_out_of_schema_policy,
    map_nih_findings,
    normalize_uncertain_policy,
    order_labels,
)
from chexrl.core.samples import XraySample
from chexrl.core.schemas import CHEXPERT14, NO_FINDING, SCHEMAS, get_schema
from chexrl.data import formats as F

if TYPE_CHECKING:
    import pandas as pd

DATASETS = ("mimic", "chexpert", "nih")
DEFAULT_SCHEMA = {"mimic": "chexpert14", "chexpert": "chexpert14", "nih": "nih9"}
SPLIT_ALIASES = {
    "mimic": {"val": "validate", "valid": "validate", "validation": "validate"},
    "chexpert": {"val": "valid", "validate": "valid", "validation": "valid"},
    "nih": {"train": "train_val", "trainval": "train_val", "val": "train_val"},
}
PATHOLOGIES = tuple(lab for lab in CHEXPERT14 if lab != NO_FINDING)


class DataFormatError(ValueError):
    """A data set's files are missing or do not have the expected format."""


# ---------------------------------------------------------------- spec


@dataclass(frozen=True)
class DatasetSpec:
    """`NAME:DIR[:SPLIT][:SCHEMA][?key=value&...]`, e.g. `nih:/data/nih:test:nih10?out_of_schema=no_finding`.

    SPLIT may join several with `+` (`mimic:/d:train+validate`); left out, every split is loaded. SCHEMA is
    a schema name (default chexpert14 for mimic/chexpert, nih9 for nih). Options: `uncertain`
    (zeros|ones|ignore), `out_of_schema` (drop|no_finding|keep_empty, NIH), `labeler` (chexpert|negbio,
    MIMIC), `frontal` (true|false), `table` (auto|v2020|2017, NIH). DIR may not contain `:` or `?`.

    >>> DatasetSpec.parse("nih:/data/nih:test:nih10?out_of_schema=no_finding")
    DatasetSpec(dataset='nih', root='/data/nih', splits=('test',), schema='nih10', options={'out_of_schema': 'no_finding'})
    """

    dataset: str
    root: str
    splits: tuple[str, ...] | None = None
    schema: str = ""
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> DatasetSpec:
        body, _, query = spec.partition("?")
        name, sep, rest = body.partition(":")
        if not sep or name not in DATASETS or not rest:
            raise ValueError(
                f"bad dataset spec {spec!r}: expected NAME:DIR[:SPLIT][:SCHEMA] with NAME in {DATASETS}"
            )
        root, *parts = rest.split(":")
        splits, schema = None, DEFAULT_SCHEMA[name]
        for part in parts:
            if part in SCHEMAS:
                schema = part
            elif part and part != "all":
                splits = tuple(SPLIT_ALIASES[name].get(s, s) for s in part.split("+"))
        options = dict(kv.split("=", 1) for kv in query.split("&") if kv) if query else {}
        return cls(name, root, splits, schema, options)


def load_dataset(spec: str | DatasetSpec, **overrides) -> list[XraySample]:
    """Load the samples a spec string names; keyword overrides win over the spec's options."""
    s = DatasetSpec.parse(spec) if isinstance(spec, str) else spec
    kw = {**s.options, **overrides}
    frame = read_frame(replace(s, options=kw))
    return frame_to_samples(frame, s.dataset, s.schema, kw.get("uncertain", DEFAULT_UNCERTAIN),
                            kw.get("out_of_schema", DEFAULT_OUT_OF_SCHEMA))  # fmt: skip


def read_frame(s: DatasetSpec) -> pd.DataFrame:
    opt = s.options
    frontal = str(opt.get("frontal", "true")).lower() not in ("false", "0", "no")
    if s.dataset == "mimic":
        return read_mimic_frame(s.root, s.splits, opt.get("labeler", "chexpert"), frontal)
    if s.dataset == "chexpert":
        return read_chexpert_frame(s.root, s.splits, frontal)
    return read_nih_frame(s.root, s.splits, opt.get("table", "auto"))


# ---------------------------------------------------------------- files


def find_file(root: Path, name: str) -> Path:
    """`name` or `name.gz` under root (the real MIMIC files ship gzipped)."""
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise DataFormatError(f"{name}(.gz) not found in {root}")


def _read_csv(path: Path, usecols=None, dtype=None) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(path, usecols=usecols, dtype=dtype, keep_default_na=True, na_values=[""])
    except ValueError as err:  # usecols mismatch: name the file and what was expected
        raise DataFormatError(f"{path}: {err}") from err


def _filter_splits(df: pd.DataFrame, splits: tuple[str, ...] | None, path: Path) -> pd.DataFrame:
    if splits is None:
        return df
    unknown = set(splits) - set(df["split"].unique())
    if unknown and df["split"].size:
        known = sorted(df["split"].unique())
        raise DataFormatError(f"{path}: no split {sorted(unknown)}; the files have {known}")
    return df[df["split"].isin(splits)]


# ---------------------------------------------------------------- MIMIC-CXR-JPG


def read_mimic_frame(root, splits=None, labeler: str = "chexpert", frontal_only: bool = True) -> pd.DataFrame:
    """Metadata (one row per DICOM) joined with the split file and the study-level label file."""
    root = Path(root).expanduser().resolve()
    if labeler not in ("chexpert", "negbio"):
        raise ValueError(f"labeler must be chexpert or negbio, not {labeler!r}")
    ids = {"subject_id": "int64", "study_id": "int64"}
    meta = _read_csv(find_file(root, F.MIMIC_METADATA_CSV), ["dicom_id", "subject_id", "study_id", "ViewPosition"],
                     {"dicom_id": str, "ViewPosition": str, **ids})  # fmt: skip
    split = _read_csv(
        find_file(root, F.MIMIC_SPLIT_CSV),
        list(F.MIMIC_SPLIT_COLUMNS),
        {"dicom_id": str, "split": str, **ids},
    )
    label_file = find_file(root, F.MIMIC_CHEXPERT_CSV if labeler == "chexpert" else F.MIMIC_NEGBIO_CSV)
    labels = _read_csv(
        label_file, list(F.MIMIC_LABEL_COLUMNS), {**ids, **dict.fromkeys(CHEXPERT14, "float32")}
    )
    df = meta.merge(split, on=["dicom_id", "study_id", "subject_id"], how="inner")
    if frontal_only:
        df = df[df["ViewPosition"].isin(F.FRONTAL_VIEWS)]
    df = _filter_splits(df, splits, root)
    df = df.merge(labels, on=["subject_id", "study_id"], how="inner")  # studies without labels drop out
    subject = df["subject_id"].astype(str)
    study = df["study_id"].astype(str)
    path = (
        str(root)
        + "/files/p"
        + subject.str[:2]
        + "/p"
        + subject
        + "/s"
        + study
        + "/"
        + df["dicom_id"]
        + ".jpg"
    )
    out = df[list(CHEXPERT14)].copy()
    out.insert(0, "image_path", path)
    out.insert(1, "patient_id", subject)
    out.insert(2, "study_id", study)
    out.insert(3, "split", df["split"])
    out.insert(4, "view", df["ViewPosition"].fillna(""))
    return out.reset_index(drop=True)


# ---------------------------------------------------------------- CheXpert


def _path_base(root: Path, first: str) -> tuple[Path, bool]:
    """Where a CSV `Path` like "CheXpert-v1.0-small/train/..." lives: (base dir, strip first component?)."""
    head, _, tail = first.partition("/")
    for base, strip in ((root, False), (root.parent, False), (root, True)):
        if (base / (tail if strip else first)).exists():
            return base, strip
    return (root, True) if head.startswith("CheXpert-v1.0") else (root, False)


def _join_paths(root: Path, rel: pd.Series) -> pd.Series:
    if rel.empty:
        return rel.astype(str)
    base, strip = _path_base(root, str(rel.iloc[0]))
    rel = rel.str.replace(r"^[^/]*/", "", regex=True) if strip else rel  # vectorised (Arrow) regex
    return str(base) + "/" + rel


def _read_chexpert_csv(root: Path, split: str, frontal_only: bool) -> pd.DataFrame:
    path = root / f"{split}.csv"
    cols = ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT14]
    df = _read_csv(
        path,
        cols,
        {"Path": str, "Frontal/Lateral": str, "AP/PA": str, **dict.fromkeys(CHEXPERT14, "float32")},
    )
    if frontal_only:
        df = df[df["Frontal/Lateral"] == "Frontal"]
    study = df["Path"].str.replace(r"^(?:.*/)?([^/]+)/([^/]+)/[^/]+$", r"\1/\2", regex=True)
    out = df[list(CHEXPERT14)].copy()
    out.insert(0, "image_path", _join_paths(root, df["Path"]))
    out.insert(1, "patient_id", study.str.replace(r"/.*$", "", regex=True))
    out.insert(2, "study_id", study)
    out.insert(3, "split", split)
    lateral = df["Frontal/Lateral"] == "Lateral"
    out.insert(4, "view", df["AP/PA"].fillna("").where(~lateral, "LATERAL"))
    return out


def _read_chexpert_test(root: Path, frontal_only: bool) -> pd.DataFrame:
    """The test release's study-level groundtruth.csv: every frontal image of a study gets its labels."""
    import pandas as pd

    path = root / F.CHEXPERT_TEST_CSV
    df = _read_csv(
        path, list(F.CHEXPERT_TEST_COLUMNS), {"Study": str, **dict.fromkeys(CHEXPERT14, "float32")}
    )
    rows = []
    studies = df["Study"].str.rstrip("/")
    base, strip = _path_base(root, str(studies.iloc[0])) if len(df) else (root, False)
    for i, study in enumerate(studies):  # 500 studies: a listing per study is cheap
        rel = study.split("/", 1)[1] if strip else study
        d = base / rel
        images = sorted(d.glob("view*_frontal.jpg")) or ([] if frontal_only else sorted(d.glob("*.jpg")))
        if not images and not d.is_dir():  # not downloaded: the conventional name; opening it will say so
            images = [d / "view1_frontal.jpg"]
        parts = study.split("/")
        for img in images:
            rows.append((str(img), parts[-2], f"{parts[-2]}/{parts[-1]}", i))
    idx = [r[3] for r in rows]
    out = df.iloc[idx][list(CHEXPERT14)].reset_index(drop=True)
    meta = pd.DataFrame(rows, columns=["image_path", "patient_id", "study_id", "_i"]).drop(columns="_i")
    meta["split"], meta["view"] = "test", ""
    return pd.concat([meta, out], axis=1)


def read_chexpert_frame(root, splits=None, frontal_only: bool = True) -> pd.DataFrame:
    """train.csv / valid.csv (image level) and, when present, the test set's groundtruth.csv."""
    import pandas as pd

    root = Path(root).expanduser().resolve()
    available = [s for s in ("train", "valid") if (root / f"{s}.csv").is_file()]
    if (root / F.CHEXPERT_TEST_CSV).is_file():
        available.append("test")
    if not available:
        raise DataFormatError(f"no train.csv, valid.csv or {F.CHEXPERT_TEST_CSV} in {root}")
    wanted = splits or tuple(available)
    missing = set(wanted) - set(available)
    if missing:
        raise DataFormatError(f"{root}: no files for split {sorted(missing)}; found {available}")
    frames = [_read_chexpert_test(root, frontal_only) if s == "test" else _read_chexpert_csv(root, s, frontal_only)
              for s in wanted]  # fmt: skip
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- NIH ChestX-ray14


def _nih_image_dir(root: Path, names: pd.Series) -> pd.Series:
    if (root / "images").is_dir() or not any(root.glob("images_*")):
        return str(root / "images") + "/" + names
    found = {p.name: str(p) for p in root.glob("images_*/images/*.png")}  # the Kaggle layout
    return names.map(found).fillna(str(root / "images") + "/" + names)


def read_nih_frame(root, splits=None, table: str = "auto") -> pd.DataFrame:
    """Data_Entry_2017_v2020.csv (or the 2017 file) with the official train_val / test lists as splits."""
    root = Path(root).expanduser().resolve()
    names = {
        "v2020": [F.NIH_TABLE_V2020],
        "2017": [F.NIH_TABLE_2017],
        "auto": [F.NIH_TABLE_V2020, F.NIH_TABLE_2017],
    }
    if table not in names:
        raise ValueError(f"table must be auto, v2020 or 2017, not {table!r}")
    found = [root / n for n in names[table] if (root / n).is_file()]
    if not found:
        raise DataFormatError(f"none of {names[table]} in {root}")
    cols = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
    df = _read_csv(
        found[0], cols, {"Image Index": str, "Finding Labels": str, "Patient ID": str, "View Position": str}
    )
    split = np.full(len(df), "all", dtype=object)
    for name, file in (("train_val", F.NIH_TRAIN_VAL_LIST), ("test", F.NIH_TEST_LIST)):
        if (root / file).is_file():
            listed = set((root / file).read_text().split())
            split[df["Image Index"].isin(listed).to_numpy()] = name
    if (root / F.NIH_TRAIN_VAL_LIST).is_file() or (root / F.NIH_TEST_LIST).is_file():
        split[split == "all"] = "unlisted"
    df["split"] = split
    df = _filter_splits(df, splits, root)
    return pd_frame(
        image_path=_nih_image_dir(root, df["Image Index"]),
        patient_id=df["Patient ID"].str.lstrip("0").replace("", "0"),
        study_id=df["Image Index"].str.removesuffix(".png"),
        split=df["split"],
        view=df["View Position"].fillna(""),
        findings=df["Finding Labels"].fillna("").str.strip(),
    )


def pd_frame(**cols) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({k: v.to_numpy() if hasattr(v, "to_numpy") else v for k, v in cols.items()})


# ---------------------------------------------------------------- labels -> samples


def label_matrix(
    frame: pd.DataFrame, schema: str, uncertain: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Positives (n, k) of the schema's labels present as columns, a keep mask (U-Ignore), the label names."""
    policy = normalize_uncertain_policy(uncertain)
    names = [lab for lab in get_schema(schema).labels if lab != NO_FINDING and lab in frame.columns]
    values = frame[names].to_numpy(dtype=np.float32, na_value=np.nan) if names else np.zeros((len(frame), 0))
    pos = (values == 1) | ((values == -1) & (policy == "ones"))
    keep = ~(values == -1).any(axis=1) if policy == "ignore" else np.ones(len(frame), dtype=bool)
    return pos, keep, names


def labels_from_matrix(pos: np.ndarray, names: list[str], schema: str) -> np.ndarray:
    """Per-row label tuples, built once per distinct combination (a few thousand at most)."""
    weights = 1 << np.arange(len(names), dtype=np.int64)
    codes = pos.astype(np.int64) @ weights if names else np.zeros(len(pos), dtype=np.int64)
    uniq, inverse = np.unique(codes, return_inverse=True)
    table = np.empty(len(uniq), dtype=object)
    for u, code in enumerate(uniq):
        table[u] = order_labels([n for b, n in enumerate(names) if code >> b & 1], schema)
    return table[inverse]


def frame_labels(frame: pd.DataFrame, dataset: str, schema: str, uncertain: str, out_of_schema: str):
    """(label tuple per row, keep mask) for a frame from any reader."""
    if dataset == "nih":
        check_out_of_schema_policy(out_of_schema)
        uniq, inverse = np.unique(frame["findings"].to_numpy(dtype=str), return_inverse=True)
        try:
            mapped = [map_nih_findings(u, schema, out_of_schema) for u in uniq]
        except ValueError as err:
            raise DataFormatError(str(err)) from err
        table = np.empty(len(uniq), dtype=object)
        table[:] = mapped
        labels = table[inverse] if len(frame) else np.empty(0, dtype=object)
        return labels, np.array([lab is not None for lab in labels], dtype=bool)
    pos, keep, names = label_matrix(frame, schema, uncertain)
    return labels_from_matrix(pos, names, schema), keep


def frame_to_samples(
    frame: pd.DataFrame,
    dataset: str,
    schema: str,
    uncertain: str = DEFAULT_UNCERTAIN,
    out_of_schema: str = DEFAULT_OUT_OF_SCHEMA,
) -> list[XraySample]:
    labels, keep = frame_labels(frame, dataset, schema, uncertain, out_of_schema)
    cols = [
        frame[c].to_numpy()[keep].tolist() for c in ("image_path", "patient_id", "study_id", "split", "view")
    ]
    return [
        XraySample(path, labs, pid, sid, dataset, split, schema, view)
        for path, labs, pid, sid, split, view in zip(cols[0], labels[keep].tolist(), *cols[1:], strict=True)
    ]


def load_mimic(root, split=None, schema="chexpert14", uncertain=DEFAULT_UNCERTAIN, labeler="chexpert",
               frontal_only=True) -> list[XraySample]:  # fmt: skip
    splits = (split,) if isinstance(split, str) else split
    return frame_to_samples(read_mimic_frame(root, splits, labeler, frontal_only), "mimic", schema, uncertain)


def load_chexpert(root, split=None, schema="chexpert14", uncertain=DEFAULT_UNCERTAIN, frontal_only=True):
    splits = (split,) if isinstance(split, str) else split
    return frame_to_samples(read_chexpert_frame(root, splits, frontal_only), "chexpert", schema, uncertain)


def load_nih(root, split=None, schema="nih9", out_of_schema=DEFAULT_OUT_OF_SCHEMA, table="auto"):
    splits = (split,) if isinstance(split, str) else split
    return frame_to_samples(read_nih_frame(root, splits, table), "nih", schema, out_of_schema=out_of_schema)
