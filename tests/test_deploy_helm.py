"""The Helm chart: `helm lint` and rendering through Helm's own Go library (PyPI helm-python-sdk), every
rendered object validated against the Kubernetes OpenAPI schemas (kubernetes-validate), and the wiring
between objects (selectors, names, ports) checked on the rendered manifests."""

import base64
import shutil
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install -e '.[dev]' (helm-python-sdk)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")

CHART = Path(__file__).resolve().parents[1] / "helm" / "occupancy"
RELEASE = "demo"
GATEWAY, TRITON = f"{RELEASE}-occupancy-gateway", f"{RELEASE}-occupancy-triton"
# The oldest and newest Kubernetes releases the chart is checked against (Chart.yaml: kubeVersion >= 1.25).
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Custom resources whose schema kubernetes-validate does not carry: checked by the tests below instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

VARIANTS = {
    "defaults": {},
    "object-storage": {
        "gateway": {"apiKeys": ["k1", "k2"], "autoscaling": {"customMetric": {"enabled": True}}},
        "triton": {
            "modelRepository": {"url": "s3://models-bucket/occupancy", "credentialsSecret": "s3-creds"},
            "autoscaling": {"enabled": True},
            "models": ["demo-tiny", "flashocc-r50-256x704"],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    },
    "cpu-existing": {
        "gateway": {
            "existingSecret": "occ-keys",
            "autoscaling": {"enabled": False},
            "podDisruptionBudget": {"enabled": False},
        },
        "triton": {"gpus": 0, "modelRepository": {"pvc": {"existingClaim": "models"}}},
    },
    "no-triton": {
        "gateway": {"settings": {"OCC_BACKEND": "embedded"}},
        "triton": {"enabled": False},
        "serviceMonitor": {"enabled": True},
    },
    "ingress": {
        "gateway": {"ingress": {"enabled": True, "host": "occ.example.com",
                                "tls": [{"hosts": ["occ.example.com"], "secretName": "occ-tls"}]}},
    },
}


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace="occ", is_install=True)
    return [
        document
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def objects(values: dict) -> dict[tuple[str, str], dict]:
    return {(document["kind"], document["metadata"]["name"]): document for document in render(values)}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_is_clean(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace="occ", kube_version="v1.29.0")
    assert report["errors"] == []
    # Severity 1 is information (Chart.yaml has no icon); warnings (2) and errors (3) fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kubernetes", KUBERNETES_VERSIONS)
def test_rendered_objects_match_the_kubernetes_schemas(variant, kubernetes):
    documents = render(VARIANTS[variant])
    assert documents
    for document in documents:
        if (document["apiVersion"], document["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(document, kubernetes, strict=True)


def test_the_schema_check_can_fail():
    deployment = objects({})[("Deployment", GATEWAY)]
    container(deployment)["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_select_the_pods_they_mean(variant):
    rendered = objects(VARIANTS[variant])
    pods = {
        name: document["spec"]["template"]["metadata"]["labels"]
        for (kind, name), document in rendered.items()
        if kind == "Deployment"
    }
    for (kind, name), document in rendered.items():
        if kind == "Deployment":
            assert document["spec"]["selector"]["matchLabels"].items() <= pods[name].items()
        elif kind == "Service":
            assert document["spec"]["selector"].items() <= pods[name].items(), name
            ports = {port["name"] for port in container(rendered[("Deployment", name)])["ports"]}
            assert {port["targetPort"] for port in document["spec"]["ports"]} <= ports
        elif kind == "Ingress":
            (rule,) = document["spec"]["rules"]
            (path,) = rule["http"]["paths"]
            service = rendered[("Service", path["backend"]["service"]["name"])]
            ports = {port["name"] for port in service["spec"]["ports"]}
            assert path["backend"]["service"]["port"]["name"] in ports
        elif kind == "PodDisruptionBudget":
            assert document["spec"]["selector"]["matchLabels"].items() <= pods[GATEWAY].items()
        elif kind == "HorizontalPodAutoscaler":
            # The HPA owns the replica count: the Deployment it scales sets none.
            scaled = rendered[("Deployment", document["spec"]["scaleTargetRef"]["name"])]
            assert "replicas" not in scaled["spec"]
        elif kind == "ServiceMonitor":
            services = [
                document_
                for (kind_, _), document_ in rendered.items()
                if kind_ == "Service"
                and document["spec"]["selector"]["matchLabels"].items()
                <= document_["metadata"]["labels"].items()
            ]
            (service,) = services
            (endpoint,) = document["spec"]["endpoints"]
            assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
            assert endpoint["path"] == "/metrics"
            # The job label is the component, as in the compose Prometheus: the alert rules apply as they are.
            assert service["metadata"]["labels"][document["spec"]["jobLabel"]] in {"gateway", "triton"}


def test_an_ingress_routes_a_sequence_to_one_replica():
    ingress = objects(VARIANTS["ingress"])[("Ingress", GATEWAY)]
    assert ingress["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/upstream-hash-by":
                                                  "$http_x_sequence_id"}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ("Ingress", GATEWAY) not in objects({})
    plain = objects({"gateway": {"ingress": {"enabled": True, "hashSequences": False}}})
    assert "annotations" not in plain[("Ingress", GATEWAY)]["metadata"]
    kubernetes_validate.validate(plain[("Ingress", GATEWAY)], KUBERNETES_VERSIONS[0], strict=True)


def test_the_gateway_is_non_root_read_only_and_probed():
    rendered = objects({})
    deployment = rendered[("Deployment", GATEWAY)]
    pod = deployment["spec"]["template"]["spec"]
    gateway = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in gateway["volumeMounts"]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["limits"]["memory"]
    hpa = rendered[("HorizontalPodAutoscaler", GATEWAY)]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_the_gateway_reads_its_settings_and_keys():
    rendered = objects(VARIANTS["object-storage"])
    settings = rendered[("ConfigMap", GATEWAY)]["data"]
    # The gateway talks gRPC to this release's Triton Service.
    host, port = settings["OCC_TRITON_URL"].split(":")
    assert host == TRITON and int(port) in {
        p["port"] for p in rendered[("Service", TRITON)]["spec"]["ports"] if p["name"] == "grpc"
    }
    assert settings["OCC_BACKEND"] == "triton"
    secret = rendered[("Secret", GATEWAY)]
    assert base64.b64decode(secret["data"]["OCC_API_KEYS"]).decode() == "k1,k2"
    sources = container(rendered[("Deployment", GATEWAY)])["envFrom"]
    assert {"configMapRef": {"name": GATEWAY}} in sources and {"secretRef": {"name": GATEWAY}} in sources
    metric = rendered[("HorizontalPodAutoscaler", GATEWAY)]["spec"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "occ_requests_queued"


def test_existing_secret_and_no_keys():
    sources = container(objects(VARIANTS["cpu-existing"])[("Deployment", GATEWAY)])["envFrom"]
    assert {"secretRef": {"name": "occ-keys"}} in sources
    rendered = objects({})
    assert ("Secret", GATEWAY) not in rendered
    sources = container(rendered[("Deployment", GATEWAY)])["envFrom"]
    assert all("secretRef" not in source for source in sources)


def test_triton_gets_a_gpu_probes_and_the_claim():
    rendered = objects({})
    deployment = rendered[("Deployment", TRITON)]
    triton = container(deployment)
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--model-control-mode=explicit" in triton["args"] and "--load-model=demo-tiny" in triton["args"]
    assert "--model-repository=/models" in triton["args"]
    claim = f"{TRITON}-models"
    assert ("PersistentVolumeClaim", claim) in rendered
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in triton["volumeMounts"]


def test_triton_reads_object_storage_without_a_volume():
    rendered = objects(VARIANTS["object-storage"])
    deployment = rendered[("Deployment", TRITON)]
    triton = container(deployment)
    assert "--model-repository=s3://models-bucket/occupancy" in triton["args"]
    assert {"--load-model=demo-tiny", "--load-model=flashocc-r50-256x704"} <= set(triton["args"])
    assert {"secretRef": {"name": "s3-creds"}} in triton["envFrom"]
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in rendered)
    assert "models" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    hpa = rendered[("HorizontalPodAutoscaler", TRITON)]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_duration_us_per_request"


def test_triton_on_cpu_and_an_existing_claim():
    rendered = objects(VARIANTS["cpu-existing"])
    deployment = rendered[("Deployment", TRITON)]
    triton = container(deployment)
    assert "nvidia.com/gpu" not in triton["resources"].get("limits", {})
    assert "--allow-gpu-metrics=false" in triton["args"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in rendered)
    assert not any(kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler") for kind, _ in rendered)


def test_without_triton_only_the_gateway_is_deployed():
    rendered = objects(VARIANTS["no-triton"])
    assert {name for _, name in rendered} == {GATEWAY}
    assert ("ServiceMonitor", GATEWAY) in rendered
    assert "OCC_TRITON_URL" not in rendered[("ConfigMap", GATEWAY)]["data"]


def test_notes_tell_how_to_reach_the_gateway():
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render({}, name=RELEASE, namespace="occ", is_install=True)
    notes = rendered["occupancy/templates/NOTES.txt"]
    assert f"port-forward service/{GATEWAY} 8000:8000" in notes and "demo-tiny" in notes


def test_helm_lint_reports_a_bad_object_name(tmp_path):
    """The lint above can fail: a copy of the chart with an invalid object name is reported."""
    copy = tmp_path / "occupancy"
    shutil.copytree(CHART, copy)
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n"
    (copy / "templates" / "bad.yaml").write_text(bad)
    report = helm.lint(copy, strict=True)
    assert any(m["severity"] >= 2 and "Bad_Name" in m["error"] for m in report["messages"])


def test_triton_model_control_needs_the_key_the_gateway_holds():
    """Triton restricts exactly the protocols occupancy.triton_access names, with its header, to a key
    from a Secret; the gateway gets the same key from the same Secret. The key never appears in a pod
    spec, only a reference to the Secret."""
    from occupancy.triton_access import RESTRICTED_PROTOCOLS, TRITON_KEY_ENV, TRITON_KEY_HEADER

    rendered = objects({})
    secret_name = f"{TRITON}-key"
    reference = {"name": TRITON_KEY_ENV,
                 "valueFrom": {"secretKeyRef": {"name": secret_name, "key": TRITON_KEY_ENV}}}
    triton = container(rendered[("Deployment", TRITON)])
    expected = f"{','.join(RESTRICTED_PROTOCOLS)}:{TRITON_KEY_HEADER}=$({TRITON_KEY_ENV})"
    assert f"--grpc-restricted-protocol={expected}" in triton["args"]
    assert f"--http-restricted-api={expected}" in triton["args"]
    assert reference in triton["env"]
    assert reference in container(rendered[("Deployment", GATEWAY)])["env"]
    key = base64.b64decode(rendered[("Secret", secret_name)]["data"][TRITON_KEY_ENV]).decode()
    assert len(key) == 40 and key.isalnum()
    assert key not in yaml.safe_dump(rendered[("Deployment", TRITON)]) + yaml.safe_dump(
        rendered[("Deployment", GATEWAY)])
    # A random key per install (a fixed default would be everyone's key).
    assert base64.b64decode(objects({})[("Secret", secret_name)]["data"][TRITON_KEY_ENV]).decode() != key
    # An existing Secret instead: none is created, both containers refer to it.
    rendered = objects({"triton": {"restrictedKey": {"existingSecret": "my-triton-key"}}})
    assert ("Secret", secret_name) not in rendered
    assert container(rendered[("Deployment", TRITON)])["env"][0]["valueFrom"]["secretKeyRef"]["name"] \
        == "my-triton-key"


def test_only_the_gateway_reaches_triton():
    rendered = objects(VARIANTS["object-storage"])
    policy = rendered[("NetworkPolicy", TRITON)]["spec"]
    triton_pods = rendered[("Deployment", TRITON)]["spec"]["template"]["metadata"]["labels"]
    gateway_pods = rendered[("Deployment", GATEWAY)]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= triton_pods.items()
    assert policy["policyTypes"] == ["Ingress"]
    serving, metrics = policy["ingress"]
    (peer,) = serving["from"]
    assert peer["podSelector"]["matchLabels"].items() <= gateway_pods.items()
    assert not peer["podSelector"]["matchLabels"].items() <= triton_pods.items()
    assert {port["port"] for port in serving["ports"]} == {"http", "grpc"}
    assert [port["port"] for port in metrics["ports"]] == ["metrics"]  # scraped by Prometheus
    # The ports named are Triton's container ports.
    named = {port["name"] for port in container(rendered[("Deployment", TRITON)])["ports"]}
    assert {"http", "grpc", "metrics"} <= named
    assert ("NetworkPolicy", TRITON) not in objects({"triton": {"networkPolicy": {"enabled": False}}})


def test_the_secret_checksum_reveals_nothing_about_the_keys():
    """The annotation that rolls the gateway when its keys change is salted: it is not the SHA-256 of
    the keys or of the Secret, and two renders of the same keys without a cluster to read the salt from
    differ."""
    import hashlib

    values = {"gateway": {"apiKeys": ["k1", "k2"]}}
    first = objects(values)
    annotation = pod_annotations(first)["checksum/secret"]
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace="occ", is_install=True)
    secret_text = manifests["occupancy/templates/gateway-secret.yaml"]
    unsalted = {hashlib.sha256(text.encode()).hexdigest() for text in ("k1,k2", "k1", "k2", secret_text)}
    assert annotation not in unsalted
    assert pod_annotations(objects(values))["checksum/secret"] != annotation
    assert "occupancy/checksum-salt" in first[("Secret", GATEWAY)]["metadata"]["annotations"]
    # Keys from an existing Secret: the chart cannot see them, and no annotation pretends to.
    assert "checksum/secret" not in pod_annotations(objects(VARIANTS["cpu-existing"]))


def pod_annotations(rendered: dict) -> dict:
    return rendered[("Deployment", GATEWAY)]["spec"]["template"]["metadata"]["annotations"]
