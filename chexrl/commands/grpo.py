"""`chexrl grpo --config FILE [--resume]`: the GRPO stage as a Ray job entry point.

Run it directly (it starts a private local Ray: no dashboard, token authentication with a fresh token) or
through `ray job submit --address ... --working-dir . -- chexrl grpo --config FILE --base-dir "$PWD"` (it
then joins that cluster: RAY_ADDRESS is set by the job runtime). Ray's `--working-dir` upload leaves out
what .gitignore excludes (runs/, where `make demo` writes), so in such a job the config's relative paths
are resolved against `--base-dir`, the submitter's folder; without it, a missing path is an error that
says why and how to fix it, before any actor starts.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import typer

from chexrl.cli import app


@app.command("grpo")
def grpo_cmd(
    config: Path = typer.Option(..., "--config", help="YAML run configuration (chexrl/config.py)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    evaluator_url: str | None = typer.Option(
        None,
        "--evaluator-url",
        envvar="CHEXRL_EVALUATOR_URL",
        help="Overrides grpo.evaluator_url (deployments set it per environment: compose service name, k8s Service).",
    ),
    base_dir: Path | None = typer.Option(
        None,
        "--base-dir",
        help='Resolve --config and the config\'s relative paths against this folder, e.g. `--base-dir "$PWD"` '
        "in `ray job submit --working-dir . -- chexrl grpo ...` (Ray's upload leaves out git-ignored runs/). "
        "Default: the working directory.",
    ),
) -> None:
    """GRPO on a LoRA adapter: rollouts through vLLM actors, rewards from the evaluator's /score."""
    from trainer.loop import RunData, run_grpo

    cfg = _checked_config(config, base_dir, evaluator_url)
    g = cfg.grpo
    data = RunData(_rl_set(cfg), held_out=_held_out_sets(g))
    token = evaluator_token()
    check_evaluator(cfg, token)
    connect_ray()
    history = run_grpo(cfg, data, resume=resume, evaluator_token=token)
    if not history:  # resumed a run whose last checkpoint is already its final step
        typer.echo(f"GRPO: {g.run_dir} already finished all {g.max_steps} steps; nothing to do")
        return
    first, last = history[0]["reward/total"], history[-1]["reward/total"]
    typer.echo(
        f"GRPO done: {len(history)} steps, mean reward first {first:.3f} -> last {last:.3f}; {g.run_dir}"
    )


def _checked_config(config: Path, base_dir: Path | None, evaluator_url: str | None):
    """The run's config, loaded and checked (its paths exist, made absolute), as a usage error if not."""
    from chexrl.config import load_config

    uploaded = base_dir is None and in_uploaded_working_dir()  # cwd: Ray's copy, without ignored files
    if base_dir is not None:
        if not base_dir.is_absolute() or not base_dir.is_dir():
            raise typer.BadParameter(
                f"{base_dir} is not an absolute path to a folder", param_hint="--base-dir"
            )
        config = base_dir / config
        os.chdir(base_dir)  # every relative path of the run (config, data, model, run_dir) is the submitter's
    if not config.exists():
        raise typer.BadParameter(
            missing_paths_message([("--config", str(config))], uploaded), param_hint="--config"
        )
    try:
        cfg = load_config(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    if evaluator_url:
        cfg = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"evaluator_url": evaluator_url})})
    missing = [name for name in ("model", "data") if getattr(cfg.grpo, name) is None]
    if missing:
        raise typer.BadParameter(f"{config} must set grpo.{', grpo.'.join(missing)}", param_hint="--config")
    problem = check_local_paths(cfg, uploaded)
    if problem:
        raise typer.BadParameter(f"{config}: {problem}", param_hint="--config")
    return absolute_paths(cfg)  # actors resolve paths in their own working directory, not this one


def _rl_set(cfg) -> list:
    """grpo.limit: a seeded, stratified draw with no SFT patient, not the first N rows of the file."""
    from chexrl.data.sampling import rl_samples

    g = cfg.grpo
    sft_sets = (
        g.sft_data if g.sft_data is not None else [p for p in (cfg.sft.traces, cfg.sft.val_traces) if p]
    )
    try:
        samples = rl_samples(g.data, g.limit, g.seed, sft_sets, log=typer.echo)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(
            f"grpo.data {g.data!r} / grpo.sft_data {sft_sets}: {exc}", param_hint="--config"
        ) from exc
    if not samples:
        raise typer.BadParameter(f"grpo.data {g.data!r} has no samples", param_hint="--config")
    return samples


def _held_out_sets(g):
    """The ID set and the OOD set per site evaluated during training, each (spec, its first eval_limit
    samples); None when off (GRPOConfig checks both or neither)."""
    from chexrl.data.loaders import load_dataset
    from trainer.run import HeldOutSets

    if not g.eval_id_data:
        return None
    named = [("eval_id_data", g.eval_id_data)] + [("eval_ood_data", spec) for spec in g.eval_ood_specs]
    sets = []
    for key, spec in named:
        try:
            eval_samples = load_dataset(spec)[: g.eval_limit]
        except (ValueError, OSError) as exc:
            raise typer.BadParameter(f"grpo.{key} {spec!r}: {exc}", param_hint="--config") from exc
        if not eval_samples:
            raise typer.BadParameter(f"grpo.{key} {spec!r} has no samples", param_hint="--config")
        sets.append((spec, eval_samples))
    return HeldOutSets(sets[0], sets[1:])


def evaluator_token() -> str | None:
    """The evaluator's bearer token: from CHEXRL_EVALUATOR_TOKEN_FILE, else CHEXRL_EVALUATOR_TOKEN."""
    from services.evaluator.security import TOKEN_FILE_ENV, read_token

    try:
        return read_token(os.environ)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=TOKEN_FILE_ENV) from exc


