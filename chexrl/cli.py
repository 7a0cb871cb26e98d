"""The `chexrl` command. Each command group lives in chexrl/commands/<area>.py and registers itself on
the Typer apps defined here; heavy imports (torch, vLLM, Ray) happen inside the command bodies so that
`chexrl --help` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="chexrl: SFT + GRPO for chest X-ray VLMs.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON figures.")
data_app = typer.Typer(no_args_is_help=True, help="Data set tools.")
traces_app = typer.Typer(no_args_is_help=True, help="Teacher reasoning traces.")
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
app.add_typer(traces_app, name="traces")


@app.command()
def version() -> None:
    """Print the version."""
    from chexrl import __version__

    typer.echo(__version__)


def _register() -> None:
    # Imported for their side effect of adding commands to the apps above.
    import importlib
    import pkgutil

    import chexrl.commands as commands

    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"chexrl.commands.{module.name}")


_register()

if __name__ == "__main__":
    # Run as `python -m chexrl.cli`: commands registered themselves on the `chexrl.cli` module's apps,
    # not on this `__main__` copy, so dispatch through that module.
    from chexrl.cli import app as registered_app

    registered_app()
