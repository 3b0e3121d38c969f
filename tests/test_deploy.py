"""deploy/: the Kubernetes manifests parse into the Kubernetes API's own models (every field
known: a parse and re-serialisation gives the document back), their evalfleet commands parse
with evalfleet's own CLI, and the pieces refer to each other consistently (the coordinator's
DNS target is the workers' headless service, probes hit the gRPC health service on the served
port, Secrets and volumes exist)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KINDS = {("v1", "Namespace"): "V1Namespace", ("v1", "Secret"): "V1Secret",
         ("v1", "Service"): "V1Service", ("apps/v1", "Deployment"): "V1Deployment",
         ("apps/v1", "StatefulSet"): "V1StatefulSet",
         ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
         ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy"}


def _documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _model(doc: dict):
    from kubernetes.client import ApiClient

    return ApiClient().deserialize(json.dumps(doc), KINDS[(doc["apiVersion"], doc["kind"])],
                                   "application/json")


def _normal(value):
    """Quantities and ports as the models keep them (ints stay ints, strings strings)."""
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_parses_into_the_kubernetes_model(doc):
    from kubernetes.client import ApiClient

    assert (doc["apiVersion"], doc["kind"]) in KINDS, doc["kind"]
    model = _model(doc)
    # Every field is one the API knows: nothing is dropped by the round trip.
    assert _normal(ApiClient().sanitize_for_serialization(model)) == _normal(doc)


def image_env() -> dict[str, str]:
    """deploy/Dockerfile's ENV (``KEY=VALUE`` pairs, continued lines joined)."""
    import shlex

    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", text, flags=re.M):
        env.update(pair.split("=", 1) for pair in shlex.split(line))
    return env


def _by(kind: str, name: str) -> dict:
    return next(d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _flag(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))


@pytest.mark.parametrize("kind,name", [("Deployment", "evalfleet-coordinator"),
                                       ("StatefulSet", "evalfleet-worker")])
def test_commands_parse_with_the_evalfleet_cli(kind, name):
    from evalfleet.client.cli import build_parser

    args = [re.sub(r"\$\([A-Z_]+\)", "x", a) for a in _container(_by(kind, name))["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve" and parsed.host == "0.0.0.0"
    assert parsed.auth_token_file == "/etc/evalfleet/auth/token"


def test_the_pieces_fit_together():
    from evalfleet.server.registry import DnsTarget

    coordinator, workers = _by("Deployment", "evalfleet-coordinator"), \
        _by("StatefulSet", "evalfleet-worker")
    headless = _by("Service", "evalfleet-workers")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= \
        workers["spec"]["template"]["metadata"]["labels"].items()
    target = DnsTarget.parse(_flag(_container(coordinator)["args"], "workers"))
    service, namespace = target.name.split(".")[:2]
    assert (service, namespace) == ("evalfleet-workers", headless["metadata"]["namespace"])
    worker_port = int(_flag(_container(workers)["args"], "port"))
    assert target.port == worker_port == headless["spec"]["ports"][0]["targetPort"]
    for workload, port in ((coordinator, 50051), (workers, worker_port)):
        container = _container(workload)
        assert container["ports"][0]["containerPort"] == port
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port  # grpc.health.v1, no token needed
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        secret = volumes[mounts["/etc/evalfleet/auth"]]["secret"]["secretName"]
        assert "token" in _by("Secret", secret)["stringData"]
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                _by("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert _container(workers)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    store = _flag(_container(coordinator)["args"], "db")
    assert store.startswith("postgresql://") and "@postgres:5432/" in store
    _by("Service", "postgres")
    # PostgreSQL's password reaches both sides as files from one Secret, in two forms.
    secret = _by("Secret", "evalfleet-postgres")["stringData"]
    assert secret["pgpass"].split(":") == ["*", "*", "evalfleet", "evalfleet",
                                           secret["password"]]


@pytest.mark.parametrize("kind,name", [("Deployment", "evalfleet-coordinator"),
                                       ("StatefulSet", "evalfleet-worker")])
def test_pods_ask_prometheus_to_scrape_them(kind, name):
    annotations = _by(kind, name)["spec"]["template"]["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9090",
        "prometheus.io/path": "/metrics"}
    # The port they name is the one the container serves its metrics on.
    container = _container(_by(kind, name))
    assert _flag(container["args"], "metrics_port") == "9090"
    assert {"name": "metrics", "containerPort": 9090} in container["ports"]
    label = _by(kind, name)["spec"]["template"]["metadata"]["labels"]["app"]
    (policy,) = [d for d in _documents() if d["kind"] == "NetworkPolicy"
                 and d["spec"]["podSelector"]["matchLabels"]["app"] == label]
    # The pod's network policy lets Prometheus (from any namespace) reach the port.
    assert any(rule.get("from") is None and {"port": 9090} in rule["ports"]
               for rule in policy["spec"]["ingress"])


def test_dockerfile_copies_every_package_of_the_distribution():
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M))
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    folders = {Path(p).parts[0] for p in project["tool"]["setuptools"]["package-dir"].values()}
    assert folders <= copied, folders - copied
    assert 'ENTRYPOINT ["evalfleet"]' in dockerfile


def test_the_round_trip_catches_a_misspelled_field():
    from kubernetes.client import ApiClient

    doc = json.loads(json.dumps(_by("StatefulSet", "evalfleet-worker")))
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    assert _normal(ApiClient().sanitize_for_serialization(_model(doc))) != _normal(doc)


@pytest.mark.parametrize("kind,name", [("Deployment", "evalfleet-coordinator"),
                                       ("StatefulSet", "evalfleet-worker")])
def test_a_read_only_root_leaves_every_place_the_image_writes_on_a_volume(kind, name):
    container = _container(_by(kind, name))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    # /tmp, and the folders the image's ENV points programs at (caches, HF_HOME, ...).
    places = ["/tmp", *(v for v in image_env().values() if v.startswith("/"))]
    assert "/var/cache/evalfleet" in places and len(places) >= 4, places
    for place in places:
        assert any(place == m or place.startswith(f"{m}/") for m in writable), place


def test_kubectl_apply_creates_the_namespace_first():
    # `kubectl apply -f deploy/k8s/` applies the files in name order; anything put in a namespace
    # that does not exist yet is refused.
    first, *rest = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert [d["kind"] for d in yaml.safe_load_all(first.read_text()) if d] == ["Namespace"]
    assert all(d["kind"] != "Namespace" for p in rest for d in yaml.safe_load_all(p.read_text())
               if d)
