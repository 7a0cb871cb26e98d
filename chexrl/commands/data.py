"""CLI: `chexrl synth-data`, `chexrl data stats`, `chexrl data sample`, `chexrl data check-images`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from chexrl.cli import app, data_app


def _checked(fn, spec):
    """`fn(spec)`, with a bad spec, option or file as a usage error (the message names what is wrong)."""
    try:
        return fn(spec)
    except ValueError as err:  # DataFormatError included
        raise typer.BadParameter(str(err), param_hint="--spec") from err


def _spec(style: str, root: str, split: str | None, schema: str | None, options: dict[str, str]) -> str:
    parts = [style, root] + ([split] if split else []) + ([schema] if schema else [])
    query = "&".join(f"{k}={v}" for k, v in options.items() if v is not None)
    return ":".join(parts) + (f"?{query}" if query else "")


@app.command("synth-data")
def synth_data(
    style: str = typer.Option(
        ..., help="Format to imitate: mimic | chexpert | nih | nih-expert | vindr | padchest."
    ),
    out: Path = typer.Option(..., help="Output directory (the data set root)."),
    n: int = typer.Option(200, help="Number of images."),
    seed: int = typer.Option(0, help="Random seed; same seed, same files."),
    shift: str = typer.Option("none", help="Second-institution variant: none | site-b | site-b-inverted."),
    size: int = typer.Option(128, help="Image side in pixels."),
) -> None:
    """Write synthetic chest X-rays and label files in a real data set's exact format."""
    from chexrl.data.synth_external import synthesize_any

    try:
        summary = synthesize_any(style, out, n, seed=seed, shift=shift, size=size)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--style") from err
    typer.echo(json.dumps(summary))


@data_app.command("stats")
def stats(
    style: str = typer.Option(
        None, help="mimic | chexpert | nih | nih-expert | vindr | padchest (or give --spec)."
    ),
    root: str = typer.Option(None, help="Data set root directory."),
    split: str = typer.Option(None, help="Split(s), joined with '+'; default: all."),
    schema: str = typer.Option(
        None, help="chexpert14 | nih9 | nih10 | nih-expert4 | vindr9 (default per data set)."
    ),
    uncertain: str = typer.Option(None, help="Uncertain labels: zeros (default) | ones | ignore."),
    uncertain_only: str = typer.Option(
        None, help="Rows whose only labels are uncertain (MIMIC, CheXpert): drop (default) | no_finding."
    ),
    out_of_schema: str = typer.Option(
        None, help="Images with no finding of the schema: drop (default) | no_finding | keep_empty."
    ),
    spec: str = typer.Option(None, help="A full dataset spec instead of --style/--root (see docs/data.md)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per-label positive counts, images, patients, studies and splits of a data set."""
    from chexrl.data.stats import dataset_stats, format_stats

    if spec is None:
        if not style or not root:
            raise typer.BadParameter("give --style and --root, or --spec")
        options = {"uncertain": uncertain, "uncertain_only": uncertain_only, "out_of_schema": out_of_schema}
        spec = _spec(style, root, split, schema, options)
    st = _checked(dataset_stats, spec)
    typer.echo(json.dumps(st, indent=2) if as_json else format_stats(st))


@data_app.command("sample")
def sample(
    spec: str = typer.Option(..., help="Dataset spec, e.g. mimic:/data/mimic-cxr-jpg:train."),
    out: Path = typer.Option(..., help="Directory for sft.jsonl, sft_val.jsonl, rl.jsonl, summary.json."),
    sft: int = typer.Option(2000, help="SFT images, validation included."),
    rl: int = typer.Option(1000, help="RL images."),
    val_share: float = typer.Option(0.1, help="Share of the SFT budget held out for validation."),
    rl_val_share: float = typer.Option(0.0, help="Share of the RL budget held out for validation."),
    seed: int = typer.Option(0, help="Random seed."),
    max_per_patient: int = typer.Option(0, help="Images per patient at most (0: no limit)."),
) -> None:
    """Seeded, patient-disjoint, label-stratified SFT / RL subsets (the paper's budgets by default)."""
    from chexrl.data.loaders import load_dataset
    from chexrl.data.sampling import budget_sizes, label_rates, save_samples, stratified_budget_split

    pool = _checked(load_dataset, spec)
    sizes = budget_sizes(sft, rl, val_share, rl_val_share)
    subsets = stratified_budget_split(pool, sizes, seed=seed, max_per_patient=max_per_patient or None)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"spec": spec, "seed": seed, "pool": len(pool), "pool_rates": label_rates(pool), "subsets": {}}
    for name, items in subsets.items():
        save_samples(items, out / f"{name}.jsonl")
        summary["subsets"][name] = {"images": len(items), "patients": len({s.patient_id for s in items}),
                                    "rates": label_rates(items)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(json.dumps({k: v["images"] for k, v in summary["subsets"].items()}))


@data_app.command("check-images")
def check_images(
    spec: str = typer.Option(..., help="Dataset spec."),
    family: str = typer.Option("qwen2_5_vl", help="qwen2_5_vl | gemma3: the processor budget to apply."),
    limit: int = typer.Option(0, help="Check only the first N images (0: all)."),
) -> None:
    """Open every image as training would; list the ones that fail (exit 1 if any)."""
    from chexrl.data.images import prepare_images
    from chexrl.data.loaders import load_dataset

    samples = _checked(load_dataset, spec)
    paths = [s.image_path for s in (samples[:limit] if limit else samples)]
    _, errors = prepare_images(paths, family=family)
    for e in errors:
        typer.echo(e)
    typer.echo(f"{len(paths) - len(errors)} ok, {len(errors)} bad")
    if errors:
        raise typer.Exit(1)
