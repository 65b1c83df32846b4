"""The Helm chart in deploy/helm/trainmon, checked offline (no cluster can run here).

`helm lint --strict`, then `helm template` with three value sets (the defaults, every option on in
ci/full-values.yaml, and a GPU-less variant), and every rendered object against the Kubernetes 1.33
schemas (kubernetes-validate, strict: unknown fields are errors). On top, what a schema cannot see:
the agent's node access, pod security of every container, secrets kept out of ConfigMaps and env
values, every referenced ConfigMap and Secret present (and made before the hook job that uses it),
selectors that match their pods, every `trainmon` command line accepted by trainmon's own parser,
and every rendered trainmon.toml accepted by trainmon's settings loader with its *_file paths mounted.

helm comes from `make helm` (deploy/helm/install-helm.sh); without it these tests skip, or fail
under CI=true.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from trainmon import settings as settings_module
from trainmon.cli import build_parser

try:
    import kubernetes_validate
except ImportError:  # in the test extra; reported by the `validator` fixture, not at collection
    kubernetes_validate = None

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "trainmon"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
PIPELINE = ROOT / "stream_processors" / "pipeline.yml"
HELM_VERSION = "v4.3.2"  # deploy/helm/install-helm.sh
KUBERNETES = "1.33"
RELEASE, NAMESPACE = "tm", "ml"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    "full": ["-f", str(FULL_VALUES), "--set-file", f"processors.pipeline={PIPELINE}"],
    # No NVML, pod network, no registry; the dashboard reads ClickHouse as [clickhouse] user.
    "gpu-less": ["--set", "agent.gpu=false,agent.hostNetwork=false,agent.registryHostPath=",
                 "--set", "config.dashboard.clickhouse_user=",
                 "--set", "credentials.clickhousePassword.value=FAKE-SECRET-clickhouse"],
}
# The fakes of the value sets above: they may appear in Secrets and nowhere else.
FAKE_SECRET = "FAKE-SECRET"
# What the full value set names but does not make: the cluster's own Secrets.
EXTERNAL_SECRETS = {"kafka-user-trainmon", "kafka-cluster-ca-cert", "clickhouse-ca", "trainmon-routes",
                    "trainmon-tls", "regcred"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}  # CRDs: no schema in kubernetes-validate
WORKLOADS = {"Deployment", "DaemonSet", "Job"}


def helm_binary() -> str | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "trainmon" / "tools" / f"helm-{HELM_VERSION}" / "helm"
    return str(built) if os.access(built, os.X_OK) else shutil.which("helm")


def missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def helm() -> str:
    found = helm_binary()
    if found is None:
        missing(f"no helm: run `make helm` (builds helm {HELM_VERSION} into ~/.cache/trainmon/tools)")
    return found


@pytest.fixture(scope="module")
def validator() -> Any:
    if kubernetes_validate is None:
        missing("no kubernetes-validate: pip install -e '.[test]'")
    return kubernetes_validate


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def template(helm: str, *values: str) -> subprocess.CompletedProcess[str]:
    return run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "--kube-version", f"{KUBERNETES}.0", *values)


@pytest.fixture(scope="module")
def renders(helm: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, values in VALUE_SETS.items():
        result = template(helm, *values)
        assert result.returncode == 0, f"helm template ({name} values) failed:\n{result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.fixture(params=list(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objects(value_set: str, renders: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return renders[value_set]


# Walking the rendered objects ----------------------------------------------------------------

def find(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]


def one(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = find(objects, kind, suffix)
    assert len(found) == 1, f"expected one {kind} *{suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pods(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) of every Deployment, DaemonSet and Job."""
    for workload in objects:
        if workload["kind"] in WORKLOADS:
            yield workload, workload["spec"]["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


def volume_sources(vol: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("configMap" or "secret", its reference) of a volume, one per source of a projected one."""
    sources = [vol] if "configMap" in vol or "secret" in vol else vol.get("projected", {}).get("sources", [])
    for source in sources:
        for field in ("configMap", "secret"):
            if field in source:
                yield field, source[field]


def ref_name(ref: dict[str, Any]) -> str:
    return ref.get("name") or ref["secretName"]


def mounted_files(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Path in the container -> (kind, object name, key) of every ConfigMap and Secret item mounted."""
    files = {}
    for mount in container.get("volumeMounts", []):
        for kind, ref in volume_sources(volume(pod, mount["name"])):
            for item in ref.get("items", []):
                if "subPath" not in mount:
                    files[f"{mount['mountPath']}/{item['path']}"] = (kind, ref_name(ref), item["key"])
                elif item["path"] == mount["subPath"]:
                    files[mount["mountPath"]] = (kind, ref_name(ref), item["key"])
    return files


def data_of(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    obj = one(objects, {"configMap": "ConfigMap", "secret": "Secret"}[kind], name)
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
    return obj.get("data", {})


def hook(obj: dict[str, Any]) -> tuple[set[str], int] | None:
    annotations = obj["metadata"].get("annotations", {})
    if "helm.sh/hook" not in annotations:
        return None
    return set(annotations["helm.sh/hook"].split(",")), int(annotations.get("helm.sh/hook-weight", "0"))


def references(pod: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(ConfigMap or Secret, name, key or None) of everything a pod template reads."""
    spec = pod["spec"]
    for secret in spec.get("imagePullSecrets", []):
        yield "Secret", secret["name"], None
    for vol in spec.get("volumes", []):
        for field, ref in volume_sources(vol):
            for item in ref.get("items", []) or [{"key": None}]:
                yield {"configMap": "ConfigMap", "secret": "Secret"}[field], ref_name(ref), item["key"]
    for container in containers(pod):
        for env in container.get("env", []):
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in env.get("valueFrom", {}):
                    yield kind, env["valueFrom"][field]["name"], env["valueFrom"][field]["key"]
        for env_from in container.get("envFrom", []):
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if field in env_from:
                    yield kind, env_from[field]["name"], None


def parse_command(args: list[str]) -> argparse.Namespace:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            return build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"`trainmon {' '.join(args)}` is refused by trainmon's parser: {errors.getvalue().strip()}")


# The checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_helm_lint_strict(helm: str, values: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_object_matches_the_kubernetes_schema(validator: Any, objects: list[dict[str, Any]]) -> None:
    errors = []
    for obj in objects:
        if obj["kind"] in KEDA_KINDS:
            continue
        try:
            validator.validate(obj, KUBERNETES, strict=True)
        except validator.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_expected_objects(renders: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted({o["kind"] for o in objs}) for name, objs in renders.items()}
    assert kinds["default"] == ["ConfigMap", "DaemonSet", "Deployment", "Job", "PodDisruptionBudget", "Service"]
    assert set(kinds["full"]) == set(kinds["default"]) | {"Secret", "Ingress"} | KEDA_KINDS


def test_keda_scales_the_processors_on_their_groups_lag(renders: dict[str, list[dict[str, Any]]]) -> None:
    objects = renders["full"]
    scaled, auth = one(objects, "ScaledObject"), one(objects, "TriggerAuthentication")
    processors = one(objects, "Deployment", "-processors")
    assert scaled["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                         "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
                         "triggers"}
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": processors["metadata"]["name"]}
    assert spec["scaleTargetRef"] == target
    assert "replicas" not in processors["spec"], "KEDA's HPA owns the count; a fixed one is reset by every upgrade"
    counts = ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod")
    assert all(type(spec[k]) is int for k in counts)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert set(trigger) <= {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA trigger metadata is a map of strings"
    group = parse_command(processors["spec"]["template"]["spec"]["containers"][0]["args"]).group
    assert metadata["consumerGroup"] == group
    full_config = yaml.safe_load(FULL_VALUES.read_text())["config"]
    assert metadata["bootstrapServers"] == full_config["kafka"]["bootstrap_servers"]
    assert int(metadata["lagThreshold"]) > 0
    assert (metadata["sasl"], metadata["tls"]) == ("scram_sha512", "enable")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert set(auth["spec"]) <= {"secretTargetRef", "configMapTargetRef", "env", "podIdentity"}
    parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"] + auth["spec"]["configMapTargetRef"]}
    assert parameters == {"username", "password", "ca", "cert", "key"}
    for ref in auth["spec"]["configMapTargetRef"]:
        assert data_of(objects, "configMap", ref["name"])[ref["key"]] == full_config["kafka"]["sasl_username"]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] in EXTERNAL_SECRETS or ref["key"] in data_of(objects, "secret", ref["name"])


def test_agent_sees_the_node(objects: list[dict[str, Any]]) -> None:
    agent = one(objects, "DaemonSet", "-agent")
    spec = agent["spec"]["template"]["spec"]
    [container] = spec["containers"]
    env, args = env_of(container), parse_command(container["args"])
    assert spec["hostPID"] is True, "pids registered by training pods and reported by NVML are the node's"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert env["TRAINMON_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert args.command == "agent" and not args.host, "--host would override the node name from TRAINMON_HOST"
    assert "nvidia.com/gpu" not in str(container.get("resources")), "requesting GPUs would take them from training"
    spool = next(m for m in container["volumeMounts"] if m["mountPath"] == args.spool_dir)
    assert "hostPath" in volume(agent["spec"]["template"], spool["name"]), "the spool must outlive the pod"
    assert agent["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0, "two agents would share one spool"
    if spec.get("hostNetwork"):
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet", "Kafka's Service names must still resolve"
    if "--no-gpu" not in container["args"]:
        assert spec["runtimeClassName"] == "nvidia" and env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    else:
        assert "runtimeClassName" not in spec and "NVIDIA_VISIBLE_DEVICES" not in env
    if "TRAINMON_REGISTRY_DIR" in env:
        registry = next(m for m in container["volumeMounts"] if m["mountPath"] == env["TRAINMON_REGISTRY_DIR"]["value"])
        assert "hostPath" in volume(agent["spec"]["template"], registry["name"])


def test_pod_security(objects: list[dict[str, Any]]) -> None:
    for workload, pod in pods(objects):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False, workload["metadata"]["name"]
        for container in containers(pod):
            where = f"{workload['metadata']['name']}/{container['name']}"
            context = {**spec.get("securityContext", {}), **container["securityContext"]}
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False and not context.get("privileged"), where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), f"{where}: no writable /tmp"
            if workload["kind"] == "DaemonSet":  # the agent: root's uid for DAC_READ_SEARCH, nothing else
                assert context["runAsUser"] == 0 and context["capabilities"]["add"] == ["DAC_READ_SEARCH"], where
            else:
                assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, where
                assert not context["capabilities"].get("add"), where


def test_secrets_stay_in_secrets(value_set: str, objects: list[dict[str, Any]]) -> None:
    secret_names = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|WEBHOOK", re.I)
    for obj in objects:
        if obj["kind"] != "Secret":
            assert FAKE_SECRET not in yaml.safe_dump(obj), f"{obj['kind']}/{obj['metadata']['name']} holds a secret"
        if obj["kind"] == "ConfigMap":
            for key, text in obj["data"].items():
                assert not re.search(r"^\s*\w*password\s*=", text, re.M), f"{key}: a password setting not *_file"
    for workload, pod in pods(objects):
        for container in containers(pod):
            for env in container.get("env", []):
                if secret_names.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{env['name']} must come from a Secret"
    given = " ".join(VALUE_SETS[value_set]) + (FULL_VALUES.read_text() if value_set == "full" else "")
    made = "".join(str(data_of(objects, "secret", s["metadata"]["name"])) for s in find(objects, "Secret"))
    for fake in set(re.findall(FAKE_SECRET + r"[\w-]*", given)):
        assert fake in made, f"the credential {fake} given as a value is in no Secret"


def test_referenced_configmaps_and_secrets_exist(objects: list[dict[str, Any]]) -> None:
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for workload, pod in pods(objects):
        job_hook = hook(workload)
        for kind, name, key in references(pod):
            where = f"{workload['metadata']['name']} -> {kind}/{name}"
            if (kind, name) not in rendered:
                assert kind == "Secret" and name in EXTERNAL_SECRETS, f"{where}: not rendered, not expected to exist"
                continue
            target = rendered[(kind, name)]
            if key is not None:
                assert key in target.get("data", {}), f"{where}: no key {key}"
            target_hook = hook(target)
            if job_hook is None:
                assert target_hook is None, f"{where}: a hook object, deleted after the hook ran"
            else:  # hooks run before the release's objects exist: only earlier hooks are there
                assert target_hook is not None, f"{where}: not made yet when the {job_hook[0]} hook runs"
                assert job_hook[0] <= target_hook[0] and target_hook[1] < job_hook[1], where


def test_selectors_match_their_pods(objects: list[dict[str, Any]]) -> None:
    labels = {w["metadata"]["name"]: p["metadata"]["labels"] for w, p in pods(objects)}

    def selected(selector: dict[str, str]) -> set[str]:
        return {name for name, pod_labels in labels.items() if selector.items() <= pod_labels.items()}

    processors, dashboard = one(objects, "Deployment", "-processors"), one(objects, "Deployment", "-dashboard")
    budget = one(objects, "PodDisruptionBudget")
    assert selected(budget["spec"]["selector"]["matchLabels"]) == {processors["metadata"]["name"]}
    service = one(objects, "Service", "-dashboard")
    assert selected(service["spec"]["selector"]) == {dashboard["metadata"]["name"]}
    ports = {p["name"] for c in dashboard["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for ingress in find(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    for workload in (processors, dashboard):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_command_lines_parse(objects: list[dict[str, Any]]) -> None:
    commands = set()
    for workload, pod in pods(objects):
        for container in containers(pod):
            assert "command" not in container, "the image's entrypoint is trainmon: pass args only"
            args = parse_command(container["args"])
            commands.add(args.command)
            if args.command == "dashboard":
                assert args.address == "0.0.0.0", "the Service reaches the pod on its pod IP"
                probe = container["readinessProbe"]["httpGet"]
                assert probe["path"] == "/_stcore/health" and probe["port"] in {p["name"] for p in container["ports"]}
                assert {p["containerPort"] for p in container["ports"]} == {args.port}
            if args.command == "process" and args.pipeline:
                kind, name, key = mounted_files(pod, container)[str(args.pipeline)]
                assert data_of(objects, kind, name)[key] == PIPELINE.read_text()
    assert commands == {"agent", "process", "dashboard", "topics", "db"}


def test_config_files_load_and_name_mounted_files(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    for workload, pod in pods(objects):
        for container in containers(pod):
            files = mounted_files(pod, container)
            kind, name, key = files[env_of(container)["TRAINMON_CONFIG"]["value"]]
            config = tmp_path / f"{workload['metadata']['name']}-{container['name']}.toml"
            config.write_text(data_of(objects, kind, name)[key])
            loaded = settings_module.load(config, environ={})
            for field in dataclasses.fields(loaded):
                value = getattr(loaded, field.name)
                if field.name.endswith("_file") and value:
                    assert value in files, f"{config.name}: {field.name} = {value} is not mounted"
            if parse_command(container["args"]).command == "process":
                assert any(loaded.services_home == m["mountPath"] for m in container["volumeMounts"])


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "config.kafka.sasl_password=x"], "config.kafka.sasl_password: credentials go in"),
    (["--set", "config.clickhouse.ca_file=/x"], "config.clickhouse.ca_file: credentials go in"),
    (["--set", "credentials.kafkaPassword.value=x"], "credentials.kafkaPassword: unknown credential"),
    (["--set", "config.kafka.security_protocol=SASL_SSL,config.kafka.sasl_username=u"],
     "credentials.kafkaSaslPassword"),
    (["--set", "config.dashboard.auth=oidc"], "credentials.dashboardAuth"),
    (["--set", "config.kafka.bootstrap_servers="], "config.kafka.bootstrap_servers"),
    (["--set", "credentials.kafkaCa.existingSecret=ca,credentials.kafkaCa.key="], "credentials.kafkaCa.key"),
])
def test_mistakes_are_refused_with_what_to_do(helm: str, values: list[str], message: str) -> None:
    result = template(helm, *values)
    assert result.returncode != 0 and message in result.stderr, result.stderr
