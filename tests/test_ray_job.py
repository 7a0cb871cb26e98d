"""`ray job submit --working-dir . -- chexrl grpo --config FILE` against a real token-authenticated head,
as the README writes it; the same on a two-node cluster (a second node joined on loopback) with the
rollout worker and the learner ranks pinned to different nodes; and the private local Ray `chexrl grpo`
starts without a cluster."""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures.ray_head import REPO
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow

LOCAL_RAY = """
import json, os
from chexrl.commands.grpo import connect_ray
connect_ray()
import ray
info = ray._private.worker.global_worker.node.address_info
print(json.dumps({"webui_url": info.get("webui_url"), "auth_mode": os.environ.get("RAY_AUTH_MODE"),
                  "token": bool(os.environ.get("RAY_AUTH_TOKEN"))}))
ray.shutdown()
"""


def test_a_local_run_starts_ray_without_the_dashboard_and_with_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token
    result = subprocess.run(
        [sys.executable, "-c", LOCAL_RAY], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert not info["webui_url"]  # no dashboard, so no job API
    assert info == {"webui_url": info["webui_url"], "auth_mode": "token", "token": True}


@pytest.fixture
def readme_run():
    """A folder under the repository's git-ignored runs/ (where `make demo` writes) and a grpo.yaml at the
    repository's root, both as the README's recipe has them; removed afterwards."""
    name = f"test-readme-{secrets.token_hex(4)}"
    run = REPO / "runs" / name
    config = REPO / f"grpo-{name}.yaml"
    yield Path("runs") / name, config
    shutil.rmtree(run, ignore_errors=True)
    config.unlink(missing_ok=True)


def _readme_config(config: Path, rel: Path, evaluator_url: str, rollout: dict | None = None, **grpo) -> None:
    """A two-step run's grpo.yaml; `rollout` and `grpo` add to (or replace) its sections' keys."""
    data = {
        "sampling": {"n": 4, "max_tokens": 16},
        "grpo": {
            "model": str(rel / "sft" / "merged"),
            "data": f"mimic:{rel / 'data' / 'mimic'}",
            "limit": 8,
            "run_dir": str(rel / "grpo"),
            "run_id": "ray-job-test",
            "evaluator_url": evaluator_url,
            "max_steps": 2,
            "prompts_per_step": 2,
            "save_steps": 1,
            "reward": "nuanced",
            **grpo,
        },
    }
    if rollout is not None:
        data["rollout"] = rollout
    config.write_text(yaml.safe_dump(data))


def test_readme_recipe_without_base_dir_names_the_missing_path_and_the_fix(ray_head, readme_run):
    """The README's relative-path grpo.yaml with its paths under the git-ignored runs/: Ray's upload leaves
    them out, and the job says so at its start, naming the path, the reason and the fix."""
    rel, config = readme_run
    (REPO / rel / "sft" / "merged").mkdir(parents=True)  # there on the submitting side
    _readme_config(config, rel, "http://127.0.0.1:9")
    result = ray_head.submit(
        "--working-dir", ".", "--", "chexrl", "grpo", "--config", config.name, timeout=300
    )
    # the error as one line: typer draws it in a box, wrapped at 80 columns
    out = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"grpo.model '{rel}/sft/merged' does not exist" in out
    assert "gitignore" in out and '--base-dir "$PWD"' in out


def test_job_submit_needs_the_token(ray_head):
    refused = ray_head.submit("--", "python", "-c", "print(1)", token=None, timeout=120)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()
    wrong = ray_head.submit("--", "python", "-c", "print(1)", token="0" * 64, timeout=120)
    assert wrong.returncode != 0


def test_readme_recipe_runs_grpo_as_a_ray_job(
    ray_head, evaluator, tiny_gemma3_dir, synth_mimic_dir, readme_run
):
    """Exactly the README's recipe: the model and data under the git-ignored runs/, a grpo.yaml with paths
    relative to the repository, `ray job submit --working-dir . -- chexrl grpo --config grpo.yaml
    --base-dir "$PWD"` from the repository's root."""
    rel, config = readme_run
    shutil.copytree(tiny_gemma3_dir, REPO / rel / "sft" / "merged")
    shutil.copytree(synth_mimic_dir, REPO / rel / "data" / "mimic")
    _readme_config(config, rel, evaluator.url)
    run_dir = REPO / rel / "grpo"
    result = ray_head.submit(
        "--working-dir", ".", "--", "chexrl", "grpo", "--config", config.name, "--base-dir", str(REPO)
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout + result.stderr
    steps = read_metrics(run_dir)
    assert [s["step"] for s in steps] == [1, 2]
    # the job's rewards came from this evaluator: it holds the run's window of valid predictions
    window = httpx.get(f"{evaluator.url}/runs/ray-job-test/window").json()["window"]
    assert len(window) == sum(round(s["reward/valid_fraction"] * 8) for s in steps)
    assert (run_dir / "adapter-final" / "adapter_model.safetensors").exists()


@pytest.fixture
def learner_node(ray_head, tmp_path):
    """A second node joined to the module's head: 2 CPUs and 2 units of chexrl_learner (the head has the
    one unit of chexrl_rollout), its own raylet, object store and temp dir on this machine."""
    node = ray_head.add_node(tmp_path, num_cpus=2, resources={"chexrl_learner": 2})
    yield node
    node.stop()


def test_pinned_split_layout_runs_the_worker_on_the_head_and_the_ranks_on_the_other_node(
    ray_head, learner_node, evaluator, tiny_gemma3_dir, synth_mimic_dir, readme_run
):
    """grpo.layout split with grpo.rollout_resource / grpo.learner_resource on a two-node cluster: the
    rollout worker's bundle can only go to the head and the two learner ranks' bundles only to the other
    node, so the adapter rank 0 exports crosses between nodes by object reference, and the worker writes
    each version into its own node's adapter scratch (weight_sync lora) before vLLM loads it."""
    rel, config = readme_run
    shutil.copytree(tiny_gemma3_dir, REPO / rel / "sft" / "merged")
    shutil.copytree(synth_mimic_dir, REPO / rel / "data" / "mimic")
    rollout = {"model": str(rel / "sft" / "merged"), "num_workers": 1, "weight_sync": "lora"}
    pins = {"rollout_resource": "chexrl_rollout", "learner_resource": "chexrl_learner"}
    _readme_config(
        config, rel, evaluator.url, rollout, run_id="two-node-test", layout="split", learners=2, **pins
    )
    run_dir = REPO / rel / "grpo"
    result = ray_head.submit(
        "--working-dir", ".", "--", "chexrl", "grpo", "--config", config.name, "--base-dir", str(REPO)
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout + result.stderr
    assert [s["step"] for s in read_metrics(run_dir)] == [1, 2]
    placement = json.loads((run_dir / "placement.json").read_text())  # as the run ended
    assert placement["bundles"] == [
        {"CPU": 1, "chexrl_rollout": 1},
        {"CPU": 1, "chexrl_learner": 1},
        {"CPU": 1, "chexrl_learner": 1},
    ]
    (worker,) = [a for a in placement["actors"] if a["role"] == "rollout_worker"]
    ranks = [a for a in placement["actors"] if a["role"] == "learner_rank"]
    assert worker["node_id"] == ray_head.node_id != learner_node.node_id
    assert [(r["index"], r["node_id"]) for r in ranks] == [
        (0, learner_node.node_id),
        (1, learner_node.node_id),
    ]
    assert len({r["pid"] for r in ranks}) == 2
    # the last push reached the worker: it served v2 from its own folder in its node's /dev/shm scratch,
    # and removed that folder when the run closed it
    scratch = Path(worker["adapter_scratch"])
    assert worker["weight_sync"] == "lora" and worker["adapter_version"] == 2
    assert scratch.parent == Path("/dev/shm/chexrl-adapters") and scratch.name.startswith(
        f"worker-{worker['pid']}-"
    )
    assert worker["adapter_path"] == str(scratch / "v2") and not scratch.exists()
    # over Ray's 100 KiB inline limit (266 kB): each export lies in the learner node's object store and
    # the worker's node pulls it from there, not from a copy inlined through the driver
    assert (run_dir / "adapter-final" / "adapter_model.safetensors").stat().st_size > 100 * 1024
