"""`chexrl data stats`: images, patients, studies, splits and per-label positive counts of a data set,
computed on the loader's frame (vectorised), so the full real tables take seconds."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import numpy as np

from chexrl.core.label_mapping import DEFAULT_OUT_OF_SCHEMA, DEFAULT_UNCERTAIN
from chexrl.core.schemas import get_schema
from chexrl.data.loaders import DatasetSpec, frame_labels, read_frame


def dataset_stats(spec: str | DatasetSpec, **overrides) -> dict:
    """Counts for a dataset spec (see `DatasetSpec`); labels are counted after mapping and policies."""
    t0 = time.perf_counter()
    s = DatasetSpec.parse(spec) if isinstance(spec, str) else spec
    opts = {**s.options, **overrides}
    frame = read_frame(replace(s, options=opts))
    uncertain = opts.get("uncertain", DEFAULT_UNCERTAIN)
    out_of_schema = opts.get("out_of_schema", DEFAULT_OUT_OF_SCHEMA)
    labels, keep = frame_labels(frame, s.dataset, s.schema, uncertain, out_of_schema)
    kept = frame[keep]
    counts = dict.fromkeys(get_schema(s.schema).labels, 0)
    for combo, c in Counter(labels[keep].tolist()).items():  # per distinct label tuple: a few thousand
        for lab in combo:
            counts[lab] += c
    out = {
        "dataset": s.dataset,
        "root": s.root,
        "schema": s.schema,
        "uncertain": uncertain if s.dataset != "nih" else None,
        "out_of_schema": out_of_schema if s.dataset == "nih" else None,
        "images": len(kept),
        "patients": int(kept["patient_id"].nunique()),
        "studies": int(kept["study_id"].nunique()),
        "splits": {str(k): int(v) for k, v in kept["split"].value_counts().sort_index().items()},
        "dropped": int((~keep).sum()),
        "labels": counts,
    }
    if s.dataset == "nih":
        raw = frame["findings"].str.split("|").explode().value_counts()
        out["nih_findings"] = {str(k): int(v) for k, v in raw.sort_index().items()}
    else:
        cols = [c for c in counts if c in frame.columns]
        values = frame[cols].to_numpy(dtype=np.float32, na_value=np.nan)
        out["uncertain_counts"] = dict(
            zip(cols, (values == -1).sum(axis=0).astype(int).tolist(), strict=True)
        )
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def format_stats(st: dict) -> str:
    """A human-readable table of `dataset_stats`."""
    lines = [
        f"{st['dataset']} at {st['root']} (schema {st['schema']})",
        f"images {st['images']}  patients {st['patients']}  studies {st['studies']}  dropped {st['dropped']}",
        "splits: " + ", ".join(f"{k} {v}" for k, v in st["splits"].items()),
        f"{'label':<28}{'positives':>10}{'share':>8}" + ("  uncertain" if "uncertain_counts" in st else ""),
    ]
    for lab, n in st["labels"].items():
        share = n / st["images"] if st["images"] else 0.0
        unc = f"  {st['uncertain_counts'].get(lab, 0):>9}" if "uncertain_counts" in st else ""
        lines.append(f"{lab:<28}{n:>10}{share:>8.3f}{unc}")
    lines.append(f"({st['seconds']:.2f} s)")
    return "\n".join(lines)
