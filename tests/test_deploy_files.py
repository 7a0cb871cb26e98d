"""The Docker and docker-compose deployment, checked offline (no Docker engine runs here): the Dockerfiles
pass hadolint, the compose files validate against the Compose Specification's JSON schema (as bundled by
check-jsonschema, a pinned PyPI package), and the wiring the issue asks for is what the files say. Each
validator is also shown rejecting a broken file.

The helpers at the top (env file, compose interpolation and merging) are shared with test_deploy_local.py
and test_deploy_k8s.py.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV_FILE = REPO / "docker" / "chexrl.env"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
DOCKERFILES = [REPO / "docker" / "Dockerfile.cpu", REPO / "docker" / "Dockerfile.gpu"]
SERVICES = {"ray-head", "evaluator", "grpo-job"}
# Where the containers see things: the volumes' root, compose secrets, the installed project.
CONTAINER_ROOTS = ("/srv/chexrl", "/run/secrets", "/opt/chexrl")

# ------------------------------------------------------------------ helpers (shared)

ENV_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=([^\s'\"$#]*)$")


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """KEY=VALUE lines and comments, nothing else: the subset docker compose and this parser read alike."""
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: not a plain KEY=VALUE line: {line!r}")
        if match[1] in env:
            raise ValueError(f"{path}:{number}: {match[1]} set twice")
        env[match[1]] = match[2]
    return env


_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation of a loaded compose document: $$, $VAR, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, ${VAR?error}. A missing variable is an error here (compose would warn
    and substitute ""), so a file that needs a variable the env file lacks fails the tests."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[4]
        op, arg = match[2], match[3]
        present = name in env and (env[name] != "" or op not in (":-", ":?"))
        if present:
            return env[name]
        if op in (":-", "-"):
            return arg
        raise KeyError(f"${{{name}}} is not set ({arg or 'no default'})")

    return _VAR.sub(sub, value)


def variables(value) -> set[str]:
    """Every variable a compose document interpolates."""
    if isinstance(value, dict):
        return set().union(*(variables(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(variables(v) for v in value)) if value else set()
    if isinstance(value, str):
        return {m[1] or m[4] for m in _VAR.finditer(value) if m[0] != "$$"}
    return set()


class _Reset:
    """Compose's `!reset` tag: the merge removes the attribute."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node, deep=True)
    ),
)


def load_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader subclass: safe


