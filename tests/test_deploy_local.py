"""docker-compose.yml's deployment as real processes on loopback: the tokens made by docker/make-secrets.sh,
a Ray head with token authentication, the evaluator as its own process, and the GRPO job (tiny model, two
steps) submitted with `ray job submit` by the compose file's own command.

Everything comes from docker/chexrl.env and docker-compose.yml, read and interpolated as compose does
(tests/test_deploy_files.py); each process gets the environment compose gives that service (the env file,
the service's `environment:`, and docker/entrypoint.sh turning the secret files into variables). What a
shared machine needs instead of containers is the only difference, and it is spelled out here:

- container paths map to directories under tmp_path (/srv/chexrl: the volumes, /run/secrets: the secrets)
  and /opt/chexrl to this checkout;
- service names (ray-head, evaluator) resolve to 127.0.0.1, servers bind 127.0.0.1, and the published
  ports are free ones;
- the Ray head is the test suite's RayHead (short --temp-dir, bounded CPUs and object store) started with
  the head service's environment, not `ray start` with the compose flags;
- the run config at CHEXRL_GRPO_CONFIG is docker/grpo.yaml (the same placeholders for the model, data, run
  directory and evaluator URL) with the sizes shrunk to a two-step run.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from services.evaluator.process import free_port
from tests.fixtures.ray_head import RayHead
from tests.test_deploy_files import COMPOSE, REPO, compose_model, read_env_file
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow

RUN_ID = "deploy-local"


class Local:
    """Container paths and service addresses -> this machine."""

    def __init__(self, root: Path) -> None:
        self.paths = {
            "/srv/chexrl": root / "srv" / "chexrl",
            "/run/secrets": root / "run" / "secrets",
            "/opt/chexrl": REPO,
        }
        self.hosts = {"ray-head": "127.0.0.1", "evaluator": "127.0.0.1", "0.0.0.0": "127.0.0.1"}

    def __call__(self, value):
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        for container, local in self.paths.items():
            value = re.sub(rf"(?<![\w/]){re.escape(container)}(?=/|$)", str(local), value)
        for host, local in self.hosts.items():
            value = re.sub(rf"(?<![\w.-]){re.escape(host)}(?=:|$)", local, value)
        return value


def service_env(model: dict, name: str, local: Local) -> dict[str, str]:
    """The environment compose gives a service, mapped to this machine and passed through the image's
    entry point (which reads the secret files), as the service's command would see it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CHEXRL_"))}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"
    env = {**base, **local(read_compose_env(model, name))}
    shown = subprocess.run(
        ["sh", REPO / "docker" / "entrypoint.sh", "env", "-0"], env=env, capture_output=True, check=True
    )
    return dict(item.split("=", 1) for item in shown.stdout.decode().split("\0") if "=" in item)


def read_compose_env(model: dict, name: str) -> dict[str, str]:
    service = model["services"][name]
    env = {}
    for path in service["env_file"]:
        env.update(read_env_file(REPO / path))
    env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    return env


