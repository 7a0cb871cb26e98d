"""The KubeRay deployment (k8s/), checked offline: core kinds against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields are errors, as `kubectl apply --validate=strict`), the
RayCluster against KubeRay's CRD schema vendored at a pinned commit (k8s/schemas/), and the wiring: token
Secret, evaluator pinned to one replica, resources, volumes, and the same settings as docker/chexrl.env.
Each validator is also shown rejecting a broken manifest."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.test_deploy_files import REPO, read_env_file, variables

K8S = REPO / "k8s"
K8S_VERSION = "1.35.0"  # the k8s.io/api the vendored CRD's pod templates were generated from
CRD = K8S / "schemas" / "ray.io_rayclusters.v1.yaml"
K8S_DEFS = "https://kubernetes.io/api/_definitions.json"
RAYCLUSTER_SCHEMA = "urn:chexrl:schemas:ray.io_rayclusters.v1"  # the converted RayCluster CRD, by this name
# what each marker of the vendored CRDs stands for (k8s/schemas/README.md)
ELIDED = {
    "io.k8s.api.core.v1.PodTemplateSpec": f"{K8S_DEFS}#/$defs/io.k8s.api.core.v1.PodTemplateSpec",
    "io.ray.v1.RayClusterSpec": f"{RAYCLUSTER_SCHEMA}#/properties/spec",
}
MANIFESTS = [
    "configmap.yaml",
    "storage.yaml",
    "evaluator.yaml",
    "raycluster.yaml",
    "grpo-job.yaml",
    "networkpolicy.yaml",
]


def manifests() -> list[dict]:
    return [doc for name in MANIFESTS for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def generated_objects() -> list[dict]:
    """The ConfigMap and Secret kustomize generates (`kubectl apply -k k8s/`), with placeholder token values
    (the real ones are made by docker/make-secrets.sh and never committed)."""
    k = kustomization()
    out = []
    for gen in k["configMapGenerator"]:
        data = {Path(f).name: (K8S / f).read_text() for f in gen["files"]}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for gen in k["secretGenerator"]:
        data = {f.split("=", 1)[0]: "cGxhY2Vob2xkZXI=" for f in gen["files"]}
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": gen["name"]},
                "type": gen["type"],
                "data": data,
            }
        )
    return out


# ------------------------------------------------------------------ KubeRay's CRD as a JSON schema


def _k8s_definitions() -> dict:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return json.loads((root / f"v{K8S_VERSION}-local-strict" / "_definitions.json").read_text())


def _convert(node: dict) -> dict:
    """A structural OpenAPI v3 schema node of a CRD -> JSON Schema, strict like the API server's field
    validation: an object with `properties` and no `additionalProperties` (nor
    x-kubernetes-preserve-unknown-fields) rejects unknown fields. CEL rules (x-kubernetes-validations) are
    not evaluated."""
    if "x-chexrl-elided" in node:  # see the vendored file's header: the schema it stands for instead
        return {"$ref": ELIDED[node["x-chexrl-elided"]]}
    out = {k: v for k, v in node.items() if not k.startswith("x-") and k not in ("nullable", "default")}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if "properties" in node:
        out["properties"] = {k: _convert(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"])
    if "items" in node:
        out["items"] = _convert(node["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [_convert(s) for s in node[key]]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(path: Path, name: str) -> dict:
    """The ray.io/v1 schema of a vendored CRD as a JSON schema of the whole object."""
    crd = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    assert crd["kind"] == "CustomResourceDefinition" and crd["metadata"]["name"] == name
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _convert(version["schema"]["openAPIV3Schema"])
    # the API server validates every object's metadata as ObjectMeta
    schema["properties"]["metadata"] = {
        "$ref": f"{K8S_DEFS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return schema


def crd_validator(path: Path, name: str) -> jsonschema.Draft202012Validator:
    """A validator of one vendored CRD; the schemas its markers stand for resolve through the registry."""
    registry = Registry().with_resources(
        [
            (K8S_DEFS, Resource.from_contents(_k8s_definitions())),
            (RAYCLUSTER_SCHEMA, DRAFT202012.create_resource(crd_schema(CRD, "rayclusters.ray.io"))),
        ]
    )
    return jsonschema.Draft202012Validator(crd_schema(path, name), registry=registry)


def raycluster_validator() -> jsonschema.Draft202012Validator:
    return crd_validator(CRD, "rayclusters.ray.io")


def schema_errors(validator: jsonschema.Draft202012Validator, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def raycluster_errors(doc: dict) -> list[str]:
    return schema_errors(raycluster_validator(), doc)


def core_errors(doc: dict) -> str | None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(map(str, exc.path))}: {exc.message}"
    return None


def pod_specs() -> dict[str, dict]:
    """Every pod template of the deployment, by a readable name."""
    out = {}
    for doc in manifests():
        if doc["kind"] == "RayCluster":
            out["ray-head"] = doc["spec"]["headGroupSpec"]["template"]["spec"]
            for group in doc["spec"]["workerGroupSpecs"]:
                out[f"ray-worker-{group['groupName']}"] = group["template"]["spec"]
        elif doc["kind"] in ("Deployment", "Job"):
            out[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return out


def containers() -> dict[str, dict]:
    return {
        f"{pod}/{c['name']}": c
        for pod, spec in pod_specs().items()
        for c in spec.get("initContainers", []) + spec["containers"]
    }


# ------------------------------------------------------------------ schemas


def test_core_kinds_validate_against_kubernetes_schemas():
    docs = [d for d in manifests() if d["kind"] != "RayCluster"] + generated_objects()
    assert {d["kind"] for d in docs} == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "Job",
        "Secret",
        "NetworkPolicy",
    }
    for doc in docs:
        assert core_errors(doc) is None, (doc["kind"], doc["metadata"]["name"], core_errors(doc))


def test_raycluster_validates_against_kuberay_crd_schema():
    (cluster,) = by_kind("RayCluster")
    assert raycluster_errors(cluster) == []


def test_validators_reject_broken_manifests():
    (cluster,) = by_kind("RayCluster")
    broken = copy.deepcopy(cluster)
    broken["spec"]["workerGroupSpec"] = broken["spec"].pop("workerGroupSpecs")  # misspelled KubeRay field
    assert any("workerGroupSpec" in e for e in raycluster_errors(broken))
    broken = copy.deepcopy(cluster)
    broken["spec"]["workerGroupSpecs"][0]["replicas"] = "one"  # wrong type
    assert any("replicas" in e for e in raycluster_errors(broken))
    broken = copy.deepcopy(cluster)
    broken["spec"]["workerGroupSpecs"][0].pop("groupName")  # a required field
    assert any("groupName" in e for e in raycluster_errors(broken))
    broken = copy.deepcopy(cluster)
    broken["spec"]["authOptions"] = {"mode": "tokens"}  # not in the enum
    assert raycluster_errors(broken)
    broken = copy.deepcopy(cluster)
    head = broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["resourcs"] = head.pop("resources")  # misspelled inside the pod template (Kubernetes' schema)
    assert any("resourcs" in e for e in raycluster_errors(broken))
    broken = copy.deepcopy(cluster)
    broken["metadata"]["labelz"] = {}
    assert raycluster_errors(broken)

    (deployment,) = by_kind("Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    assert "replica" in (core_errors(broken) or "")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    assert core_errors(broken)
    (job,) = by_kind("Job")
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["restartPolicy"] = ["Never"]
    assert core_errors(broken)


def test_vendored_crd_records_its_provenance():
    text = CRD.read_text()
    header = text.split("---", 1)[0]
    assert "ray-project/kuberay" in header
    assert "017710c025a86af5225c0e68cd78fb06e2918296" in header
    assert "helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml" in header
    body = text.split("---", 1)[1]
    assert body.count("x-chexrl-elided: io.k8s.api.core.v1.PodTemplateSpec") == 2
    readme = (K8S / "schemas" / "README.md").read_text()
    assert "017710c025a86af5225c0e68cd78fb06e2918296" in readme


# ------------------------------------------------------------------ wiring


def test_kustomization_applies_every_manifest():
    k = kustomization()
    assert k["resources"] == MANIFESTS
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(
        [*MANIFESTS, "kustomization.yaml", "grpo.yaml"]
    )
    assert k["generatorOptions"]["disableNameSuffixHash"] is True  # the RayCluster refers to names


def test_every_container_sets_requests_and_limits():
    found = containers()
    assert len(found) == 5
    for name, c in found.items():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
    gpu = found["ray-worker-gpu/ray-worker"]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == 1


def test_pods_run_as_non_root():
    for name, spec in pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 1000, name
    for name, c in containers().items():
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_evaluator_is_pinned_to_one_replica():
    (deployment,) = by_kind("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    head_comment = (K8S / "evaluator.yaml").read_text().split("apiVersion", 1)[0]
    assert "One replica" in head_comment and "Do not scale" in head_comment
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v]
    assert claims == ["chexrl-evaluator-state"]


def test_tokens_come_from_the_secret_and_only_from_it():
    secret = next(o for o in generated_objects() if o["kind"] == "Secret")
    for name, c in containers().items():
        for var in c.get("env", []):
            if "TOKEN" in var["name"] and not var["name"].endswith("_FILE"):  # a file's path: below
                assert "value" not in var, (name, var["name"])
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["data"], (name, ref)
    config = by_kind("ConfigMap")[0]["data"]
    assert config["RAY_AUTH_MODE"] == "token"
    for name, c in containers().items():
        if name.startswith("ray-") or name.endswith("/submit"):  # every Ray process: token mode, the token
            names = {v["name"]: v for v in c.get("env", [])}
            from_config = any(
                e.get("configMapRef", {}).get("name") == "chexrl-config" for e in c.get("envFrom", [])
            )
            assert names.get("RAY_AUTH_MODE", {}).get("value") == "token" or from_config, name
            assert names["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "ray_auth_token", name
    # the evaluator token: a file of the Secret (the job's driver runs on the head), never a variable
    for name in ("ray-head/ray-head", "chexrl-evaluator/evaluator"):
        env = {v["name"]: v for v in containers()[name]["env"]}
        assert "CHEXRL_EVALUATOR_TOKEN" not in env, name
        path = Path(env["CHEXRL_EVALUATOR_TOKEN_FILE"]["value"])
        (mount,) = [m for m in containers()[name]["volumeMounts"] if m["mountPath"] == str(path.parent)]
        (volume,) = [v for v in pod_specs()[name.split("/")[0]]["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"], name
        assert volume["secret"]["items"] == [{"key": "evaluator_token", "path": path.name}], name
        assert volume["secret"]["defaultMode"] & 0o007 == 0 and mount["readOnly"] is True, name


def test_settings_match_the_compose_env_file():
    env = read_env_file()
    config = by_kind("ConfigMap")[0]["data"]
    for key, value in config.items():
        if key != "CHEXRL_EVALUATOR_URL":  # the only address that differs: the Service name
            assert env[key] == value, key
    # the run config is the compose one, and everything it needs is in the ConfigMap
    grpo = (K8S / "grpo.yaml").read_text()
    assert grpo == (REPO / "docker" / "grpo.yaml").read_text()
    assert variables(yaml.safe_load(grpo)) <= set(config)
    # the evaluator Service answers where the ConfigMap says, on the port the container listens on
    service = by_kind("Service")[0]
    port = service["spec"]["ports"][0]["port"]
    assert config["CHEXRL_EVALUATOR_URL"] == f"http://{service['metadata']['name']}:{port}"
    assert str(port) == config["CHEXRL_EVALUATOR_PORT"]
    evaluator = containers()["chexrl-evaluator/evaluator"]
    assert evaluator["args"][-2:] == ["--port", config["CHEXRL_EVALUATOR_PORT"]]
    assert evaluator["volumeMounts"][0]["mountPath"] == config["CHEXRL_EVALUATOR_STATE_DIR"]
    # the submitter talks to KubeRay's head service (<cluster>-head-svc) on the dashboard port
    (cluster,) = by_kind("RayCluster")
    head_url = f"http://{cluster['metadata']['name']}-head-svc:{config['CHEXRL_RAY_DASHBOARD_PORT']}"
    submit = containers()["chexrl-grpo-submit/submit"]
    assert submit["command"] == [
        "ray",
        "job",
        "submit",
        "--address",
        head_url,
        "--",
        "python",
        "/opt/chexrl/docker/grpo_job.py",
    ]
    compose_job = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grpo-job"]["command"]
    assert submit["command"][5:] == compose_job[5:]  # the same job entry point as docker-compose
    wait = containers()["chexrl-grpo-submit/wait-for-services"]["command"]
    assert f"{head_url}/api/gcs_healthz" in wait and f"{config['CHEXRL_EVALUATOR_URL']}/healthz" in wait


def test_ray_cluster_layout():
    (cluster,) = by_kind("RayCluster")
    config = by_kind("ConfigMap")[0]["data"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert "ray[default]==2.60.0" in (REPO / "pyproject.toml").read_text()
    # actors (vLLM rollout worker, trainer) go to the GPU worker: the head offers no CPUs
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    mounts = {m["mountPath"]: m["name"] for m in containers()["ray-head/ray-head"]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_specs()["ray-head"]["volumes"]}
    assert (
        volumes[mounts[config["CHEXRL_CHECKPOINTS_DIR"]]]["persistentVolumeClaim"]["claimName"]
        == "chexrl-checkpoints"
    )
    grpo_dir = str(Path(config["CHEXRL_GRPO_CONFIG"]).parent)
    assert volumes[mounts[grpo_dir]]["configMap"]["name"] == "chexrl-grpo-config"
    assert Path(config["CHEXRL_GRPO_CONFIG"]).name in kustomization()["configMapGenerator"][0]["files"]
    for pod in ("ray-head", "ray-worker-gpu"):
        paths = {m["mountPath"] for c in pod_specs()[pod]["containers"] for m in c["volumeMounts"]}
        assert {config["CHEXRL_MODELS_DIR"], config["CHEXRL_DATA_DIR"]} <= paths, pod
    claims = {d["metadata"]["name"] for d in by_kind("PersistentVolumeClaim")}
    assert claims == {"chexrl-checkpoints", "chexrl-evaluator-state", "chexrl-models", "chexrl-data"}


def test_images_are_the_one_docker_builds():
    env = read_env_file()
    for name, c in containers().items():
        assert c["image"] == env["CHEXRL_IMAGE"], name


# ------------------------------------------------------------------ network policies

NAMESPACE = {"kubernetes.io/metadata.name": "chexrl"}
KUBE_DNS = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})
OTHER_POD = (NAMESPACE, {"app": "anything-else"})  # any other pod of the namespace


def pods() -> dict[str, tuple[dict, dict]]:
    """(namespace labels, pod labels) of each pod: the templates' labels, and the ones KubeRay adds."""
    (cluster,) = by_kind("RayCluster")
    name = cluster["metadata"]["name"]
    out = {
        "ray-head": {"ray.io/cluster": name, "ray.io/node-type": "head"},
        "ray-worker": {"ray.io/cluster": name, "ray.io/node-type": "worker", "ray.io/group": "gpu"},
    }
    for doc in manifests():
        if doc["kind"] in ("Deployment", "Job"):
            out[doc["metadata"]["name"]] = doc["spec"]["template"]["metadata"]["labels"]
    return {pod: (NAMESPACE, labels) for pod, labels in out.items()}


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is modelled here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict, ns_labels: dict, pod_labels: dict) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}, peer  # no ipBlock: no address outside pods
    if "namespaceSelector" in peer:
        ns_ok = _matches(peer["namespaceSelector"], ns_labels)
    else:
        ns_ok = ns_labels == NAMESPACE  # a podSelector alone means the policy's own namespace
    return ns_ok and _matches(peer.get("podSelector", {}), pod_labels)


