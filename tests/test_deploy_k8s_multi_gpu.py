"""The KubeRay RayJobs for more than one GPU (k8s/multi-gpu/), checked offline like the one-GPU deployment
(tests/test_deploy_k8s.py): each RayJob against KubeRay's RayJob CRD schema vendored for the pinned commit
(its embedded cluster spec against the pinned RayCluster CRD's), the core kinds strictly against
Kubernetes' own schemas; the run config loads through chexrl's config loader and its layout fits the worker
groups (GPUs, CPUs, and the Ray custom resources that pin rollout workers and learner ranks to their pods);
pods run as non-root with requests and limits; Ray's token comes from KubeRay and the evaluator's from the
Secret; the settings, volumes and entry point are the base deployment's; the network policies let each job
run and nothing more. Each validator is also shown rejecting a broken manifest."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_deploy_files import REPO, read_env_file
from tests.test_deploy_k8s import (
    K8S,
    KUBE_DNS,
    NAMESPACE,
    OTHER_POD,
    allowed,
    by_kind,
    core_errors,
    crd_validator,
    generated_objects,
    manifests,
    schema_errors,
)
from tests.test_deploy_k8s import containers as base_containers

MULTI = K8S / "multi-gpu"
LAYOUTS = ("one-node", "two-nodes")
RAYJOB_CRD = K8S / "schemas" / "ray.io_rayjobs.v1.yaml"
PINNED = "017710c025a86af5225c0e68cd78fb06e2918296"  # the RayCluster CRD's commit (k8s/schemas/README.md)
RAYJOB_SOURCE = "43aff0c59df32660663c4193e58ffc1d5a385a99"  # the commit the RayJob CRD's lines are read from
ONE_GPU_RUN = ("app.kubernetes.io/component", "one-gpu-run")
SHARED_BASE_COMMAND = "kubectl apply -k k8s/ -n chexrl -l 'app.kubernetes.io/component!=one-gpu-run'"
JOB_ENTRY_POINT = "python /opt/chexrl/docker/grpo_job.py"
OPERATOR = ({"kubernetes.io/metadata.name": "kuberay-system"}, {"app.kubernetes.io/name": "kuberay-operator"})
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "labels", "resources", "configMapGenerator", "generatorOptions"}

# ------------------------------------------------------------------ what gets applied


def build(folder: Path) -> list[dict]:
    """What `kubectl kustomize` makes of a kustomization of k8s/multi-gpu/: its resources (files, and
    folders built the same way), its generated ConfigMaps, its labels on every object's metadata. Only the
    features these files use are modelled, and a kustomization using another one fails here;
    test_the_model_matches_kubectl_kustomize compares the model with kustomize itself."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(k) <= KUSTOMIZATION_KEYS, set(k) - KUSTOMIZATION_KEYS
    docs = []
    for entry in k.get("resources", []):
        path = folder / entry
        docs += build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        assert k["generatorOptions"] == {"disableNameSuffixHash": True}  # the RayJob names it
        data = {Path(f).name: (folder / f).read_text() for f in gen["files"]}
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        )
    for entry in k.get("labels", []):
        assert set(entry) == {"pairs"}  # metadata only: no selectors, no pod templates
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    return docs


def shared_base() -> list[dict]:
    """The base deployment as `kubectl apply -k k8s/ -l 'app.kubernetes.io/component!=one-gpu-run'` applies
    it (a `!=` selector also keeps the objects without the label)."""
    key, value = ONE_GPU_RUN
    return [d for d in manifests() + generated_objects() if d["metadata"].get("labels", {}).get(key) != value]


def rayjob(layout: str) -> dict:
    (job,) = [d for d in build(MULTI / layout) if d["kind"] == "RayJob"]
    return job


def rayjob_errors(doc: dict) -> list[str]:
    return schema_errors(crd_validator(RAYJOB_CRD, "rayjobs.ray.io"), doc)


def base_config() -> dict[str, str]:
    (config,) = [
        d for d in shared_base() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "chexrl-config"
    ]
    return config["data"]


def pod_specs(job: dict) -> dict[str, dict]:
    """Every pod template of a RayJob, by a readable name."""
    spec = job["spec"]
    out = {
        "submitter": spec["submitterPodTemplate"]["spec"],
        "ray-head": spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
    }
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        out[f"ray-worker-{group['groupName']}"] = group["template"]["spec"]
    return out


def containers(job: dict) -> dict[str, dict]:
    return {
        f"{pod}/{c['name']}": c
        for pod, spec in pod_specs(job).items()
        for c in spec.get("initContainers", []) + spec["containers"]
    }


