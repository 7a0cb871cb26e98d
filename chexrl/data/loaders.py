"""Loaders for the real file layouts of MIMIC-CXR-JPG, CheXpert and NIH ChestX-ray14 -> `XraySample`s.

Each loader has two layers: `read_*_frame` turns the files into one pandas frame (vectorised: `usecols`,
joins, string ops; no per-row Python), with columns `image_path, patient_id, study_id, split, view` plus the
raw label columns; `frame_to_samples` maps the labels onto a schema and builds the samples. `data stats`
uses the frames only. `load_dataset("nih:/data/nih:test:nih10")` is the entry point for configs and the
CLI; the spec grammar is in `DatasetSpec` and docs/data.md.

No Finding follows the dataset's own labeler. MIMIC and CheXpert files carry a No Finding column, and it is
read as written (so a normal study with support devices is No Finding + Support Devices); a blank cell
means "not No Finding": the labeler had the report and did not call it normal. Only a file without the
column gets No Finding derived, by the CheXpert labeler's rule (no pathology positive or uncertain; Support
Devices may co-occur). NIH writes "No Finding" as a label string. Rows that end with no label of the schema
are never silently made normal: uncertain-only rows follow `uncertain_only`; rows whose findings all lie
outside the schema, and rows with nothing written (blank No Finding, nothing positive), follow
`out_of_schema`, each counted under its own reason (docs/data.md, "Label policies").

Every option of a spec is checked (an unknown key or value is an error naming it), and every label cell of
a file must be 1.0, 0.0, -1.0 or empty: anything else is a `DataFormatError` naming the file, line and column.
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
)
from chexrl.core.samples import XraySample
from chexrl.core.schemas import CHEXPERT14, NO_FINDING, SCHEMAS, TRAINING_SCHEMA, get_schema
from chexrl.data import formats as F
from chexrl.data.frames import DataFormatError, FrameLabels, find_file, pd_frame
from chexrl.data.frames import filter_splits as _filter_splits
from chexrl.data.frames import label_tuples as _tuples
from chexrl.data.frames import nih_image_dir as _nih_image_dir

if TYPE_CHECKING:
    import pandas as pd

DATASETS = ("mimic", "chexpert", "nih", "nih-expert", "vindr", "padchest")  # the last three: loaders_external
DEFAULT_SCHEMA = {"mimic": TRAINING_SCHEMA, "chexpert": TRAINING_SCHEMA, "nih": "nih9", "nih-expert": "nih-expert4",
                  "vindr": "vindr9", "padchest": TRAINING_SCHEMA}  # fmt: skip
SPLIT_ALIASES = {
    "mimic": {"val": "validate", "valid": "validate", "validation": "validate"},
    "chexpert": {"val": "valid", "validate": "valid", "validation": "valid"},
    "nih": {"train": "train_val", "trainval": "train_val", "val": "train_val"},
    "nih-expert": {"valid": "val", "validate": "val", "validation": "val"},
    "vindr": {},
    "padchest": {},
}
PATHOLOGIES = tuple(lab for lab in CHEXPERT14 if lab != NO_FINDING)
SUPPORT_DEVICES = "Support Devices"
LABEL_VALUES = (1.0, 0.0, -1.0)  # the CheXpert labeler's values; a blank cell is "not mentioned"

# Uncertain-only rows (no label positive, some uncertain): under U-Zeros they would have no label at all,
# and calling them No Finding would teach "normal" for studies the report called possibly abnormal.
UNCERTAIN_ONLY_POLICIES = ("drop", "no_finding")
DEFAULT_UNCERTAIN_ONLY = "drop"

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# option -> the values it takes (None: checked by its own function); which data sets take it.
_OPTION_VALUES: dict[str, tuple[str, ...] | None] = {
    "uncertain": None,
    "uncertain_only": UNCERTAIN_ONLY_POLICIES,
    "out_of_schema": None,
    "labeler": ("chexpert", "negbio"),
    "frontal": tuple(_BOOL),
    "table": ("auto", "v2020", "2017"),
    "min_readers": ("1", "2", "3"),
    "images": ("auto", "png", "jpg", "dicom"),
    "method": ("physician", "all"),
}
OPTIONS: dict[str, tuple[str, ...]] = {
    "mimic": ("uncertain", "uncertain_only", "out_of_schema", "labeler", "frontal"),
    "chexpert": ("uncertain", "uncertain_only", "out_of_schema", "frontal"),
    "nih": ("out_of_schema", "table"),  # no uncertain labels, and every NIH image is frontal
    "nih-expert": (),  # a YES/NO verdict on each of its four labels: nothing to choose
    "vindr": ("min_readers", "images", "out_of_schema"),
    "padchest": ("method", "frontal", "out_of_schema"),
}


# ---------------------------------------------------------------- spec


@dataclass(frozen=True)
class DatasetSpec:
    """`NAME:DIR[:SPLIT][:SCHEMA][?key=value&...]`, e.g. `nih:/data/nih:test:nih10?out_of_schema=no_finding`.

    SPLIT may join several with `+` (`mimic:/d:train+validate`); left out, every split is loaded. SCHEMA is
    a schema name (default chexpert14 for mimic/chexpert, nih9 for nih). Options (`OPTIONS`): `uncertain`
    (zeros|ones|ignore), `uncertain_only` (drop|no_finding), `out_of_schema` (drop|no_finding|keep_empty),
    `labeler` (chexpert|negbio, MIMIC), `frontal` (true|false), `table` (auto|v2020|2017, NIH). An unknown
    option or value is an error. DIR may not contain `:` or `?`.

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
        options: dict[str, str] = {}
        for kv in query.split("&") if query else ():
            key, eq, value = kv.partition("=")
            if not eq or not key:
                raise ValueError(f"bad dataset spec {spec!r}: option {kv!r} is not key=value")
            options[key] = value
        check_options(name, options, f"dataset spec {spec!r}")
        return cls(name, root, splits, schema, options)