def wait_healthy(env: dict[str, str], timeout: float, proc: subprocess.Popen | None = None) -> None:
    """The service's compose health check (the image's script with the service's URL), retried."""
    deadline = time.monotonic() + timeout
    while True:
        check = subprocess.run(
            [sys.executable, REPO / "docker" / "healthcheck.py"], env=env, capture_output=True, text=True
        )
        if check.returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not healthy in {timeout:.0f} s: {check.stderr[-500:]}")
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_compose_deployment_as_local_processes(tmp_path, tiny_gemma3_dir, synth_mimic_dir):
    env_file = read_env_file()
    # the published ports, free on this shared machine; every other setting as the env file says
    for key in ("CHEXRL_RAY_DASHBOARD_PORT", "CHEXRL_RAY_GCS_PORT", "CHEXRL_EVALUATOR_PORT"):
        env_file[key] = str(free_port())
    model = compose_model(COMPOSE, env=env_file)
    local = Local(tmp_path / "container")
    # the services' env_file: docker/chexrl.env with those ports
    (tmp_path / "chexrl.env").write_text("".join(f"{k}={v}\n" for k, v in env_file.items()))
    for service in model["services"].values():
        assert service["env_file"] == ["docker/chexrl.env"]
        service["env_file"] = [str(tmp_path / "chexrl.env")]

    # secrets: made by the deployment's script, where compose mounts them
    secrets_dir = local.paths["/run/secrets"]
    made = subprocess.run(["bash", REPO / "docker" / "make-secrets.sh", secrets_dir], capture_output=True)
    assert made.returncode == 0, made.stderr
    for secret in model["secrets"]:
        assert (secrets_dir / secret).is_file(), secret
    evaluator_token = (secrets_dir / "evaluator_token").read_text()

    # volumes: the models and data directories (bind mounts in compose), checkpoints, evaluator state
    head_env_raw = read_compose_env(model, "ray-head")
    models = Path(local(head_env_raw["CHEXRL_MODELS_DIR"]))
    data = Path(local(head_env_raw["CHEXRL_DATA_DIR"]))
    (models / "sft").mkdir(parents=True)
    (models / "sft" / "merged").symlink_to(tiny_gemma3_dir)
    (data / "mimic-cxr-jpg").mkdir(parents=True)
    (data / "mimic-cxr-jpg" / "2.0.0").symlink_to(synth_mimic_dir)
    for key in ("CHEXRL_CHECKPOINTS_DIR", "CHEXRL_EVALUATOR_STATE_DIR"):
        Path(local(env_file[key])).mkdir(parents=True)
    # the compose config `grpo` (docker/grpo.yaml) at CHEXRL_GRPO_CONFIG, shrunk to a two-step run
    (target,) = [c["target"] for c in model["services"]["ray-head"]["configs"] if c["source"] == "grpo"]
    run_config = yaml.safe_load((REPO / model["configs"]["grpo"]["file"]).read_text())
    run_config["grpo"].update(
        limit=8, max_steps=2, prompts_per_step=2, save_steps=1, reward="nuanced", run_id=RUN_ID
    )
    run_config["sampling"] = {"n": 4, "max_tokens": 16}
    Path(local(target)).parent.mkdir(parents=True)
    Path(local(target)).write_text(yaml.safe_dump(run_config))

    evaluator_env = service_env(model, "evaluator", local)
    head_env = service_env(model, "ray-head", local)
    job_env = service_env(model, "grpo-job", local)
    # the token from its secret file, read by chexrl itself: never in a process's environment
    assert Path(evaluator_env["CHEXRL_EVALUATOR_TOKEN_FILE"]).read_text() == evaluator_token
    assert Path(head_env["CHEXRL_EVALUATOR_TOKEN_FILE"]).read_text() == evaluator_token
    assert not any(evaluator_token in value for env in (evaluator_env, head_env) for value in env.values())
    assert not any(k.startswith("CHEXRL_EVALUATOR_TOKEN") for k in job_env)  # the submitter has no use

    evaluator_log = open(tmp_path / "evaluator.log", "wb")  # noqa: SIM115 - closed below
    evaluator = subprocess.Popen(
        ["sh", REPO / "docker" / "entrypoint.sh", *local(model["services"]["evaluator"]["command"])],
        env=evaluator_env,
        cwd=REPO,
        stdout=evaluator_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    head = None
    try:
        wait_healthy(evaluator_env, 60, evaluator)
        evaluator_url = f"http://127.0.0.1:{env_file['CHEXRL_EVALUATOR_PORT']}"
        assert httpx.get(f"{evaluator_url}/runs/{RUN_ID}/window").status_code == 401  # token required

        head = RayHead(tmp_path, env=head_env, dashboard_port=int(env_file["CHEXRL_RAY_DASHBOARD_PORT"]))
        wait_healthy(head_env, 60)
        assert httpx.get(f"{head.address}/api/version").status_code == 401  # token authentication is on

        submit = local(model["services"]["grpo-job"]["command"])
        assert submit[:5] == ["ray", "job", "submit", "--address", head.address]
        result = subprocess.run(submit, env=job_env, cwd=REPO, capture_output=True, text=True, timeout=900)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert "succeeded" in output

        run_dir = Path(local(env_file["CHEXRL_CHECKPOINTS_DIR"])) / "grpo"
        steps = read_metrics(run_dir)
        assert [s["step"] for s in steps] == [1, 2]
        # the job read the compose config, rendered with the head's environment: the evaluator by "name"
        rendered = yaml.safe_load((run_dir / "job-config.yaml").read_text())
        assert rendered["grpo"]["evaluator_url"] == evaluator_url
        assert rendered["grpo"]["model"] == str(models / "sft" / "merged")

        # its rewards came from that evaluator: it holds the run's window and counted every completion
        auth = {"Authorization": f"Bearer {evaluator_token}"}
        window = httpx.get(f"{evaluator_url}/runs/{RUN_ID}/window", headers=auth).json()["window"]
        assert len(window) == sum(round(s["reward/valid_fraction"] * 8) for s in steps)
        metrics = httpx.get(f"{evaluator_url}/metrics", headers=auth).text
        scored = re.search(
            r'^chexrl_evaluator_completions_scored_total\{reward="nuanced"\} (\S+)$', metrics, re.M
        )
        assert scored and float(scored[1]) == 2 * 2 * 4
        assert (Path(local(env_file["CHEXRL_EVALUATOR_STATE_DIR"])) / "windows.sqlite3").exists()
        assert (run_dir / "adapter-final" / "adapter_model.safetensors").exists()
    finally:
        if head is not None:
            head.stop()
        stop(evaluator)
        evaluator_log.close()
