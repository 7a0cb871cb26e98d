"""docs/configuration.md, written from the configuration models themselves: every key with its type,
default and description, so the page cannot drift from what `load_config` accepts.

`chexrl config-docs` writes the page; `chexrl config-docs --check` (and a test) fails when it is stale.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from chexrl.cli import app

HEADER = """# Configuration

Every key of a chexrl run configuration (YAML), with its type, default and meaning. Unknown keys are
errors that name them. This page is generated from the pydantic models in chexrl/config.py and
services/evaluator/settings.py by `chexrl config-docs`; edit the models' descriptions, not this page.
"""


def model_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (`X`, `X | None`, `list[X]`), in order."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return [m for arg in typing.get_args(annotation) for m in model_types(arg)]
    return []


def type_text(annotation: Any) -> str:
    """A short, readable type: `int`, `float | None`, `'hard' | 'nuanced'`, `list[str]`."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default!r}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def model_section(model: type[BaseModel], path: str) -> list[str]:
    """The markdown table of one model's own keys, then a section per nested model."""
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"## `{path}`", "", doc, "", "| key | type | default | description |", "|---|---|---|---|"]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        lines.append(
            f"| `{key}` | {_cell(type_text(field.annotation))} | {_cell(default_text(field))} "
            f"| {_cell(field.description or '')} |"
        )
        nested += [(f"{path}.{key}", m) for m in model_types(field.annotation)]
    lines.append("")
    for sub_path, sub_model in nested:
        lines += model_section(sub_model, sub_path)
    return lines


def configuration_page() -> str:
    """The whole page: the run configuration, then the evaluator's settings file."""
    from chexrl.config import ChexrlConfig
    from services.evaluator.settings import EvaluatorSettings

    lines = [HEADER, "# The run configuration (`chexrl ... --config FILE`)", ""]
    for name, field in ChexrlConfig.model_fields.items():
        for model in model_types(field.annotation):
            lines += model_section(model, name)
    lines += ["# The evaluator's settings (`chexrl serve-evaluator --config FILE`)", ""]
    lines += model_section(EvaluatorSettings, "evaluator")
    return "\n".join(lines).rstrip() + "\n"


PAGE = Path("docs/configuration.md")


@app.command("config-docs")
def config_docs(
    out: Path = typer.Option(PAGE, help="Where the page goes (relative to the current directory)."),
    check: bool = typer.Option(False, help="Write nothing; exit 1 when the page differs from the models."),
) -> None:
    """Write docs/configuration.md from the configuration models (every key, type, default, description)."""
    page = configuration_page()
    if check:
        current = out.read_text() if out.exists() else ""
        if current != page:
            typer.echo(f"{out} is out of date: run `chexrl config-docs` and commit it", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    typer.echo(f"wrote {out}")