def check_options(dataset: str, options: dict, where: str) -> None:
    """Reject an option `dataset` does not take, or a value the option does not take, naming both.

    >>> check_options("mimic", {"uncertian": "ones"}, "spec")
    Traceback (most recent call last):
    ...
    ValueError: spec: unknown option 'uncertian' for mimic; its options are uncertain, uncertain_only, out_of_schema, labeler, frontal
    """
    for key, value in options.items():
        if key not in OPTIONS[dataset]:
            raise ValueError(
                f"{where}: unknown option {key!r} for {dataset}; its options are {', '.join(OPTIONS[dataset])}"
            )
        allowed = _OPTION_VALUES[key]
        text = str(value).lower() if key == "frontal" else str(value)
        try:
            if key == "uncertain":
                normalize_uncertain_policy(text)
            elif key == "out_of_schema":
                check_out_of_schema_policy(text)
            elif allowed is not None and text not in allowed:
                raise ValueError(f"expected one of {allowed}")
        except ValueError as err:
            raise ValueError(f"{where}: bad value {value!r} for option {key!r}: {err}") from None


def resolve_spec(spec: str | DatasetSpec, overrides: dict) -> DatasetSpec:
    """The spec with keyword overrides (None: not given) merged over its options, all checked."""
    s = DatasetSpec.parse(spec) if isinstance(spec, str) else spec
    kw = {**s.options, **{k: v for k, v in overrides.items() if v is not None}}
    check_options(s.dataset, kw, f"dataset {s.dataset}:{s.root}")
    return replace(s, options=kw)


def label_policies(s: DatasetSpec) -> dict[str, str]:
    """The spec's label policies with their defaults: uncertain, uncertain_only, out_of_schema."""
    return {
        "uncertain": s.options.get("uncertain", DEFAULT_UNCERTAIN),
        "uncertain_only": s.options.get("uncertain_only", DEFAULT_UNCERTAIN_ONLY),
        "out_of_schema": s.options.get("out_of_schema", DEFAULT_OUT_OF_SCHEMA),
    }


def load_dataset(spec: str | DatasetSpec, **overrides) -> list[XraySample]:
    """Load the samples a spec string names; keyword overrides win over the spec's options."""
    s = resolve_spec(spec, overrides)
    return frame_to_samples(read_frame(s), s.dataset, s.schema, **label_policies(s))