def _direction_allows(
    direction: str, own: tuple, peer: tuple, port: int, protocol: str, policies: list[dict]
) -> bool:
    """Kubernetes' rule: a pod no policy selects for `direction` is open; a selected one admits what any
    rule of any selecting policy admits (peers and ports ANDed within a rule, rules ORed)."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    if own[0] != NAMESPACE:
        return True  # other namespaces have no policy of ours
    selecting = [
        p["spec"]
        for p in policies
        if direction in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], own[1])
    ]
    if not selecting:
        return True
    for spec in selecting:
        for rule in spec.get(key, []):
            peers = rule.get(peers_key)
            ports = rule.get("ports")
            if (peers is None or any(_peer_matches(x, *peer) for x in peers)) and (
                ports is None
                or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)
            ):
                return True
    return False


def allowed(
    src: tuple, dst: tuple, port: int, protocol: str = "TCP", policies: list[dict] | None = None
) -> bool:
    """Whether `src` reaches `dst` under `policies` (default: those of k8s/networkpolicy.yaml)."""
    policies = by_kind("NetworkPolicy") if policies is None else policies
    return _direction_allows("Egress", src, dst, port, protocol, policies) and _direction_allows(
        "Ingress", dst, src, port, protocol, policies
    )


def test_network_policies_deny_by_default_and_allow_only_what_the_job_needs():
    p = pods()
    head, worker, evaluator, submit = (
        p["ray-head"],
        p["ray-worker"],
        p["chexrl-evaluator"],
        p["chexrl-grpo-submit"],
    )
    config = by_kind("ConfigMap")[0]["data"]
    dashboard, evaluator_port = int(config["CHEXRL_RAY_DASHBOARD_PORT"]), int(config["CHEXRL_EVALUATOR_PORT"])
    # a default deny for every pod, both directions
    assert any(
        x["spec"]["podSelector"] == {} and set(x["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not x["spec"].get("ingress") and not x["spec"].get("egress")
        for x in by_kind("NetworkPolicy")
    )  # fmt: skip
    # Ray pods with each other: GCS, dashboard, object manager, a worker port
    for port in (6379, dashboard, 8076, 10005):
        assert allowed(head, worker, port) and allowed(worker, head, port), port
    # the job's driver (on the head) and the workers reach the evaluator; the submitter the job API
    assert allowed(head, evaluator, evaluator_port) and allowed(worker, evaluator, evaluator_port)
    assert allowed(submit, head, dashboard) and allowed(submit, evaluator, evaluator_port)  # its health wait
    # and nothing else: no other pod reaches Ray or the evaluator, the submitter not GCS
    for target, port in ((head, 6379), (head, dashboard), (worker, 10005), (evaluator, evaluator_port)):
        assert not allowed(OTHER_POD, target, port), (target, port)
    assert not allowed(submit, head, 6379) and not allowed(submit, worker, dashboard)
    assert not allowed(evaluator, head, 6379) and not allowed(evaluator, head, dashboard)
    assert not allowed(head, OTHER_POD, 443) and not allowed(evaluator, OTHER_POD, 443)
    assert not allowed(worker, (KUBE_DNS[0], {"app": "anything"}), 443)  # nothing out of the namespace
    # every pod resolves names through the cluster DNS
    for pod in p.values():
        assert allowed(pod, KUBE_DNS, 53, "UDP") and allowed(pod, KUBE_DNS, 53, "TCP")
    # each label the policies select on is one a pod of the deployment carries
    for policy in by_kind("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert selector == {} or any(_matches(selector, labels) for _, labels in p.values()), policy
