"""Agent settings: Seldon names, quantities, comma lists, flags over environment."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from agent.settings import AgentSettings
from contract.names import split_pod_name
from contract.settings_cli import describe_error, settings_from_args
from gpuplace.commands.processes import register

SELDON_NAMES = [
    "SELDON_SERVER_CAPABILITIES",
    "MEMORY_REQUEST",
    "SELDON_OVERCOMMIT_PERCENTAGE",
    "POD_NAME",
    "SELDON_SCHEDULER_HOST",
    "SELDON_SCHEDULER_PORT",
    "SELDON_SERVER_HTTP_PORT",
    "SELDON_SERVER_GRPC_PORT",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in SELDON_NAMES + [k for k in os.environ if k.startswith("GPUPLACE_AGENT_")]:
        monkeypatch.delenv(name, raising=False)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gpuplace")
    register(root.add_subparsers(dest="command"))
    return root


@pytest.mark.parametrize(
    ("pod", "server", "index"),
    [
        ("mlserver-3", "mlserver", 3),
        ("mlserver", "mlserver", 0),
        ("mlserver-llm-local-gpu-0", "mlserver-llm-local-gpu", 0),
        ("triton-12", "triton", 12),
        ("gpu-a-b", "gpu-a-b", 0),
    ],
)
def test_pod_name_gives_server_and_replica(pod: str, server: str, index: int) -> None:
    assert split_pod_name(pod) == (server, index)
    settings = AgentSettings(pod_name=pod)
    assert (settings.server, settings.index) == (server, index)


def test_seldon_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELDON_SERVER_CAPABILITIES", " sklearn, model-on-gpu,, xgboost ,")
    monkeypatch.setenv("MEMORY_REQUEST", "8Gi")
    monkeypatch.setenv("SELDON_OVERCOMMIT_PERCENTAGE", "25")
    monkeypatch.setenv("POD_NAME", "mlserver-llm-2")
    monkeypatch.setenv("SELDON_SCHEDULER_HOST", "scheduler.seldon")
    monkeypatch.setenv("SELDON_SCHEDULER_PORT", "19005")
    monkeypatch.setenv("SELDON_SERVER_HTTP_PORT", "9000")
    monkeypatch.setenv("SELDON_SERVER_GRPC_PORT", "9500")
    monkeypatch.setenv("GPUPLACE_AGENT_GPU_UUIDS", "GPU-a, MIG-b")
    monkeypatch.setenv("GPUPLACE_AGENT_RESOURCE_REPORT_THRESHOLD_BYTES", "1Gi")
    settings = AgentSettings()
    assert settings.capabilities == ["sklearn", "model-on-gpu", "xgboost"]
    assert settings.memory_bytes == 8 * 2**30
    assert settings.overcommit_percentage == 25
    assert settings.replica == "mlserver-llm-2"
    assert settings.scheduler_address == "scheduler.seldon:19005"
    assert settings.inference_url == "http://127.0.0.1:9000"
    assert settings.inference_grpc_port == 9500
    assert settings.gpu_uuids == ["GPU-a", "MIG-b"]
    assert settings.resource_report_threshold_bytes == 2**30


def test_defaults() -> None:
    settings = AgentSettings()
    assert settings.scheduler_port == 9005
    assert settings.readiness_port == 9008
    assert settings.metrics_port == 9006
    assert settings.capabilities == []
    assert settings.gpu_uuids == []
    assert settings.max_artifact_bytes == 50 * 2**30
    # below the 120 s terminationGracePeriodSeconds `gpuplace render` writes
    assert settings.drain_timeout_s == 90


def test_max_artifact_bytes_is_a_quantity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUPLACE_AGENT_MAX_ARTIFACT_BYTES", "2Gi")
    assert AgentSettings().max_artifact_bytes == 2 * 2**30
    args = parser().parse_args(["agent", "--max-artifact-bytes", "500Mi"])
    assert settings_from_args(AgentSettings, args).max_artifact_bytes == 500 * 2**20


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY_REQUEST", "1Gi")
    monkeypatch.setenv("POD_NAME", "from-env-1")
    monkeypatch.setenv("GPUPLACE_AGENT_MAX_CONCURRENT_LOADS", "7")
    args = parser().parse_args(
        ["agent", "--memory-bytes", "2Gi", "--readiness-port", "0", "--pod-name", "flag-4"]
    )
    settings = settings_from_args(AgentSettings, args)
    assert settings.memory_bytes == 2 * 2**30
    assert settings.readiness_port == 0
    assert settings.replica == "flag-4"
    assert settings.max_concurrent_loads == 7


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("MEMORY_REQUEST", "lots", "MEMORY_REQUEST"),
        ("SELDON_OVERCOMMIT_PERCENTAGE", "-5", "SELDON_OVERCOMMIT_PERCENTAGE"),
        ("POD_NAME", "MLServer_0", "POD_NAME"),
        ("SELDON_SCHEDULER_PORT", "http", "SELDON_SCHEDULER_PORT"),
        ("GPUPLACE_AGENT_LOAD_TIMEOUT_S", "0", "GPUPLACE_AGENT_LOAD_TIMEOUT_S"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as caught:
        AgentSettings()
    lines = describe_error(AgentSettings, caught.value).splitlines()
    assert len(lines) == 1
    assert named in lines[0]
    assert repr(value) in lines[0]


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["agent", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in AgentSettings.model_fields:
        assert f"--{field.replace('_', '-')}" in text
    for name in SELDON_NAMES:
        assert f"env {name}" in text
    assert "env GPUPLACE_AGENT_MODEL_REPOSITORY" in text


def test_docs_list_every_setting() -> None:
    from pathlib import Path

    from contract.settings_cli import _env_name

    docs = (Path(__file__).parents[2] / "docs" / "agent.md").read_text()
    for field in AgentSettings.model_fields:
        row = f"| `--{field.replace('_', '-')}` | `{_env_name(AgentSettings, field)}` |"
        assert row in docs, f"docs/agent.md lacks the row for {field}"


def test_gpu_capabilities_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AgentSettings().gpu_capabilities is False
    monkeypatch.setenv("GPUPLACE_AGENT_GPU_CAPABILITIES", "true")
    assert AgentSettings().gpu_capabilities is True
    args = parser().parse_args(["agent", "--gpu-capabilities", "false"])
    assert settings_from_args(AgentSettings, args).gpu_capabilities is False
    with pytest.raises(ValidationError):
        AgentSettings(gpu_capabilities="sometimes")  # type: ignore[arg-type]