def read_frame(s: DatasetSpec) -> pd.DataFrame:
    opt = s.options
    check_options(s.dataset, opt, f"dataset {s.dataset}:{s.root}")
    frontal = _BOOL[str(opt.get("frontal", "true")).lower()]
    if s.dataset == "mimic":
        return read_mimic_frame(s.root, s.splits, opt.get("labeler", "chexpert"), frontal)
    if s.dataset == "chexpert":
        return read_chexpert_frame(s.root, s.splits, frontal)
    if s.dataset != "nih":
        from chexrl.data.loaders_external import read_external_frame  # it imports this module

        return read_external_frame(s.dataset, s.root, s.splits, opt)
    return read_nih_frame(s.root, s.splits, opt.get("table", "auto"))


# ---------------------------------------------------------------- files


def _read_csv(path: Path, usecols=None, dtype=None, label_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read `usecols` of a CSV; `label_columns` (read as floats) must hold labeler values only."""
    import pandas as pd

    try:
        df = pd.read_csv(path, usecols=usecols, dtype=dtype, keep_default_na=True, na_values=[""])
    except ValueError as err:  # usecols mismatch, or a label cell that is not a number
        if label_columns:
            _find_bad_label_cell(path, label_columns)
        raise DataFormatError(f"{path}: {err}") from err
    if label_columns:
        _check_label_values(df, path, label_columns)
    return df


def _bad_label_error(path: Path, row: int, column: str, value, n_bad: int) -> DataFormatError:
    more = f" ({n_bad} such cells in the file)" if n_bad > 1 else ""
    return DataFormatError(
        f"{path}: line {row + 2} (data row {row + 1}), column {column!r}: label value {value!r} is not one of "
        f"1.0, 0.0, -1.0 or empty{more}"
    )


def _check_label_values(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    """A value outside the labeler's set (e.g. 2.0) would silently count as negative: refuse it."""
    values = df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~(np.isnan(values) | np.isin(values, LABEL_VALUES))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise _bad_label_error(path, row, columns[col], float(values[row, col]), int(bad.sum()))


def _find_bad_label_cell(path: Path, columns: tuple[str, ...]) -> None:
    """After a failed numeric read: the first label cell that is not a number, as an error (else return)."""
    import pandas as pd

    try:
        raw = pd.read_csv(path, usecols=list(columns), dtype=str, keep_default_na=True, na_values=[""])
    except ValueError:
        return  # the columns themselves are wrong: the caller's error says so
    for column in columns:
        numeric = pd.to_numeric(raw[column], errors="coerce")
        bad = numeric.isna() & raw[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _bad_label_error(path, row, column, raw[column].iloc[row], int(bad.sum()))


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
        label_file,
        list(F.MIMIC_LABEL_COLUMNS),
        {**ids, **dict.fromkeys(CHEXPERT14, "float32")},
        label_columns=CHEXPERT14,
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
        label_columns=CHEXPERT14,
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
        path,
        list(F.CHEXPERT_TEST_COLUMNS),
        {"Study": str, **dict.fromkeys(CHEXPERT14, "float32")},
        label_columns=CHEXPERT14,
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


# ---------------------------------------------------------------- labels -> samples


def labeler_labels(
    frame: pd.DataFrame,
    schema: str,
    uncertain: str = DEFAULT_UNCERTAIN,
    uncertain_only: str = DEFAULT_UNCERTAIN_ONLY,
    out_of_schema: str = DEFAULT_OUT_OF_SCHEMA,
) -> FrameLabels:
    """Labels of a MIMIC/CheXpert frame (CheXpert-labeler values) on `schema`.

    A row's labels are its schema labels positive under `uncertain`, plus No Finding as the file writes it
    (`_no_finding_cells`: a blank cell is not No Finding; derived only without the column; overruled by a
    positive pathology, `no_finding_conflicts`). A row left with no label follows `uncertain_only` or
    `out_of_schema` by its reason (`_unlabelled_rows`). Nothing is ever made "No Finding" by omission.
    """
    policy = normalize_uncertain_policy(uncertain)
    check_out_of_schema_policy(out_of_schema)
    if uncertain_only not in UNCERTAIN_ONLY_POLICIES:
        raise ValueError(
            f"unknown uncertain-only policy {uncertain_only!r}; expected one of {UNCERTAIN_ONLY_POLICIES}"
        )
    spec = get_schema(schema)
    n = len(frame)
    every = [
        lab for lab in PATHOLOGIES if lab in frame.columns
    ]  # all the file's labels, not only the schema's
    values = frame[every].to_numpy(dtype=np.float32, na_value=np.nan) if every else np.zeros((n, 0))
    pathology = np.array([lab != SUPPORT_DEVICES for lab in every], dtype=bool)
    names = [lab for lab in every if lab in spec]
    in_schema = np.array([lab in spec for lab in every], dtype=bool)
    vs = values[:, in_schema]
    pos = (vs == 1) | ((vs == -1) & (policy == "ones"))
    keep = np.ones(n, dtype=bool)
    dropped: dict[str, int] = {}
    if policy == "ignore":  # a label set has no per-label mask: drop the image
        ignored = (vs == -1).any(axis=1)
        keep &= ~ignored
        dropped["uncertain (ignore)"] = int(ignored.sum())

    nf_cell, derived, conflict = _no_finding_cells(frame, values[:, pathology], policy)
    no_finding = ((nf_cell == 1) | derived) & ~conflict & (NO_FINDING in spec)

    empty = ~pos.any(axis=1) & ~no_finding
    unlabelled = _unlabelled_rows(empty, values, nf_cell)
    rules = {"uncertain_only": uncertain_only, "out_of_schema": out_of_schema, "no_label": out_of_schema}
    for reason, mask in unlabelled.items():
        if rules[reason] == "drop":
            dropped[reason] = int((mask & keep).sum())
            keep &= ~mask
        elif rules[reason] == "no_finding":
            no_finding |= mask
        # keep_empty: the row stays, with no label
    bits = np.column_stack([pos, no_finding]) if NO_FINDING in spec else pos
    labels = _tuples(bits, names + ([NO_FINDING] if NO_FINDING in spec else []), schema)
    counts = {
        "no_finding_in_file": int(((nf_cell == 1) & ~conflict & keep).sum()),
        "no_finding_derived": int((derived & ~conflict & keep).sum()),
        "no_finding_conflicts": int((conflict & keep).sum()),
        **{reason: int(mask.sum()) for reason, mask in unlabelled.items()},
    }
    return FrameLabels(labels, keep, {k: v for k, v in dropped.items() if v}, counts)


def _unlabelled_rows(empty: np.ndarray, values: np.ndarray, nf_cell: np.ndarray) -> dict[str, np.ndarray]:
    """The rows left with no label, by reason: uncertain-only (only -1.0 among the non-negatives), nothing
    written (No Finding blank, nothing positive: `no_label`), else findings outside the schema or an
    explicit No Finding 0.0 (`out_of_schema`)."""
    unc_only = empty & ~(values == 1).any(axis=1) & (values == -1).any(axis=1)
    no_label = empty & ~unc_only & np.isnan(nf_cell) & ~(values == 1).any(axis=1)
    return {"uncertain_only": unc_only, "out_of_schema": empty & ~unc_only & ~no_label, "no_label": no_label}


def _no_finding_cells(frame: pd.DataFrame, patho_values: np.ndarray, policy: str):
    """(the No Finding cell per row, NaN when blank or absent; rows where No Finding is derived; rows whose
    No Finding = 1.0 a positive pathology overrules). A file with the column answers for every row (blank:
    not No Finding); only a frame without one gets it derived by the labeler's rule."""
    n = len(frame)
    has_column = NO_FINDING in frame.columns
    nf_cell = (
        frame[NO_FINDING].to_numpy(dtype=np.float32, na_value=np.nan)
        if has_column
        else np.full(n, np.nan, dtype=np.float32)
    )
    patho_unc = (patho_values == -1).any(axis=1)
    patho_pos = (patho_values == 1).any(axis=1) | (patho_unc & (policy == "ones"))
    derived = np.zeros(n, dtype=bool) if has_column else ~(patho_values == 1).any(axis=1) & ~patho_unc
    return nf_cell, derived, (nf_cell == 1) & patho_pos


def nih_labels(frame: pd.DataFrame, schema: str, out_of_schema: str = DEFAULT_OUT_OF_SCHEMA) -> FrameLabels:
    """Labels of an NIH frame: `Finding Labels` mapped onto `schema` ("No Finding" is NIH's own string)."""
    check_out_of_schema_policy(out_of_schema)
    uniq, inverse = np.unique(frame["findings"].to_numpy(dtype=str), return_inverse=True)
    try:
        mapped = [map_nih_findings(u, schema, out_of_schema) for u in uniq]
    except ValueError as err:
        raise DataFormatError(str(err)) from err
    table = np.empty(len(uniq), dtype=object)
    table[:] = mapped
    labels = table[inverse] if len(frame) else np.empty(0, dtype=object)
    keep = np.array([lab is not None for lab in labels], dtype=bool)
    outside = np.array([m is None or m == () or (m == (NO_FINDING,) and u != "No Finding")
                        for u, m in zip(uniq, mapped, strict=True)], dtype=bool)  # fmt: skip
    n_outside = int(outside[inverse].sum()) if len(frame) else 0
    dropped = {"out_of_schema": int((~keep).sum())} if (~keep).any() else {}
    return FrameLabels(labels, keep, dropped, {"out_of_schema": n_outside})


def frame_labels(
    frame: pd.DataFrame,
    dataset: str,
    schema: str,
    uncertain: str = DEFAULT_UNCERTAIN,
    out_of_schema: str = DEFAULT_OUT_OF_SCHEMA,
    uncertain_only: str = DEFAULT_UNCERTAIN_ONLY,
) -> FrameLabels:
    """Labels, keep mask and drop reasons for a frame from any reader."""
    if dataset == "nih":
        return nih_labels(frame, schema, out_of_schema)
    if dataset not in ("mimic", "chexpert"):
        from chexrl.data.loaders_external import external_labels  # it imports this module

        return external_labels(frame, dataset, schema, out_of_schema)
    return labeler_labels(frame, schema, uncertain, uncertain_only, out_of_schema)


def frame_to_samples(
    frame: pd.DataFrame,
    dataset: str,
    schema: str,
    uncertain: str = DEFAULT_UNCERTAIN,
    out_of_schema: str = DEFAULT_OUT_OF_SCHEMA,
    uncertain_only: str = DEFAULT_UNCERTAIN_ONLY,
) -> list[XraySample]:
    fl = frame_labels(frame, dataset, schema, uncertain, out_of_schema, uncertain_only)
    keep = fl.keep
    cols = [
        frame[c].to_numpy()[keep].tolist() for c in ("image_path", "patient_id", "study_id", "split", "view")
    ]
    return [
        XraySample(path, labs, pid, sid, dataset, split, schema, view)
        for path, labs, pid, sid, split, view in zip(
            cols[0], fl.labels[keep].tolist(), *cols[1:], strict=True
        )
    ]


def load_mimic(root, split=None, schema=TRAINING_SCHEMA, uncertain=DEFAULT_UNCERTAIN, labeler="chexpert",
               frontal_only=True, uncertain_only=DEFAULT_UNCERTAIN_ONLY,
               out_of_schema=DEFAULT_OUT_OF_SCHEMA) -> list[XraySample]:  # fmt: skip
    splits = (split,) if isinstance(split, str) else split
    frame = read_mimic_frame(root, splits, labeler, frontal_only)
    return frame_to_samples(frame, "mimic", schema, uncertain, out_of_schema, uncertain_only)


def load_chexpert(root, split=None, schema=TRAINING_SCHEMA, uncertain=DEFAULT_UNCERTAIN, frontal_only=True,
                  uncertain_only=DEFAULT_UNCERTAIN_ONLY, out_of_schema=DEFAULT_OUT_OF_SCHEMA):  # fmt: skip
    splits = (split,) if isinstance(split, str) else split
    frame = read_chexpert_frame(root, splits, frontal_only)
    return frame_to_samples(frame, "chexpert", schema, uncertain, out_of_schema, uncertain_only)


def load_nih(root, split=None, schema="nih9", out_of_schema=DEFAULT_OUT_OF_SCHEMA, table="auto"):
    splits = (split,) if isinstance(split, str) else split
    return frame_to_samples(read_nih_frame(root, splits, table), "nih", schema, out_of_schema=out_of_schema)
