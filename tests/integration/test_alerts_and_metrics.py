"""The metrics pages pass `promtool check metrics`; the alert rules in deploy/prometheus/
pass `promtool check rules` and their unit tests (`promtool test rules`: series in, alerts
out); every metric the rules use is one the processes export. promtool comes with Debian's
`prometheus` package (`.ci/run` installs it)."""

from __future__ import annotations

import asyncio
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
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == fired


async def test_every_metric_the_rules_use_is_exported(scheduler: SchedulerHandle) -> None:
    exported = {
        name.removesuffix("_total")
        for page in (await scheduler_page(scheduler), agent_page())
        for name in re.findall(r"^# TYPE (gpuplace_\w+) ", page, re.M)
    }
    rules = yaml.safe_load((RULES / "gpuplace-alerts.yaml").read_text())
    used = {
        name.removesuffix("_total")
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"gpuplace_\w+", rule["expr"])
    }
    assert used and used <= exported, used - exported
