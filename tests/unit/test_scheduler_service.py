"""The service without a network: its reconcile passes, driven by hand."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from scheduler_service.messages import Command, Hello, Load
from scheduler_service.metrics import SchedulerMetrics
from scheduler_service.model import validate_spec
from scheduler_service.service import SchedulerService
from scheduler_service.settings import SchedulerSettings
from scheduler_service.store import Store


def service(tmp_path: Path) -> tuple[SchedulerService, list[Command]]:
    settings = SchedulerSettings(db=tmp_path / "s.db")
    built = SchedulerService(settings, Store(settings.db), SchedulerMetrics(CollectorRegistry()))
    sent: list[Command] = []

    def send(command: Command) -> bool:
        sent.append(command)
        return True

    built.connect(Hello("mlserver", 0, frozenset({"sklearn"}), 2**34, 0), send, lambda reason: None)
    return built, sent


def loads(sent: list[Command]) -> list[str]:
    return [c.spec.name for c in sent if isinstance(c, Load)]


def test_a_budget_slices_a_large_pass_and_nothing_is_left_out(tmp_path: Path) -> None:
    scheduler, sent = service(tmp_path)
    for index in range(5):
        scheduler.load_model(validate_spec(f"m{index}"))
    assert scheduler.reconcile(budget=2) is True
    assert loads(sent) == ["m0", "m1"]
    assert scheduler.reconcile(budget=2) is True
    assert scheduler.reconcile(budget=2) is False
    assert loads(sent) == ["m0", "m1", "m2", "m3", "m4"]


def test_an_idle_pass_sends_nothing_again(tmp_path: Path) -> None:
    scheduler, sent = service(tmp_path)
    scheduler.load_model(validate_spec("iris"))
    scheduler.reconcile()
    count = len(sent)
    assert scheduler.reconcile() is False
    assert len(sent) == count