def check_evaluator(cfg, token: str | None) -> None:
    """Before any actor starts: the evaluator answers at grpo.evaluator_url and takes the run's token (an
    authenticated, read-only GET of the run's window), within the client's usual retries. A missing
    evaluator would otherwise be found only after the engines have loaded."""
    from services.evaluator.client import EvaluatorClient, ScoringError

    g = cfg.grpo
    client = EvaluatorClient(g.evaluator_url, token=token, **g.scoring_client.model_dump())
    try:
        client.get_window(g.resolved_run_id)
    except ScoringError as exc:
        raise typer.BadParameter(
            f"no usable evaluator at {g.evaluator_url}: {exc}. Start one first (`chexrl serve-evaluator "
            "--port 8000 --state-dir runs/evaluator-state`) or point --evaluator-url at a running one; a 401 "
            "means CHEXRL_EVALUATOR_TOKEN (or CHEXRL_EVALUATOR_TOKEN_FILE) does not hold its token. "
            "`chexrl run` starts its own evaluator.",
            param_hint="--evaluator-url / grpo.evaluator_url",
        ) from exc
    finally:
        client.close()


def connect_ray() -> None:
    """Join RAY_ADDRESS's cluster (set in a Ray job), else start a private local Ray: without the dashboard
    (its job API runs whatever any local user submits) and, unless RAY_AUTH_MODE says otherwise, with
    token authentication on a fresh token that only this process and its Ray workers hold (the GCS port
    answers on the node's address)."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, ignore_reinit_error=True)
        return
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        # Ray reads RAY_AUTH_MODE and the token once, when it is imported (trainer.loop already imported
        # it): re-read them, as Ray's own authentication tests do (Ray 2.60 has no public call for it).
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    ray.init(address="local", include_dashboard=False, ignore_reinit_error=True)


# Why a relative path can be missing in a Ray job, and the fix.
UPLOAD_HINT = (
    "This runs as a Ray job submitted with --working-dir: its working directory is Ray's copy of the "
    "submitter's folder, and that copy leaves out everything .gitignore or .rayignore excludes (runs/, "
    'where `make demo` writes, is git-ignored). Fix: add --base-dir "$PWD" after `chexrl grpo` in the '
    "`ray job submit` command (a Ray cluster on this machine, or sharing its filesystem, then reads the "
    "paths where they are), or give absolute paths that every Ray node can read."
)


def in_uploaded_working_dir() -> bool:
    """True in a Ray job submitted with --working-dir (its runtime env names the uploaded package)."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        return bool((job.get("runtime_env") or {}).get("working_dir"))
    except (ValueError, AttributeError):
        return False


def local_paths(cfg) -> list[tuple[str, str]]:
    """(config key, local path) of each file or folder the run reads."""
    g = cfg.grpo
    found = [("grpo.model", g.model), ("rollout.model", cfg.rollout.model if cfg.rollout else None)]
    for key in ("data", "eval_id_data"):
        found.append((f"grpo.{key}", _spec_path(getattr(g, key))))
    ood = g.eval_ood_specs
    found += [
        (f"grpo.eval_ood_data{f'[{i}]' if len(ood) > 1 else ''}", _spec_path(spec))
        for i, spec in enumerate(ood)
    ]
    if g.sft_data is not None:
        found += [(f"grpo.sft_data[{i}]", p) for i, p in enumerate(g.sft_data)]
    else:
        found += [("sft.traces", cfg.sft.traces), ("sft.val_traces", cfg.sft.val_traces)]
    return [(key, path) for key, path in found if path]


def _spec_path(spec: str | None) -> str | None:
    """The folder of a dataset spec (NAME:DIR[:SPLIT][:SCHEMA][?options]), or the spec itself when it is a
    path (a `chexrl data sample` folder or JSONL)."""
    from chexrl.data.loaders import DATASETS

    if not spec:
        return None
    name, sep, rest = spec.partition(":")
    return rest.split("?", 1)[0].split(":", 1)[0] if sep and name in DATASETS else spec


def missing_paths_message(
    missing: list[tuple[str, str]], uploaded: bool, extra: list[str] | None = None
) -> str:
    problems = [f"{key} {path!r} does not exist (looked in {Path.cwd()})" for key, path in missing]
    problems += extra or []
    text = "; ".join(problems)
    relative = any(not Path(p).expanduser().is_absolute() for _, p in missing) or bool(extra)
    return f"{text}. {UPLOAD_HINT}" if relative and uploaded else text


def check_local_paths(cfg, uploaded: bool) -> str | None:
    """What is wrong with the run's local paths (None: nothing), said before any actor starts. `uploaded`:
    the working directory is Ray's copy of the submitter's folder (`in_uploaded_working_dir`)."""
    missing = [(key, path) for key, path in local_paths(cfg) if not Path(path).expanduser().exists()]
    extra = []
    if uploaded and not Path(cfg.grpo.run_dir).is_absolute():
        extra.append(
            f"grpo.run_dir {cfg.grpo.run_dir!r} is relative: the run would write its checkpoints into Ray's "
            f"temporary copy of the working directory ({Path.cwd()}), which Ray deletes"
        )
    return missing_paths_message(missing, uploaded, extra) if missing or extra else None


def absolute_paths(cfg):
    """`cfg` with the model folders and the run directory made absolute (Ray actors have their own cwd).
    Symlinks are kept: the run directory's name is the run's default id at the evaluator."""

    def absolute(path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    g = cfg.grpo
    update = {"grpo": g.model_copy(update={"model": absolute(g.model), "run_dir": absolute(g.run_dir)})}
    if cfg.rollout is not None:
        update["rollout"] = cfg.rollout.model_copy(update={"model": absolute(cfg.rollout.model)})
    return cfg.model_copy(update=update)