def merge(base, override):
    """Compose's merge of an override file, for the attributes our override uses: mappings merge key by
    key, `!reset` removes, anything else replaces (sequences included)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return copy.deepcopy(override)


def without_resets(value):
    """The override file as a document on its own: `!reset` reads as null."""
    if isinstance(value, dict):
        return {k: without_resets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_resets(v) for v in value]
    return None if isinstance(value, _Reset) else value


def without_extensions(doc: dict) -> dict:
    """Top-level `x-` keys are allowed by the schema; drop them to look at the services alone."""
    return {k: v for k, v in doc.items() if not k.startswith("x-")}


def compose_model(*files: Path, env: dict[str, str] | None = None) -> dict:
    """The effective compose model: files merged in order, then interpolated from the env file."""
    doc: dict = {}
    for path in files:
        doc = merge(doc, load_yaml(path))
    return interpolate(doc, read_env_file() if env is None else env)


def compose_schema() -> dict:
    """The Compose Specification's schema as check-jsonschema (pinned in requirements/lock-cpu.txt) bundles
    it: check_jsonschema/builtin_schemas/vendor/compose-spec.json."""
    ref = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(ref.read_text())


def compose_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


# ------------------------------------------------------------------ the env file


def test_env_file_is_plain_and_holds_no_secret():
    env = read_env_file()
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"].startswith("/run/secrets/")
    for key in env:
        # a token may be named by a path, never given as a value
        assert not re.search(r"TOKEN$|SECRET|PASSWORD|API_KEY", key), key
    # every container path lies under a volume, a secret mount or the installed project
    for key, value in env.items():
        if value.startswith("/"):
            assert value.startswith(CONTAINER_ROOTS), (key, value)


def test_env_file_parser_rejects_what_compose_would_read_differently(tmp_path):
    for line in ['A="quoted"', "A=x # comment", "A=${B}", "A=has space", "lower=1", "A=1\nA=2"]:
        bad = tmp_path / "bad.env"
        bad.write_text(line + "\n")
        with pytest.raises(ValueError):
            read_env_file(bad)


def test_secrets_and_outputs_stay_out_of_git_and_images():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/docker/secrets/" in ignored and "/k8s/secrets/" in ignored
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    for entry in ("docker/secrets", "k8s/secrets", ".venv", "runs"):
        assert entry in dockerignore


def test_make_secrets_writes_private_tokens_once(tmp_path):
    out = tmp_path / "secrets"
    first = subprocess.run(["bash", REPO / "docker" / "make-secrets.sh", out], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    tokens = {p.name: p.read_text() for p in out.iterdir()}
    assert set(tokens) == {"ray_auth_token", "evaluator_token"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", t) for t in tokens.values())
    assert tokens["ray_auth_token"] != tokens["evaluator_token"]
    assert out.stat().st_mode & 0o777 == 0o700
    again = subprocess.run(["bash", REPO / "docker" / "make-secrets.sh", out], capture_output=True, text=True)
    assert again.returncode == 0 and "kept" in again.stdout
    assert {p.name: p.read_text() for p in out.iterdir()} == tokens
    forced = subprocess.run(
        ["bash", REPO / "docker" / "make-secrets.sh", "--force", out], capture_output=True
    )
    assert forced.returncode == 0
    assert (out / "ray_auth_token").read_text() != tokens["ray_auth_token"]


# ------------------------------------------------------------------ Dockerfiles


def test_dockerfiles_pass_hadolint():
    result = subprocess.run(
        [BIN / "hadolint", "--no-color", "--failure-threshold", "info", *DOCKERFILES],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install curl\nRUN pip install requests\n"
    )
    result = subprocess.run(
        [BIN / "hadolint", "--no-color", "--failure-threshold", "info", bad], capture_output=True, text=True
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3014", "DL3013"):  # latest tag, apt without -y, unpinned pip install
        assert rule in result.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_healthy_and_built_by_the_install_script(path):
    steps = dockerfile_instructions(path)
    kinds = [kind for kind, _ in steps]
    base = next(args for kind, args in steps if kind == "FROM")
    image, _, tag = base.partition(":")
    assert re.fullmatch(r"\d+\.\d+\.\d+-[a-z0-9.-]+", tag), f"base image not pinned to a release: {base}"
    # the last USER is numeric and not root (Kubernetes' runAsNonRoot needs a numeric uid)
    user = [args for kind, args in steps if kind == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user
    assert kinds.index("USER") < max(i for i, k in enumerate(kinds) if k == "RUN"), "installs as root"
    assert "HEALTHCHECK" in kinds and "healthcheck.py" in dict(steps)["HEALTHCHECK"]
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    stack = "cpu" if path.name.endswith("cpu") else "gpu"
    assert f"CHEXRL_STACK={stack} " in runs and "bash scripts/install_env.sh" in runs
    # step 1 installs exactly the requirement file the script uses for that stack
    script = (REPO / "scripts" / "install_env.sh").read_text()
    req = "requirements/lock-cpu.txt" if stack == "cpu" else "requirements/gpu.txt"
    assert req in runs and req in script
    if stack == "gpu":
        assert image.startswith("nvidia/cuda") and "vllm==0.32.0" in (REPO / req).read_text()
    # only named paths are copied, each exists, none is a secret or the whole context
    for kind, args in steps:
        if kind in ("COPY", "ADD"):
            assert kind == "COPY"
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for source in sources:
                assert source not in (".", "./") and "secret" not in source, source
                assert (REPO / source).exists(), source
        if kind in ("ENV", "ARG"):
            assert not re.search(r"TOKEN|SECRET|PASSWORD", args), args
    assert dict(steps)["ENTRYPOINT"] == '["/opt/chexrl/docker/entrypoint.sh"]'


def test_entrypoint_checks_secret_files_and_keeps_tokens_out_of_the_environment(tmp_path):
    token = tmp_path / "evaluator_token"
    token.write_text("abc123")
    env = {"PATH": "/usr/bin:/bin", "CHEXRL_EVALUATOR_TOKEN_FILE": str(token), "CHEXRL_EVALUATOR_TOKEN": "x"}
    shown = subprocess.run(
        ["sh", REPO / "docker" / "entrypoint.sh", "env"], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert f"CHEXRL_EVALUATOR_TOKEN_FILE={token}" in shown.stdout.splitlines()  # chexrl reads the file
    assert "abc123" not in shown.stdout and "CHEXRL_EVALUATOR_TOKEN=" not in shown.stdout
    env["CHEXRL_EVALUATOR_TOKEN_FILE"] = str(tmp_path / "missing")
    missing = subprocess.run(["sh", REPO / "docker" / "entrypoint.sh", "true"], env=env, capture_output=True)
    assert missing.returncode == 64 and b"not a readable" in missing.stderr


# ------------------------------------------------------------------ docker-compose


def test_compose_files_validate_against_the_compose_specification():
    # as written (check-jsonschema's own command line; it cannot read the override's `!reset` tag)
    cli = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert compose_errors(load_yaml(COMPOSE)) == []
    assert compose_errors(without_resets(load_yaml(COMPOSE_CPU))) == []
    # as compose sees them: interpolated from docker/chexrl.env, and the CPU override merged in
    assert compose_errors(compose_model(COMPOSE)) == []
    assert compose_errors(compose_model(COMPOSE, COMPOSE_CPU)) == []


def test_compose_schema_rejects_broken_files(tmp_path):
    good = load_yaml(COMPOSE)
    broken = copy.deepcopy(good)
    broken["services"]["evaluator"]["healthchek"] = broken["services"]["evaluator"].pop("healthcheck")
    assert any("healthchek" in e for e in compose_errors(broken))
    broken = copy.deepcopy(good)
    broken["services"]["ray-head"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = [1]
    assert compose_errors(broken)
    broken = copy.deepcopy(good)
    broken["services"]["grpo-job"]["depends_on"]["ray-head"]["condition"] = "service_ready"
    assert compose_errors(broken)
    broken = copy.deepcopy(good)
    broken["volumes"]["checkpoints"] = {"driverr": "local"}
    assert compose_errors(broken)
    # and the command-line check fails on a broken file too
    path = tmp_path / "docker-compose.yml"
    path.write_text(COMPOSE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    cli = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path], capture_output=True
    )
    assert cli.returncode != 0


def test_compose_takes_every_setting_from_the_env_file():
    env = read_env_file()
    raw = load_yaml(COMPOSE)
    assert variables(raw) <= set(env), variables(raw) - set(env)
    assert variables(load_yaml(COMPOSE_CPU)) <= set(env)
    for name, service in without_extensions(raw)["services"].items():
        assert service["env_file"] == ["docker/chexrl.env"], name
    with pytest.raises(KeyError):
        compose_model(COMPOSE, env={k: v for k, v in env.items() if k != "CHEXRL_RAY_DASHBOARD_PORT"})


def test_compose_wiring():
    env = read_env_file()
    model = compose_model(COMPOSE)
    services = model["services"]
    assert set(services) == SERVICES
    head, evaluator, job = services["ray-head"], services["evaluator"], services["grpo-job"]

    # one GPU, reserved for the Ray head only (rollout and training colocate there)
    assert head["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert "deploy" not in evaluator and "deploy" not in job
    cpu = compose_model(COMPOSE, COMPOSE_CPU)["services"]
    assert all("deploy" not in s for s in cpu.values())
    assert {s["build"]["dockerfile"] for s in cpu.values()} == {"docker/Dockerfile.cpu"}
    assert {s["image"] for s in cpu.values()} == {env["CHEXRL_CPU_IMAGE"]}

    # the head: dashboard with token authentication, the token from a compose secret (a file)
    assert head["command"][:4] == ["ray", "start", "--head", "--block"]
    assert f"--dashboard-port={env['CHEXRL_RAY_DASHBOARD_PORT']}" in head["command"]
    assert "--dashboard-host=0.0.0.0" in head["command"]
    token_secret = Path(env["RAY_AUTH_TOKEN_PATH"]).name
    assert env["RAY_AUTH_TOKEN_PATH"] == f"/run/secrets/{token_secret}"
    assert model["secrets"][token_secret] == {"file": f"docker/secrets/{token_secret}"}
    assert token_secret in head["secrets"] and token_secret in job["secrets"]
    assert token_secret not in evaluator["secrets"]
    for service in services.values():  # no token value anywhere in the environment
        assert not {"RAY_AUTH_TOKEN", "CHEXRL_EVALUATOR_TOKEN"} & set(service.get("environment", {}))

    # the evaluator: its own service, its token from a secret, reachable from the job by service name
    port = env["CHEXRL_EVALUATOR_PORT"]
    assert evaluator["command"][:2] == ["chexrl", "serve-evaluator"]
    assert evaluator["command"][2:] == ["--host", env["CHEXRL_EVALUATOR_HOST"], "--port", port]
    assert head["environment"]["CHEXRL_EVALUATOR_URL"] == f"http://evaluator:{port}"
    for service in (head, evaluator):
        secret = Path(service["environment"]["CHEXRL_EVALUATOR_TOKEN_FILE"]).name
        assert secret in service["secrets"] and model["secrets"][secret]["file"].startswith("docker/secrets/")
    assert {v["target"]: v["source"] for v in evaluator["volumes"]} == {
        env["CHEXRL_EVALUATOR_STATE_DIR"]: "evaluator-state"
    }

    # the one-shot job submitter: `ray job submit` to the head by name, once both are healthy
    assert job["command"][:5] == [
        "ray",
        "job",
        "submit",
        "--address",
        f"http://ray-head:{env['CHEXRL_RAY_DASHBOARD_PORT']}",
    ]
    assert job["command"][5:] == ["--", "python", "/opt/chexrl/docker/grpo_job.py"]
    assert job["depends_on"] == {
        "ray-head": {"condition": "service_healthy"},
        "evaluator": {"condition": "service_healthy"},
    }
    assert job["restart"] == "no"

    # volumes: models and data (read-only host directories), checkpoints and evaluator state (named)
    mounts = {v["target"]: v for v in head["volumes"]}
    assert mounts[env["CHEXRL_MODELS_DIR"]]["read_only"] and mounts[env["CHEXRL_DATA_DIR"]]["read_only"]
    assert mounts[env["CHEXRL_CHECKPOINTS_DIR"]] == {
        "type": "volume",
        "source": "checkpoints",
        "target": env["CHEXRL_CHECKPOINTS_DIR"],
    }
    assert set(model["volumes"]) == {"checkpoints", "evaluator-state", "ray-head-tmp"}
    assert head["configs"] == [{"source": "grpo", "target": env["CHEXRL_GRPO_CONFIG"]}]
    assert model["configs"]["grpo"] == {"file": "docker/grpo.yaml"}

    # health checks: the image's script, each role with its own URL
    for name in ("ray-head", "evaluator"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "/opt/chexrl/docker/healthcheck.py"]
    assert head["environment"]["CHEXRL_HEALTHCHECK_URL"].endswith(
        f":{env['CHEXRL_RAY_DASHBOARD_PORT']}/api/gcs_healthz"
    )
    assert evaluator["environment"]["CHEXRL_HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/healthz"

    # the Dockerfiles create (and give the non-root user) every volume mount point the env file names
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        for key in (
            "CHEXRL_MODELS_DIR",
            "CHEXRL_DATA_DIR",
            "CHEXRL_CHECKPOINTS_DIR",
            "CHEXRL_EVALUATOR_STATE_DIR",
        ):
            assert f" {env[key]}" in text, (dockerfile.name, key)
        assert f" {Path(env['CHEXRL_GRPO_CONFIG']).parent}" in text


MEMORY = re.compile(r"[1-9]\d*[kmg]")
# What the images install with apt, and why each is needed at run time (nothing for development).
APT_RUNTIME = {
    "python3": "the interpreter (GPU image; the CPU one starts from python:*)",
    "python3-venv": "the project's virtual environment",
    "python3-dev": "Triton compiles its launcher at run time against Python.h (GPU)",
    "gcc": "Triton compiles its launcher at run time (GPU)",
    "libc6-dev": "Triton's launcher links against libc (GPU)",
    "libnuma1": "vLLM",
    "wget": "KubeRay's default Ray probes",
    "ca-certificates": "TLS trust store",
}


def _apt_packages(path: Path) -> set[str]:
    runs = " ".join(args for kind, args in dockerfile_instructions(path) if kind == "RUN")
    found = set()
    for match in re.finditer(r"apt-get install ([^&;]*)", runs):
        found |= {w for w in match.group(1).split() if not w.startswith("-") and w != "\\"}
    return found


def test_compose_services_are_confined():
    """No capabilities, no privilege gain, CPU and memory limits, read-only roots (tmpfs or a volume for
    what each writes), in the GPU file and with the CPU overlay."""
    for files in ((COMPOSE,), (COMPOSE, COMPOSE_CPU)):
        services = compose_model(*files)["services"]
        for name, service in services.items():
            assert service["cap_drop"] == ["ALL"] and "cap_add" not in service, name
            assert "no-new-privileges:true" in service["security_opt"], name
            assert float(service["cpus"]) > 0 and MEMORY.fullmatch(service["mem_limit"]), name
            assert service["read_only"] is True, name
            assert not service.get("privileged") and service.get("network_mode") != "host", name
        for name in ("evaluator", "grpo-job"):
            assert any(t.startswith("/tmp:") for t in services[name]["tmpfs"]), name
            assert services[name]["pids_limit"] > 0
        head = services["ray-head"]
        assert {v["target"]: v["source"] for v in head["volumes"] if v["type"] == "volume"}[
            "/tmp"
        ] == "ray-head-tmp"
        assert any(t.startswith("/home/chexrl:") for t in head["tmpfs"])
    gpu, cpu = compose_model(COMPOSE)["services"], compose_model(COMPOSE, COMPOSE_CPU)["services"]
    assert float(cpu["ray-head"]["cpus"]) <= float(gpu["ray-head"]["cpus"])


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_hold_no_dev_tools_and_pin_their_base(path):
    steps = dockerfile_instructions(path)
    base = next(args for kind, args in steps if kind == "FROM")
    assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+-", base), base  # a digest or an exact release
    assert _apt_packages(path) <= set(APT_RUNTIME), _apt_packages(path) - set(APT_RUNTIME)
    # the [dev] extra install_env.sh adds for a checkout is removed in the same layer
    runs = [args for kind, args in steps if kind == "RUN" and "scripts/install_env.sh" in args]
    assert len(runs) == 1
    removed = set(runs[0].split("pip uninstall --yes", 1)[1].split())
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0] for req in dev}
    assert names <= removed, names - removed


def test_the_deployed_run_config_renders_and_validates():
    """docker/grpo.yaml, rendered by docker/grpo_job.py from the env the head has, is a valid run config."""
    sys.path.insert(0, str(REPO / "docker"))
    try:
        from grpo_job import render
    finally:
        sys.path.remove(str(REPO / "docker"))
    from chexrl.config import ChexrlConfig

    env = read_env_file()
    env.update(compose_model(COMPOSE)["services"]["ray-head"]["environment"])
    text = (REPO / "docker" / "grpo.yaml").read_text()
    cfg = ChexrlConfig.model_validate(yaml.safe_load(render(text, env)))
    assert cfg.grpo.evaluator_url == f"http://evaluator:{env['CHEXRL_EVALUATOR_PORT']}"
    assert cfg.grpo.run_dir.startswith(env["CHEXRL_CHECKPOINTS_DIR"] + "/")
    assert cfg.grpo.model.startswith(env["CHEXRL_MODELS_DIR"] + "/")
    assert env["CHEXRL_DATA_DIR"] + "/" in cfg.grpo.data
    with pytest.raises(SystemExit, match="CHEXRL_EVALUATOR_URL"):
        render(text, {k: v for k, v in env.items() if k != "CHEXRL_EVALUATOR_URL"})


def test_a_resubmitted_job_resumes_and_a_finished_one_does_nothing(tmp_path):
    sys.path.insert(0, str(REPO / "docker"))
    try:
        from grpo_job import plan
    finally:
        sys.path.remove(str(REPO / "docker"))
    from trainer.checkpoint import CheckpointError, save_checkpoint

    run_dir = tmp_path / "grpo"
    rendered = yaml.safe_dump({"grpo": {"run_dir": str(run_dir), "max_steps": 2}})
    config = str(run_dir / "job-config.yaml")
    assert plan(rendered) == (run_dir, ["chexrl", "grpo", "--config", config])
    save_checkpoint(run_dir / "checkpoints", 1, {}, {})
    assert plan(rendered) == (run_dir, ["chexrl", "grpo", "--config", config, "--resume"])
    save_checkpoint(run_dir / "checkpoints", 2, {}, {})
    assert plan(rendered) == (run_dir, None)
    # a checkpoint that lost its state file is an error, not a fresh run over the old one
    (run_dir / "checkpoints" / "step-000002" / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"has no state\.pt"):
        plan(rendered)