# ------------------------------------------------------------------ the run config and its layout


def render_config(layout: str, tmp_path: Path):
    """The layout's run config as docker/grpo_job.py renders it on the job's head (from the settings of
    chexrl-config, which the head has in its environment), loaded by chexrl's own loader."""
    sys.path.insert(0, str(REPO / "docker"))
    try:
        from grpo_job import render
    finally:
        sys.path.remove(str(REPO / "docker"))
    from chexrl.config import load_config

    path = tmp_path / f"{layout}.yaml"
    path.write_text(render((MULTI / layout / "grpo.yaml").read_text(), base_config()))
    return load_config(path)


def quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_resources(value: str) -> dict[str, float]:
    """rayStartParams' `resources`, read as KubeRay reads it (surrounding quotes trimmed, then JSON)."""
    return json.loads(value.strip("'\"` "))


def ray_nodes(job: dict) -> list[dict[str, float]]:
    """The Ray resources of each worker pod as KubeRay starts it: num-cpus and num-gpus from rayStartParams,
    else from the container's limits; custom resources from rayStartParams' `resources`."""
    nodes = []
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        params = group["rayStartParams"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        node = {
            "CPU": quantity(params.get("num-cpus", limits["cpu"])),
            "GPU": quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
        }
        node.update(ray_resources(params["resources"]) if "resources" in params else {})
        nodes += [dict(node) for _ in range(group["replicas"])]
    return nodes


def layout_bundles(layout: str, workers: int, learners: int, rollout_resource, learner_resource):
    """The layout's placement bundles (chexrl.core.layout.plan_layout), each also asking one unit of the
    rollout resource when it holds a rollout worker and of the learner resource when it holds a rank."""
    from chexrl.core.layout import plan_layout

    plan = plan_layout(layout, workers, learners, gpus=True)
    bundles = [dict(b) for b in plan.bundles]
    for slots, resource in ((plan.workers, rollout_resource), (plan.learners, learner_resource)):
        for slot in slots if resource else ():
            bundles[slot.bundle].setdefault(resource, 1.0)
    return plan, bundles


def placeable(bundles: list[dict], nodes: list[dict]) -> bool:
    """Whether every bundle fits on some node, each node holding at most its resources (exhaustive)."""
    if not bundles:
        return True
    first, rest = bundles[0], bundles[1:]
    for i, node in enumerate(nodes):
        if all(node.get(k, 0.0) >= v for k, v in first.items()):
            left = {k: v - first.get(k, 0.0) for k, v in node.items()}
            if placeable(rest, [*nodes[:i], left, *nodes[i + 1 :]]):
                return True
    return False


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rayjob_validates_against_kuberay_crd_schema(layout):
    job = rayjob(layout)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert rayjob_errors(job) == []
    # KubeRay's own limits on the name: 47 characters (its cluster's name adds a suffix), a DNS-1035 label
    name = job["metadata"]["name"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_rayjob_validator_rejects_broken_manifests():
    job = rayjob("two-nodes")

    def broken(change) -> list[str]:
        doc = copy.deepcopy(job)
        change(doc["spec"])
        return rayjob_errors(doc)

    def workers(spec):
        return spec["rayClusterSpec"]["workerGroupSpecs"]

    def submit(spec):
        return spec["submitterPodTemplate"]["spec"]["containers"][0]

    assert any("shutdownAfterJobFinish" in e for e in broken(lambda s: s.update(shutdownAfterJobFinish=True)))
    assert any(
        "ttlSecondsAfterFinished" in e for e in broken(lambda s: s.update(ttlSecondsAfterFinished="1h"))
    )
    # the embedded cluster spec is checked against the pinned RayCluster CRD's spec ...
    assert any("groupName" in e for e in broken(lambda s: workers(s)[1].pop("groupName")))
    assert any("replicas" in e for e in broken(lambda s: workers(s)[0].update(replicas="one")))
    assert broken(lambda s: s["rayClusterSpec"]["authOptions"].update(mode="tokens"))  # not in the enum
    # ... which has ttlSecondsAfterIdle (minimum 0), a field of the pinned commit's CRD only
    assert broken(lambda s: s["rayClusterSpec"].update(ttlSecondsAfterIdle=600)) == []
    ttl = broken(lambda s: s["rayClusterSpec"].update(ttlSecondsAfterIdle=-1))
    assert any("ttlSecondsAfterIdle" in e for e in ttl)
    # and the submitter's pod template against Kubernetes' PodTemplateSpec
    assert any(
        "resourcs" in e for e in broken(lambda s: submit(s).update(resourcs=submit(s).pop("resources")))
    )
    doc = copy.deepcopy(job)
    doc["metadata"]["labelz"] = {}
    assert rayjob_errors(doc)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_core_kinds_validate_against_kubernetes_schemas(layout):
    docs = [d for d in build(MULTI / layout) if d["kind"] != "RayJob"]
    assert {d["kind"] for d in docs} == {"ConfigMap", "NetworkPolicy"}
    for doc in docs:
        assert core_errors(doc) is None, (doc["metadata"]["name"], core_errors(doc))
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "NetworkPolicy"))
    broken["spec"]["policyTypes"] = "Ingress"
    assert core_errors(broken)


