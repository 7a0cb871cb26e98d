"""The GRPO job's entry point in every deployment (docker compose, KubeRay, and their local equivalent in
tests/test_deploy_local.py), submitted as `ray job submit ... -- python /opt/chexrl/docker/grpo_job.py`.

It reads the run configuration named by CHEXRL_GRPO_CONFIG, replaces each ${VAR} in it with that
environment variable (a missing one is an error that names it), writes the result next to the run as
job-config.yaml, and runs `chexrl grpo` on it. A resubmitted job continues: with --resume when the run
already has a checkpoint, and not at all (exit 0) when that checkpoint is the last step. The evaluator
token reaches `chexrl grpo` through the environment (CHEXRL_EVALUATOR_TOKEN), never through a file.
"""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path

import yaml


def render(text: str, env: dict[str, str]) -> str:
    try:
        return string.Template(text).substitute(env)
    except KeyError as exc:
        raise SystemExit(f"grpo_job: the run config uses ${{{exc.args[0]}}}, which is not set") from exc
    except ValueError as exc:
        raise SystemExit(f"grpo_job: bad $ placeholder in the run config: {exc}") from exc


def plan(rendered: str) -> tuple[Path, list[str] | None]:
    """(run directory, the `chexrl grpo` command to run, or None when the run is already complete)."""
    from chexrl.config import ChexrlConfig
    from trainer.checkpoint import latest_checkpoint

    cfg = ChexrlConfig.model_validate(yaml.safe_load(rendered) or {})
    run_dir = Path(cfg.grpo.run_dir)
    cmd = ["chexrl", "grpo", "--config", str(run_dir / "job-config.yaml")]
    latest = latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        return run_dir, cmd
    step = json.loads((latest / "meta.json").read_text())["step"]
    return run_dir, (None if step >= cfg.grpo.max_steps else [*cmd, "--resume"])


def main() -> None:
    source = os.environ.get("CHEXRL_GRPO_CONFIG") or sys.exit("grpo_job: CHEXRL_GRPO_CONFIG is not set")
    rendered = render(Path(source).read_text(), dict(os.environ))
    run_dir, cmd = plan(rendered)
    if cmd is None:
        print(f"grpo_job: {run_dir} already holds the run's last checkpoint; nothing to do", flush=True)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job-config.yaml").write_text(rendered)
    print("grpo_job:", " ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
