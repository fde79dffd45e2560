"""The Helm chart, the image recipe and the CRD on a real kube-apiserver.

- helm lint / helm template (kubectl and helm from .ci/install-kube-tools.sh, run here when missing);
- the rendered Deployment is hardened and the RBAC least-privilege;
- the Dockerfile runs as non-root and names commands the package provides;
- against one loopback kube-apiserver (tests/kube/cluster.py, binaries from .ci/build-kube.sh): the CRD
  is Established, the chart passes a server-side dry run, the example applies, `kubectl explain` shows the
  descriptions, bad specs are rejected naming the field, and CEL keeps spec.model immutable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kompress"
CRD_FILE = ROOT / "crds" / "modeloptimizations.kompress.dev.yaml"
EXAMPLE = ROOT / "examples" / "minilm-int8.yaml"
INSTALL_SCRIPT = ROOT / ".ci" / "install-kube-tools.sh"
NAMESPACE = "kompress-system"
RELEASE = "kompress"


# --------------------------------------------------------------------------------------- tools


def _bin_dir() -> Path:
    cache = os.environ.get("KOMPRESS_CACHE") or str(Path.home() / ".cache" / "kompress")
    return Path(cache) / "bin"


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """kubectl and helm from $KOMPRESS_CACHE/bin, installed by .ci/install-kube-tools.sh when missing."""
    bins = _bin_dir()
    if not (_usable(bins / "kubectl") and _usable(bins / "helm")):
        res = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600,
                             check=False)
        if res.returncode != 0:
            pytest.fail(f"kubectl/helm missing from {bins} and .ci/install-kube-tools.sh failed "
                        f"(exit {res.returncode}); run it by hand:\n{res.stdout}\n{res.stderr}", pytrace=False)
        bins = Path(res.stdout.strip().splitlines()[-1])
    for name in ("kubectl", "helm"):
        if not _usable(bins / name):
            pytest.fail(f"{bins / name} missing: run .ci/install-kube-tools.sh", pytrace=False)
    return {"kubectl": str(bins / "kubectl"), "helm": str(bins / "helm")}


def run(argv: list[str], input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)


def helm_template(tools: dict[str, str], *sets: str) -> str:
    argv = [tools["helm"], "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        argv += ["--set", s]
    res = run(argv)
    assert res.returncode == 0, f"helm template {' '.join(sets)} failed:\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def rendered(tools: dict[str, str]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm_template(tools)) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# ----------------------------------------------------------------------------------------- lint


def test_helm_lint(tools: dict[str, str]) -> None:
    res = run([tools["helm"], "lint", "--strict", str(CHART)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == (
        "v2", "kompress", "0.1.0", "0.1.0")
    assert chart["kubeVersion"] == ">=1.28.0-0"


def test_default_render(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service", "ServiceAccount"]
    for doc in rendered:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_optional_resources(tools: dict[str, str]) -> None:
    docs = [d for d in yaml.safe_load_all(helm_template(
        tools, "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom",
        "dashboards.enabled=false")) if d]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
    assert not [d for d in docs if d["kind"] == "ConfigMap"]


def test_values_schema_rejects_bad_values(tools: dict[str, str]) -> None:
    for bad in ("runsUri=/local/path", "image.pullPolicy=Sometimes", "metrics.port=0", "noSuchValue=1"):
        res = run([tools["helm"], "template", RELEASE, str(CHART), "--set", bad])
        assert res.returncode != 0, f"values.schema.json accepted {bad}"
    helm_template(tools, "runsUri=s3://kompress-runs/prod", "engineImage=registry.example/kompress:0.1.0-cuda",
                  "jobTtlSecondsAfterFinished=3600")


# ------------------------------------------------------------------------------------ workloads


def test_deployment_is_hardened(rendered: list[dict[str, Any]]) -> None:
    dep = one(rendered, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert c["command"] == ["kopf", "run", "--standalone", "--all-namespaces", "-m", "kompress.operator.handlers",
                            "--liveness=http://0.0.0.0:8080/healthz"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http-metrics": 9090, "health": 8080}
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    env = {e["name"]: e for e in c["env"]}
    assert {"KOMPRESS_ENGINE_IMAGE", "KOMPRESS_RUNS_URI", "POD_NAMESPACE"} <= set(env)
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KOMPRESS_ENGINE_IMAGE"]["value"] == c["image"]  # the operator image unless overridden
    assert pod["serviceAccountName"] == one(rendered, "ServiceAccount")["metadata"]["name"]


def test_engine_image_and_runs_uri_values(tools: dict[str, str]) -> None:
    docs = [d for d in yaml.safe_load_all(helm_template(
        tools, "engineImage=registry.example/kompress:cuda", "runsUri=s3://runs/kompress")) if d]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KOMPRESS_ENGINE_IMAGE"] == "registry.example/kompress:cuda"
    assert env["KOMPRESS_RUNS_URI"] == "s3://runs/kompress"


def test_metrics_service(rendered: list[dict[str, Any]]) -> None:
    svc = one(rendered, "Service")
    dep = one(rendered, "Deployment")
    assert svc["spec"]["ports"] == [{"name": "http-metrics", "port": 9090, "targetPort": "http-metrics",
                                     "protocol": "TCP"}]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_dashboard_configmap(rendered: list[dict[str, Any]]) -> None:
    cm = one(rendered, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = cm["data"].values()
    dashboard = json.loads(text)
    assert dashboard == json.loads((CHART / "dashboards" / "kompress.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any("kompress_optimizations_total" in e for e in exprs)


# ----------------------------------------------------------------------------------------- RBAC


def test_rbac_least_privilege(rendered: list[dict[str, Any]]) -> None:
    role = one(rendered, "ClusterRole")
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    assert grants.pop(("kompress.dev", "modeloptimizations")) == {"get", "list", "watch", "patch"}
    assert grants.pop(("kompress.dev", "modeloptimizations/status")) == {"patch"}
    assert grants.pop(("kompress.dev", "modeloptimizations/finalizers")) == {"update"}
    assert grants.pop(("batch", "jobs")) == {"create", "get", "list", "watch", "delete"}
    assert grants.pop(("", "pods")) == {"list", "watch"}
    assert grants.pop(("", "events")) == {"create", "patch"}
    assert grants.pop(("events.k8s.io", "events")) == {"create", "patch"}
    assert grants.pop(("", "secrets")) == {"get"}  # never list/watch: only the Secret a spec names
    assert grants.pop(("apiextensions.k8s.io", "customresourcedefinitions")) == {"get", "list", "watch"}
    assert grants.pop(("", "namespaces")) == {"list", "watch"}
    assert not grants, f"unexpected grants: {grants}"
    binding = one(rendered, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", NAMESPACE)


# ------------------------------------------------------------------------------------- the image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instr = _dockerfile_instructions()
    engine = tomllib.loads((ROOT / "jobs" / "pyproject.toml").read_text())["project"]
    operator = tomllib.loads((ROOT / "operator" / "pyproject.toml").read_text())["project"]
    final_stage = instr[max(i for i, (w, _) in enumerate(instr) if w == "FROM"):]
    users = [rest for w, rest in final_stage if w == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} must be a numeric non-root uid (runAsNonRoot)"
    assert int(uid) == 65532
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in instr
    assert ("ENTRYPOINT", "[]") in final_stage
    (cmd,) = [json.loads(rest) for w, rest in final_stage if w == "CMD"]
    assert cmd == ["kompress", "--help"]
    assert cmd[0] in engine["scripts"]
    # Installed: the engine with the demo model for Jobs, and the operator distribution (kopf) for the Deployment.
    (extras_arg,) = [rest for w, rest in instr if w == "ARG" and rest.startswith("ENGINE_EXTRAS=")]
    extras = set(extras_arg.removeprefix("ENGINE_EXTRAS=").split(","))
    assert {"engine", "minilm"} <= extras
    assert extras <= set(engine["optional-dependencies"]), extras
    assert any(re.match(r"kopf\b", d) for d in operator["dependencies"]), "kopf is not an operator dependency"
    # the pinned dependencies from the project files first (a layer cached while only sources change), then
    # the two packages without dependencies
    deps, packages = [rest for w, rest in instr if w == "RUN" and "pip install" in rest]
    assert "-c constraints.txt" in deps and "./jobs[${ENGINE_EXTRAS}]" in deps and "./operator" in deps
    assert "--no-deps" in packages and "./jobs" in packages and "./operator" in packages


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", "tests", "**/kompress-out", "**/kompress-registry", "**/*.egg-info"} <= ignored
    copied = [rest.split()[0] for w, rest in _dockerfile_instructions() if w == "COPY" and "--from" not in rest]
    for src in copied:
        assert src.rstrip("/") not in ignored, f"{src} is both copied and ignored"


# ---------------------------------------------------------------------- a real kube-apiserver


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tools: dict[str, str]) -> Iterator[Any]:
    """One loopback kube-apiserver for this module, with the CRD applied and Established."""
    from kube.cluster import ClusterError, start_cluster

    try:
        c = start_cluster(tmp_path_factory.mktemp("kube-chart"))
    except ClusterError as err:
        pytest.fail(f"the loopback kube-apiserver did not start (run .ci/build-kube.sh): {err}", pytrace=False)
    try:
        res = kube(tools, c, "apply", "-f", str(CRD_FILE))
        assert res.returncode == 0, res.stderr
        for _ in range(20):  # `wait` fails outright while the new CRD has no status.conditions yet
            res = kube(tools, c, "wait", "--for=condition=Established", "--timeout=60s",
                       "crd/modeloptimizations.kompress.dev")
            if res.returncode == 0 or "accessor error" not in res.stderr:
                break
            time.sleep(0.5)
        assert res.returncode == 0, res.stderr
        # Discovery can lag Established by a moment.
        deadline = time.monotonic() + 30
        while kube(tools, c, "get", "mopt", "-A").returncode != 0:
            assert time.monotonic() < deadline, "modeloptimizations never showed up in discovery"
            time.sleep(0.5)
        yield c
    finally:
        c.stop()


def kube(tools: dict[str, str], c: Any, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return run([tools["kubectl"], f"--kubeconfig={c.kubeconfig}", "--request-timeout=60s", *args], input=input)


def mopt(name: str, techniques: Any, **spec: Any) -> str:
    doc = {"apiVersion": "kompress.dev/v1alpha1", "kind": "ModelOptimization",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"model": {"uri": "s3://models/m.onnx"}, "data": {"uri": "s3://data/d.npz"},
                    "techniques": techniques, **spec}}
    return yaml.safe_dump(doc)


@pytest.mark.kube
def test_chart_server_side_dry_run(tools: dict[str, str], cluster: Any) -> None:
    kube(tools, cluster, "create", "namespace", NAMESPACE)
    res = kube(tools, cluster, "apply", "--dry-run=server", "-f", "-", input=helm_template(tools))
    assert res.returncode == 0, res.stderr
    assert "deployment.apps/kompress created (server dry run)" in res.stdout


@pytest.mark.kube
def test_rbac_grants_on_the_server(tools: dict[str, str], cluster: Any) -> None:
    """Apply the chart's RBAC for real and ask the authorizer what the operator's ServiceAccount may do."""
    kube(tools, cluster, "create", "namespace", NAMESPACE)
    rbac = [d for d in yaml.safe_load_all(helm_template(tools))
            if d and d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    res = kube(tools, cluster, "apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    assert res.returncode == 0, res.stderr
    sa = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
    allowed = [("watch", "modeloptimizations.kompress.dev"), ("patch", "modeloptimizations.kompress.dev/status"),
               ("create", "jobs.batch"), ("delete", "jobs.batch"), ("create", "events"),
               ("get", "secrets"), ("list", "customresourcedefinitions.apiextensions.k8s.io")]
    denied = [("list", "secrets"), ("watch", "secrets"), ("delete", "modeloptimizations.kompress.dev"),
              ("create", "pods"), ("update", "jobs.batch"), ("create", "modeloptimizations.kompress.dev")]
    for verb, resource in allowed + denied:
        res = kube(tools, cluster, "auth", "can-i", verb, resource, "-n", "ml", f"--as={sa}")
        want = "yes" if (verb, resource) in allowed else "no"
        assert res.stdout.strip() == want, f"can-i {verb} {resource}: {res.stdout.strip()} {res.stderr}"


@pytest.mark.kube
def test_example_applies_and_defaults(tools: dict[str, str], cluster: Any) -> None:
    res = kube(tools, cluster, "apply", "-f", str(EXAMPLE))
    assert res.returncode == 0, res.stderr
    for other in sorted(EXAMPLE.parent.glob("*.yaml")):  # every shipped example is a valid resource
        res = kube(tools, cluster, "apply", "--dry-run=server", "-f", str(other))
        assert res.returncode == 0, f"{other.name}: {res.stderr}"
    res = kube(tools, cluster, "get", "mopt", "minilm-int8", "-n", "default", "-o", "json")
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    assert obj["spec"]["target"]["iterations"] == 100  # a CRD default, the same as pydantic's
    from kompress.jobs.spec.document import OptimizationSpec

    example = yaml.safe_load(EXAMPLE.read_text())["spec"]
    assert OptimizationSpec.model_validate(obj["spec"]) == OptimizationSpec.model_validate(example)
    res = kube(tools, cluster, "get", "mopt", "-n", "default")
    header = res.stdout.splitlines()[0].split()
    assert header[:3] == ["NAME", "PHASE", "MODEL"] and "PROMOTED" in header and "SPEEDUP" in header


@pytest.mark.kube
def test_explain_shows_descriptions(tools: dict[str, str], cluster: Any) -> None:
    res = kube(tools, cluster, "explain", "modeloptimization.spec.gates")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "Quality gates; all that are set must pass before promotion." in text
    assert "minSpeedup" in text and "Smallest allowed baseline/optimized ratio of median latency." in text


@pytest.mark.kube
@pytest.mark.parametrize(("name", "techniques", "field", "words"), [
    ("bad-sparsity", [{"prune": {"sparsity": 1.5}}], "spec.techniques[0].prune.sparsity", "less than 1"),
    ("two-keys", [{"prune": {}, "quantize": {}}], "spec.techniques[0]", "exactly one key"),
    ("no-key", [{}], "spec.techniques[0]", "exactly one key"),
    ("bad-enum", [{"quantize": {"method": "magic"}}], "spec.techniques[0].quantize.method", "Unsupported value"),
    ("two-students", [{"distill": {"student": {"layers": 3, "uri": "s3://m/s.onnx"}}}],
     "spec.techniques[0].distill.student", "set exactly one of student.layers or student.uri"),
])
def test_server_rejects_invalid_specs(tools: dict[str, str], cluster: Any, name: str, techniques: Any,
                                      field: str, words: str) -> None:
    res = kube(tools, cluster, "apply", "-f", "-", input=mopt(name, techniques))
    assert res.returncode != 0, f"{name} was accepted"
    assert field in res.stderr and words in res.stderr, res.stderr


@pytest.mark.kube
def test_server_takes_empty_techniques_only_for_a_conversion(tools: dict[str, str], cluster: Any) -> None:
    """techniques: [] converts a Keras/TensorFlow/scikit-learn model and nothing more: refused for an ONNX model."""
    doc = yaml.safe_load(mopt("convert-onnx", []))
    doc["spec"]["model"]["format"] = "onnx"
    res = kube(tools, cluster, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
    assert res.returncode != 0 and "conversion to ONNX alone" in res.stderr, res.stderr
    doc["spec"]["model"] = {"uri": "s3://models/m.keras", "format": "keras"}
    res = kube(tools, cluster, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
    assert res.returncode == 0, res.stderr


@pytest.mark.kube
def test_server_wants_techniques_or_search_not_both(tools: dict[str, str], cluster: Any) -> None:
    search = {"candidates": [{"techniques": [{"quantize": {}}]}], "objective": "size"}
    res = kube(tools, cluster, "apply", "-f", "-", input=mopt("both", [{"quantize": {}}], search=search))
    assert res.returncode != 0 and "exactly one of techniques" in res.stderr, res.stderr
    doc = yaml.safe_load(mopt("search-only", [], search=search))
    del doc["spec"]["techniques"]
    res = kube(tools, cluster, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
    assert res.returncode == 0, res.stderr


@pytest.mark.kube
def test_server_rejects_unknown_fields_and_negative_gpu(tools: dict[str, str], cluster: Any) -> None:
    res = kube(tools, cluster, "apply", "-f", "-", input=mopt("typo", [{"quantize": {"perchannel": True}}]))
    assert res.returncode != 0 and "perchannel" in res.stderr, res.stderr
    res = kube(tools, cluster, "apply", "-f", "-", input=mopt("gpu", [{"fp16": {}}], resources={"gpu": -1}))
    assert res.returncode != 0 and "spec.resources.gpu" in res.stderr, res.stderr


@pytest.mark.kube
def test_cel_immutability(tools: dict[str, str], cluster: Any) -> None:
    res = kube(tools, cluster, "apply", "-f", "-", input=mopt(
        "immutable", [{"quantize": {}}], promotion={"registry": "s3://reg", "modelName": "m", "policy": "manual"}))
    assert res.returncode == 0, res.stderr

    def patch(body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return kube(tools, cluster, "patch", "mopt", "immutable", "-n", "default", "--type=merge",
                    "-p", json.dumps({"spec": body}))

    res = patch({"model": {"uri": "s3://models/other.onnx"}})
    assert res.returncode != 0
    assert "spec.model is immutable; create a new ModelOptimization" in res.stderr, res.stderr
    res = patch({"techniques": [{"fp16": {}}]})
    assert res.returncode != 0 and "spec.techniques is immutable" in res.stderr, res.stderr
    res = patch({"target": {"batchSize": 8}})
    assert res.returncode != 0 and "spec.target is immutable" in res.stderr, res.stderr
    res = patch({"techniques": None, "search": {}})  # what is computed: a fixed pipeline never becomes a search
    assert res.returncode != 0 and "cannot switch between techniques and search" in res.stderr, res.stderr
    # Approval and gates stay editable (declarative approval from Git); so do resources and the Secret (more
    # memory after an OOM kill, a fixed Secret name): the operator replaces the running Job with a new one.
    res = patch({"promotion": {"approved": True}, "gates": {"minSpeedup": 2.0}})
    assert res.returncode == 0, res.stderr
    res = patch({"resources": {"memory": "8Gi"}, "storageSecretRef": {"name": "other-credentials"}})
    assert res.returncode == 0, res.stderr


@pytest.mark.kube
def test_status_subresource_keeps_what_the_operator_writes(tools: dict[str, str], cluster: Any) -> None:
    res = kube(tools, cluster, "apply", "-f", "-", input=mopt("with-status", [{"quantize": {}}]))
    assert res.returncode == 0, res.stderr
    now = "2026-01-01T00:00:00Z"
    status = {
        "observedGeneration": 1, "phase": "Succeeded", "jobName": "with-status-abc", "runKey": "abc123",
        "attempts": 1, "message": "promoted", "reportUri": "s3://runs/r/report.json",
        "promotedTo": "s3://reg/m/1", "promotedVersion": 1, "startedAt": now, "finishedAt": now,
        "conditions": [{"type": t, "status": "True", "reason": "Done", "message": "", "lastTransitionTime": now,
                        "observedGeneration": 1} for t in ("Accepted", "Ready")],
        "baseline": {"latencyP50Seconds": 0.017, "sizeBytes": 90000000, "cosineSimilarity": 1.0},
        "result": {"latencyP50Seconds": 0.008, "sizeBytes": 23000000, "speedup": 2.1, "sizeReduction": 3.9,
                   "accuracyDrop": 0.007, "energyMethod": "estimate"},
        "gates": {"passed": True, "failures": []},
    }
    from kompress.operator.status import ModelOptimizationStatus

    ModelOptimizationStatus.model_validate(status)  # what the operator's typed status model accepts
    path = "/apis/kompress.dev/v1alpha1/namespaces/default/modeloptimizations/with-status/status"
    stored = cluster.request("PATCH", path, {"status": status}, content_type="application/merge-patch+json")
    assert stored["status"] == status, "the status schema pruned or changed something the operator writes"
    res = kube(tools, cluster, "get", "mopt", "with-status", "-n", "default")
    row = res.stdout.splitlines()[1].split()
    assert "Succeeded" in row and "2.1" in row and "s3://reg/m/1" in row
