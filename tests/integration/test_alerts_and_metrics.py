"""The metrics pages pass `promtool check metrics`; the alert rules in deploy/prometheus/
pass `promtool check rules` and their unit tests (`promtool test rules`: series in, alerts
out); every metric the rules and the Grafana dashboard use is one the processes export.
promtool comes with Debian's `prometheus` package (`.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from agent.metrics import AgentMetrics
from tests.support.scheduler import SchedulerHandle

RULES = Path(__file__).parents[2] / "deploy" / "prometheus"
DASHBOARD = Path(__file__).parents[2] / "charts" / "gpuplace" / "dashboards" / "gpuplace.json"
# A series name as PromQL writes it, without what a histogram or a counter adds.
_SUFFIXES = re.compile(r"_(bucket|sum|count|total)$")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is needed: apt-get install prometheus (Debian), as .ci/run does"
    return found


def agent_page() -> str:
    registry = CollectorRegistry()
    AgentMetrics(registry)
    return generate_latest(registry).decode()


async def scheduler_page(scheduler: SchedulerHandle) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{scheduler.http_url}/metrics") as response:
            return await response.text()


async def test_both_metrics_pages_pass_promtool(promtool: str, scheduler: SchedulerHandle) -> None:
    for page in (await scheduler_page(scheduler), agent_page()):
        checking = await asyncio.create_subprocess_exec(
            promtool,
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        said, _ = await checking.communicate(page.encode())
        assert checking.returncode == 0 and not said.strip(), said.decode()


def test_the_alert_rules_are_valid_and_their_unit_tests_pass(promtool: str) -> None:
    for args in (
        ["check", "rules", "gpuplace-alerts.yaml"],
        ["test", "rules", "gpuplace-alerts.test.yaml"],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=RULES, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((RULES / "gpuplace-alerts.yaml").read_text())
    tests = yaml.safe_load((RULES / "gpuplace-alerts.test.yaml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert alerts == fired


async def exported(scheduler: SchedulerHandle) -> set[str]:
    return {
        _SUFFIXES.sub("", name)
        for page in (await scheduler_page(scheduler), agent_page())
        for name in re.findall(r"^# TYPE (gpuplace_\w+) ", page, re.M)
    }


def used_in(expressions: list[str]) -> set[str]:
    return {
        _SUFFIXES.sub("", name)
        for expr in expressions
        for name in re.findall(r"gpuplace_\w+", expr)
    }


async def test_every_metric_the_rules_use_is_exported(scheduler: SchedulerHandle) -> None:
    rules = yaml.safe_load((RULES / "gpuplace-alerts.yaml").read_text())
    used = used_in([rule["expr"] for group in rules["groups"] for rule in group["rules"]])
    assert used and used <= await exported(scheduler), used - await exported(scheduler)


async def test_every_metric_the_dashboard_queries_is_exported(scheduler: SchedulerHandle) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    expressions = [target["expr"] for panel in panels for target in panel["targets"]]
    used = used_in(expressions)
    assert used and used <= await exported(scheduler), used - await exported(scheduler)
    for wanted in ("models", "placements", "load_failures", "load_duration_seconds"):
        assert f"gpuplace_scheduler_{wanted}" in used
    assert {
        "gpuplace_scheduler_gpu_memory_free_bytes",
        "gpuplace_scheduler_gpu_memory_reserved_bytes",
    } <= used
