"""`chexrl data stats`: images, patients, studies, splits and per-label positive counts of a data set,
computed on the loader's frame (vectorised), so the full real tables take seconds. Labels are counted as the
loader gives them to training (after the spec's policies); No Finding is what the file says (see
`labeler_labels`: derived only from a MIMIC/CheXpert file without a No Finding column, and the stats say
which), and the rows each policy dropped or changed are counted by reason."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from chexrl.core.schemas import NO_FINDING, get_schema
from chexrl.data.loaders import DatasetSpec, frame_labels, label_policies, read_frame, resolve_spec


def dataset_stats(spec: str | DatasetSpec, **overrides) -> dict:
    """Counts for a dataset spec (see `DatasetSpec`); labels are counted after mapping and policies."""
    t0 = time.perf_counter()
    s = resolve_spec(spec, overrides)
    frame = read_frame(s)
    policies = label_policies(s)
    fl = frame_labels(frame, s.dataset, s.schema, **policies)
    labels, keep = fl.labels, fl.keep
    kept = frame[keep]
    labeler = s.dataset in ("mimic", "chexpert")  # the files with CheXpert-labeler (uncertain) values
    counts = dict.fromkeys(get_schema(s.schema).labels, 0)
    for combo, c in Counter(labels[keep].tolist()).items():  # per distinct label tuple: a few thousand
        for lab in combo:
            counts[lab] += c
    out = {
        "dataset": s.dataset,
        "root": s.root,
        "schema": s.schema,
        "uncertain": policies["uncertain"] if labeler else None,
        "uncertain_only": policies["uncertain_only"] if labeler else None,
        "out_of_schema": policies["out_of_schema"] if s.dataset != "nih-expert" else None,
        "images": len(kept),
        "patients": int(kept["patient_id"].nunique()),
        "studies": int(kept["study_id"].nunique()),
        "splits": {str(k): int(v) for k, v in kept["split"].value_counts().sort_index().items()},
        "dropped": int((~keep).sum()),
        "dropped_by": fl.dropped,
        "rows": fl.counts,  # rows each policy saw: uncertain-only, out of schema, where No Finding came from
        "labels": counts,
    }
    if s.dataset == "nih":
        raw = frame["findings"].str.split("|").explode().value_counts()
        out["nih_findings"] = {str(k): int(v) for k, v in raw.sort_index().items()}
    elif not labeler:
        from chexrl.data.loaders_external import external_stats

        out.update(external_stats(frame, s.dataset))
    else:
        cols = [c for c in counts if c in frame.columns]
        values = frame[cols].to_numpy(dtype=np.float32, na_value=np.nan)
        out["no_finding_source"] = (
            "the file's No Finding column (a blank cell is not No Finding)"
            if NO_FINDING in frame.columns
            else "derived: the file has no No Finding column (no pathology positive or uncertain)"
        )
        out["uncertain_counts"] = dict(
            zip(cols, (values == -1).sum(axis=0).astype(int).tolist(), strict=True)
        )
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def format_stats(st: dict) -> str:
    """A human-readable table of `dataset_stats`."""
    lines = [
        f"{st['dataset']} at {st['root']} (schema {st['schema']})",
        f"images {st['images']}  patients {st['patients']}  studies {st['studies']}  dropped {st['dropped']}"
        + (
            " (" + ", ".join(f"{k} {v}" for k, v in st["dropped_by"].items()) + ")"
            if st["dropped_by"]
            else ""
        ),
        "splits: " + ", ".join(f"{k} {v}" for k, v in st["splits"].items()),
        "policies: "
        + ", ".join(f"{k} {st[k]}" for k in ("uncertain", "uncertain_only", "out_of_schema") if st[k]),
    ]
    rows = st["rows"]
    if "no_finding_in_file" in rows:
        lines.append(
            f"rows: uncertain-only {rows['uncertain_only']}, out of schema {rows['out_of_schema']}, nothing "
            f"written (blank No Finding, nothing positive) {rows['no_label']}; No Finding from the file "
            f"{rows['no_finding_in_file']}, derived {rows['no_finding_derived']}, overruled by a positive "
            f"pathology {rows['no_finding_conflicts']}"
        )
        lines.append(f"No Finding: {st['no_finding_source']}")
    else:
        lines.append("rows: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in rows.items()))
    if "site_labels" in st:
        lines.append("site labels: " + _top(st["site_labels"]))
    if st.get("unmapped_terms"):
        lines.append("unmapped terms: " + _top(st["unmapped_terms"]))
    if st.get("filtered"):
        lines.append("filtered: " + ", ".join(f"{k} {v}" for k, v in st["filtered"].items()))
    lines += [
        f"{'label':<28}{'positives':>10}{'share':>8}" + ("  uncertain" if "uncertain_counts" in st else ""),
    ]
    for lab, n in st["labels"].items():
        share = n / st["images"] if st["images"] else 0.0
        unc = f"  {st['uncertain_counts'].get(lab, 0):>9}" if "uncertain_counts" in st else ""
        lines.append(f"{lab:<28}{n:>10}{share:>8.3f}{unc}")
    lines.append(f"({st['seconds']:.2f} s)")
    return "\n".join(lines)


def _top(counts: dict[str, int], shown: int = 20) -> str:
    """`name count, ...`; past `shown` names (PadChest has ~170 terms), the most frequent and how many more."""
    items = list(counts.items())
    if len(items) > shown:
        items = sorted(items, key=lambda kv: -kv[1])[:shown]
    more = f" ... and {len(counts) - shown} more (--json lists all)" if len(counts) > shown else ""
    return ", ".join(f"{k} {v}" for k, v in items) + more
