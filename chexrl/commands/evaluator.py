"""`chexrl serve-evaluator` and `chexrl bench score`."""

from __future__ import annotations

from pathlib import Path

import typer

from chexrl.cli import app, bench_app


@app.command("serve-evaluator")
def serve_evaluator(
    host: str = typer.Option(None, help="Bind address (default: the settings' host, loopback only)."),
    port: int = typer.Option(None, help="Port (default: the settings' port)."),
    state_dir: Path = typer.Option(
        None, envvar="CHEXRL_EVALUATOR_STATE_DIR", help="Where nuanced-reward windows persist."
    ),
    config: Path = typer.Option(None, help="YAML settings (services/evaluator/settings.py)."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    insecure: bool = typer.Option(
        False, "--insecure", help="Serve a non-loopback address without CHEXRL_EVALUATOR_TOKEN (not advised)."
    ),
) -> None:
    """Serve /score, /evaluate, /runs/{run_id}/window, /healthz and /metrics with uvicorn. With
    CHEXRL_EVALUATOR_TOKEN set, every route but /healthz needs `Authorization: Bearer <token>`; without
    it, only a loopback address is served (unless --insecure). CHEXRL_EVALUATOR_TOKEN_FILE, when set,
    names a file holding the token instead (read once at start)."""
    import os

    import uvicorn

    from services.evaluator.app import create_app
    from services.evaluator.security import InsecureBindError, check_exposure, read_token
    from services.evaluator.server import server_config
    from services.evaluator.settings import load_settings
    from services.evaluator.window_store import StateDirInUse, StateDirUnsafe

    try:
        settings = load_settings(
            config, host=host, port=port, state_dir=str(state_dir) if state_dir else None
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    try:
        token = read_token(os.environ)
        check_exposure(settings.host, token, insecure)
        application = create_app(settings, token=token)
    except (
        InsecureBindError,
        ValueError,
        StateDirInUse,
        StateDirUnsafe,
    ) as exc:  # ValueError: the token file
        typer.echo(f"chexrl serve-evaluator: {exc}", err=True)
        raise typer.Exit(2) from exc
    # One process: the nuanced windows are serialised per run in this process (SQLite is their durable
    # copy, and the state directory's lock keeps a second process off it).
    uvicorn.Server(server_config(application, settings, log_level)).run()


@bench_app.command("score")
def bench_score_cmd(
    json_path: Path = typer.Option(..., "--json", help="Where to write the figures."),
    clients: int = typer.Option(8, help="Concurrent clients."),
    items: int = typer.Option(64, help="Completions per request."),
    completion_bytes: int = typer.Option(1024, help="Approximate size of each completion."),
    seconds: float = typer.Option(10.0, help="Measurement duration (after a warm-up)."),
    reward: str = typer.Option("hard", help="hard or nuanced."),
) -> None:
    """Drive a real evaluator process from concurrent clients over loopback; write throughput and latency."""
    from chexrl.bench.common import write_json
    from chexrl.bench.score import bench_score

    figures = bench_score(clients, items, completion_bytes, seconds, reward)
    write_json(json_path, figures)
    typer.echo(
        f"{figures['completions_per_s']:.0f} completions/s, p50 {figures['p50_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms -> {json_path}"
    )
