"""`write_report(run_dir)`: one page about a training run, as Markdown (figures as PNG files next to it) and
as self-contained HTML (figures embedded).

Reads what the run directory has (docs/evaluation.md, "Run directory"): config.yaml, metrics.jsonl,
evals.jsonl, selection.json and evaluation/results.json. Each is optional; the page says which are missing.
prefilter.jsonl (grpo.prefilter's pass rates), when the run has one, adds a section on the RL set it kept.
selection.json, when missing, is computed from evals.jsonl with the same function the training loop uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from chexrl.evaluation.render import Image, html_page, markdown_page
from chexrl.evaluation.runner import RESULTS_JSON
from chexrl.evaluation.sections import run_blocks
from chexrl.evaluation.selection import select_checkpoints
from chexrl.run_files import read_jsonl

RUN_FILES = ("config.yaml", "metrics.jsonl", "evals.jsonl", "selection.json", f"evaluation/{RESULTS_JSON}")
REPORT_DIR = "report"


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def write_report(run_dir: str | Path, *, out_dir: str | Path | None = None, smoothing: float = 0.95) -> Path:
    """Write `report.md`, `report.html` and `figures/*.png` under `out_dir` (default RUN_DIR/report);
    returns the HTML page's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    present = [name for name in RUN_FILES if (run / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{run} is not a chexrl run directory: it has none of {', '.join(RUN_FILES)}")
    missing = [name for name in RUN_FILES if name not in present]

    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else None
    records = read_jsonl(run / "metrics.jsonl")
    evals = read_jsonl(run / "evals.jsonl")
    selection = _read_json(run / "selection.json")
    computed = selection is None and bool(evals)
    if computed:
        selection = select_checkpoints(evals)
    results = _read_json(run / "evaluation" / RESULTS_JSON)

    out = Path(out_dir) if out_dir is not None else run / REPORT_DIR
    figures = draw_figures(out / "figures", records, evals, selection, results, smoothing)
    blocks = run_blocks(
        run_dir=str(run),
        config_text=config_text,
        records=records,
        evals=evals,
        selection=selection,
        selection_computed=computed,
        results=results,
        figures=figures,
        missing=missing,
        smoothing=smoothing,
        prefilter=read_jsonl(run / "prefilter.jsonl"),  # written by trainer/prefilter.py when it ran
    )
    title = f"chexrl run report: {_run_name(run, config_text)}"
    (out / "report.md").write_text(markdown_page(title, blocks))
    html_path = out / "report.html"
    html_path.write_text(html_page(title, blocks))
    return html_path


def draw_figures(
    figures_dir: Path, records, evals, selection, results: dict | None, smoothing: float
) -> dict[str, Image]:
    """The report's PNG figures under `figures_dir`, by name; a figure without data is left out."""
    from chexrl.evaluation.plots import (
        ablation_png,
        comparison_png,
        eval_curves_png,
        paired_png,
        pass_at_k_png,
        training_curves_png,
    )

    drawn = {
        "training_curves": training_curves_png(
            records, figures_dir / "training_curves.png", smoothing=smoothing
        ),
        "eval_curves": eval_curves_png(evals, figures_dir / "eval_curves.png", selection),
    }
    if results:
        chart = ablation_png if results.get("kind") == "prompt_ablation" else comparison_png
        drawn["comparison"] = chart(results, figures_dir / "comparison.png")
        drawn["pass_at_k"] = pass_at_k_png(results, figures_dir / "pass_at_k.png")
        drawn["paired"] = paired_png(results, figures_dir / "paired.png")
    return {
        name: Image(f"figures/{path.name}", name.replace("_", " "), path.read_bytes())
        for name, path in drawn.items()
        if path is not None
    }


def _run_name(run: Path, config_text: str | None) -> str:
    try:
        grpo = (yaml.safe_load(config_text or "") or {}).get("grpo") or {}
    except yaml.YAMLError:
        grpo = {}
    return str(grpo.get("run_id") or run.resolve().name)