def test_vendored_rayjob_crd_records_its_provenance():
    header, body = RAYJOB_CRD.read_text().split("---", 1)
    assert "ray-project/kuberay" in header and RAYJOB_SOURCE in header and PINNED in header
    assert "helm-chart/kuberay-operator/crds/ray.io_rayjobs.yaml" in header
    assert body.count("x-chexrl-elided: io.ray.v1.RayClusterSpec") == 1
    assert body.count("x-chexrl-elided: io.k8s.api.core.v1.PodTemplateSpec") == 1
    readme = (K8S / "schemas" / "README.md").read_text()
    assert "ray.io_rayjobs.v1.yaml" in readme and RAYJOB_SOURCE in readme and PINNED in readme


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_model_matches_kubectl_kustomize(layout):
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "this check needs kubectl (its built-in kustomize) on PATH"
    cmd = [kubectl, "kustomize", str(MULTI / layout)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout

    def key(doc):
        return doc["kind"], doc["metadata"]["name"]

    built = sorted((d for d in yaml.safe_load_all(out) if d), key=key)
    assert built == sorted(build(MULTI / layout), key=key)


# ------------------------------------------------------------------ the run and its layout


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("one-node", ("colocated", 4, 4)), ("two-nodes", ("split", 4, 4))],
)
def test_run_config_loads_and_is_the_one_gpu_run(layout, expected, tmp_path):
    cfg = render_config(layout, tmp_path)
    assert (cfg.grpo.layout, cfg.grpo.learners, cfg.rollout.num_workers) == expected
    # the one-GPU deployment's run (k8s/grpo.yaml), spread out: only the layout's keys and run_dir differ
    one_gpu = yaml.safe_load((K8S / "grpo.yaml").read_text())
    raw = yaml.safe_load((MULTI / layout / "grpo.yaml").read_text())
    assert raw["grpo"].pop("run_dir") != one_gpu["grpo"].pop("run_dir")
    for name in ("layout", "learners", "rollout_resource", "learner_resource"):
        raw["grpo"].pop(name, None)
    raw["rollout"].pop("num_workers")
    assert raw == one_gpu


def test_each_layout_has_its_own_run_directory(tmp_path):
    run_dirs = {render_config(layout, tmp_path).grpo.run_dir for layout in LAYOUTS}
    assert len(run_dirs) == len(LAYOUTS)
    assert all(d.startswith(base_config()["CHEXRL_CHECKPOINTS_DIR"] + "/") for d in run_dirs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_worker_groups_hold_the_layout(layout, tmp_path):
    cfg, job = render_config(layout, tmp_path), rayjob(layout)
    g, workers = cfg.grpo, cfg.rollout.num_workers
    plan, bundles = layout_bundles(g.layout, workers, g.learners, g.rollout_resource, g.learner_resource)
    nodes = ray_nodes(job)
    assert sum(n["GPU"] for n in nodes) == plan.gpus  # every GPU the layout asks for, none idle
    assert placeable(bundles, nodes), (bundles, nodes)
    # the head offers Ray nothing: every bundle goes to the GPU workers
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == head["num-gpus"] == "0"
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
        gpu = group["template"]["spec"]["containers"][0]["resources"]
        assert gpu["requests"]["nvidia.com/gpu"] == gpu["limits"]["nvidia.com/gpu"]
    # a layout one rollout worker and one learner rank larger does not fit the worker groups
    _, more = layout_bundles(g.layout, workers + 1, g.learners + 1, g.rollout_resource, g.learner_resource)
    assert not placeable(more, nodes)


def test_two_nodes_pin_rollout_workers_and_learner_ranks_to_their_pods(tmp_path):
    cfg, job = render_config("two-nodes", tmp_path), rayjob("two-nodes")
    g = cfg.grpo
    assert g.rollout_resource and g.learner_resource and g.rollout_resource != g.learner_resource
    plan, bundles = layout_bundles(
        g.layout, cfg.rollout.num_workers, g.learners, g.rollout_resource, g.learner_resource
    )
    groups = {grp["groupName"]: grp for grp in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    offered = {name: ray_resources(grp["rayStartParams"]["resources"]) for name, grp in groups.items()}
    assert offered == {"rollout": {g.rollout_resource: 4}, "learner": {g.learner_resource: 4}}
    pinned = {"rollout": (g.rollout_resource, plan.workers), "learner": (g.learner_resource, plan.learners)}
    for name, (resource, slots) in pinned.items():
        held = {s.bundle for s in slots}
        assert sum(b.get(resource, 0) for b in bundles) == len(held)
        # the group offering the resource covers every bundle pinned to it, with a GPU for each
        limits = groups[name]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert offered[name][resource] >= len(held) and limits["nvidia.com/gpu"] >= len(held), name
    # so no learner bundle fits on the rollout pod: the ranks share the learner pod
    rollout_pod = {"spec": {"rayClusterSpec": {"workerGroupSpecs": [groups["rollout"]]}}}
    assert not any(placeable([b], ray_nodes(rollout_pod)) for b in bundles if g.learner_resource in b)
    # the quoting some examples use, '"{\"r\": 4}"', is not JSON once KubeRay trims the quotes
    with pytest.raises(json.JSONDecodeError):
        ray_resources('"{\\"chexrl_learner\\": 4}"')


# ------------------------------------------------------------------ wiring


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_container_sets_requests_and_limits_and_runs_as_non_root(layout):
    job = rayjob(layout)
    for name, spec in pod_specs(job).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 1000, name
    for name, c in containers(job).items():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert c["image"] == read_env_file()["CHEXRL_IMAGE"], name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ray_s_token_comes_from_kuberay_and_no_token_from_anywhere_else(layout):
    job = rayjob(layout)
    # KubeRay generates Ray's token, sets it on every Ray container and the submitter, and follows the job
    # with it; a token set here would differ from the operator's
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    for name, c in containers(job).items():
        env = {v["name"]: v for v in c.get("env", [])}
        assert not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(env), name
        assert all("TOKEN" not in var or var.endswith("_FILE") for var in env), name  # a file's path only
        assert all("secretRef" not in e for e in c.get("envFrom", [])), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_evaluator_token_is_the_secret_s_file_on_the_head_only(layout):
    (secret,) = [d for d in shared_base() if d["kind"] == "Secret"]
    job = rayjob(layout)
    head = containers(job)["ray-head/ray-head"]
    path = Path({v["name"]: v for v in head["env"]}["CHEXRL_EVALUATOR_TOKEN_FILE"]["value"])
    (mount,) = [m for m in head["volumeMounts"] if m["mountPath"] == str(path.parent)]
    secrets = {
        pod: [v for v in spec.get("volumes", []) if "secret" in v] for pod, spec in pod_specs(job).items()
    }
    (volume,) = [v for v in secrets.pop("ray-head") if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "evaluator_token", "path": path.name}]
    assert volume["secret"]["defaultMode"] & 0o007 == 0 and mount["readOnly"] is True
    assert not any(secrets.values()), secrets  # the job's driver runs on the head; no other pod needs it


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_rayjob_runs_the_deployment_s_job_on_its_settings(layout):
    job, config = rayjob(layout), base_config()
    spec = job["spec"]
    assert spec["entrypoint"] == JOB_ENTRY_POINT
    assert " ".join(base_containers()["chexrl-grpo-submit/submit"]["command"][6:]) == JOB_ENTRY_POINT
    assert spec["submissionMode"] == "K8sJobMode" and spec["backoffLimit"] == 0
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    (cluster,) = by_kind("RayCluster")
    assert spec["rayClusterSpec"]["rayVersion"] == cluster["spec"]["rayVersion"]
    for name, c in containers(job).items():
        if name.startswith("ray-"):
            assert c["envFrom"] == [{"configMapRef": {"name": "chexrl-config"}}], name
    wait = containers(job)["submitter/wait-for-evaluator"]["command"]
    assert f"{config['CHEXRL_EVALUATOR_URL']}/healthz" in wait


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_rayjob_mounts_the_deployment_s_volumes_and_its_run_config(layout):
    job, config = rayjob(layout), base_config()
    pods = pod_specs(job)
    claims = {d["metadata"]["name"] for d in shared_base() if d["kind"] == "PersistentVolumeClaim"}
    for pod, spec in pods.items():
        volumes = spec.get("volumes", [])
        assert {
            v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
        } <= claims
        if pod.startswith("ray-"):
            paths = {m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]}
            assert {config["CHEXRL_MODELS_DIR"], config["CHEXRL_DATA_DIR"]} <= paths, pod
    mounts = {m["mountPath"]: m["name"] for m in containers(job)["ray-head/ray-head"]["volumeMounts"]}
    volumes = {v["name"]: v for v in pods["ray-head"]["volumes"]}
    checkpoints = volumes[mounts[config["CHEXRL_CHECKPOINTS_DIR"]]]
    assert checkpoints["persistentVolumeClaim"]["claimName"] == "chexrl-checkpoints"
    # the layout's run config, at $CHEXRL_GRPO_CONFIG on the head
    grpo = Path(config["CHEXRL_GRPO_CONFIG"])
    (generated,) = [d for d in build(MULTI / layout) if d["kind"] == "ConfigMap"]
    assert volumes[mounts[str(grpo.parent)]]["configMap"]["name"] == generated["metadata"]["name"]
    assert generated["data"] == {grpo.name: (MULTI / layout / "grpo.yaml").read_text()}


def test_the_shared_base_is_the_deployment_less_its_one_gpu_run():
    every = {(d["kind"], d["metadata"]["name"]) for d in manifests() + generated_objects()}
    shared = {(d["kind"], d["metadata"]["name"]) for d in shared_base()}
    assert every - shared == {("RayCluster", "chexrl"), ("Job", "chexrl-grpo-submit")}
    # the commands that apply it and a RayJob, as the docs and the kustomizations give them
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert SHARED_BASE_COMMAND in docs
    for layout in LAYOUTS:
        apply = f"kubectl apply -k k8s/multi-gpu/{layout} -n chexrl"
        text = (MULTI / layout / "kustomization.yaml").read_text()
        assert SHARED_BASE_COMMAND in text and apply in text and apply in docs, layout


# ------------------------------------------------------------------ network policies


def job_pods(job: dict) -> dict[str, tuple[dict, dict]]:
    """(namespace labels, pod labels) of a RayJob's pods and the evaluator: the templates' labels and the
    ones KubeRay adds (it names the job's cluster after the job, with a random suffix)."""
    spec = job["spec"]
    cluster = f"{job['metadata']['name']}-x7k2p"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    out = {
        "head": {**head, "ray.io/cluster": cluster, "ray.io/node-type": "head"},
        "submitter": spec["submitterPodTemplate"]["metadata"]["labels"],
    }
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        name = group["groupName"]
        kuberay = {"ray.io/cluster": cluster, "ray.io/node-type": "worker", "ray.io/group": name}
        out[f"worker-{name}"] = {**group["template"]["metadata"]["labels"], **kuberay}
    evaluator = next(d for d in shared_base() if d["kind"] == "Deployment")
    out["evaluator"] = evaluator["spec"]["template"]["metadata"]["labels"]
    return {pod: (NAMESPACE, labels) for pod, labels in out.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_network_policies_let_the_rayjob_run_and_nothing_more(layout):
    config = base_config()
    dashboard, evaluator_port = int(config["CHEXRL_RAY_DASHBOARD_PORT"]), int(config["CHEXRL_EVALUATOR_PORT"])
    ok = functools.partial(
        allowed, policies=[d for d in shared_base() + build(MULTI / layout) if d["kind"] == "NetworkPolicy"]
    )
    p = job_pods(rayjob(layout))
    head, submitter, evaluator = p["head"], p["submitter"], p["evaluator"]
    workers = [pod for name, pod in p.items() if name.startswith("worker-")]
    for a in (head, *workers):  # Ray pods with each other: GCS, dashboard, object manager, a worker port
        assert all(ok(a, b, port) for b in (head, *workers) for port in (6379, dashboard, 8076, 10005))
        assert ok(a, evaluator, evaluator_port)  # the driver and the workers reach the evaluator
        assert not ok(OTHER_POD, a, 6379) and not ok(OTHER_POD, a, dashboard)
        assert not ok(a, (KUBE_DNS[0], {"app": "anything"}), 443)  # nothing out of the namespace
    # the job API: the submitter, and the KubeRay operator from its namespace; nothing else of the head
    assert ok(submitter, head, dashboard) and ok(OPERATOR, head, dashboard)
    assert not ok(submitter, head, 6379) and not ok(OPERATOR, head, 6379)
    assert not any(ok(OPERATOR, w, dashboard) or ok(submitter, w, dashboard) for w in workers)
    assert ok(submitter, evaluator, evaluator_port)  # its health wait
    assert not ok(OTHER_POD, evaluator, evaluator_port) and not ok(evaluator, head, 6379)
    for pod in p.values():
        assert ok(pod, KUBE_DNS, 53, "UDP") and ok(pod, KUBE_DNS, 53, "TCP")
