"""Log output (contract/logs.py and `gpuplace --log-format/--log-level`): text by default,
JSON with fields on request, and a clear refusal of a bad setting."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from contract.logs import configure_logging, fatal, log_fields, tag_process
from gpuplace import cli


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_log_fields_leave_out_what_is_empty_and_name_the_server_of_a_replica() -> None:
    assert log_fields() == {}
    assert log_fields(model="", version=0, replica=None, reason="") == {}
    assert log_fields(model="iris", version=3, replica="mlserver-gpu-12", reason="timeout") == {
        "model": "iris",
        "version": 3,
        "server": "mlserver-gpu",
        "replica": "mlserver-gpu-12",
        "reason": "timeout",
    }


def test_json_lines_carry_the_fields_and_a_traceback(restore_root_logger: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    log = logging.getLogger("gpuplace.test")
    log.debug("not shown")
    log.info("model %s: loading \u00fc", "iris", extra=log_fields(model="iris", version=2))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra=log_fields(replica="mlserver-0"))
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "model iris: loading \u00fc"
    assert (first["level"], first["logger"], first["model"], first["version"]) == (
        "INFO",
        "gpuplace.test",
        "iris",
        2,
    )
    assert first["time"].endswith("+00:00")
    assert "replica" not in first
    assert (second["level"], second["server"], second["replica"]) == (
        "ERROR",
        "mlserver",
        "mlserver-0",
    )
    assert "ValueError: boom" in second["error"]


def test_text_is_the_default_and_shows_the_message_only(restore_root_logger: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "text", out)
    logging.getLogger("x").warning("model %s: gone", "iris", extra=log_fields(model="iris"))
    line = out.getvalue().strip()
    assert line.endswith(" WARNING x: model iris: gone")
    assert "{" not in line


def test_a_tagged_process_names_its_replica_on_every_line(restore_root_logger: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    tag_process(replica="triton-2")
    logging.getLogger("agent.gpus").info("NVML: 2 devices")
    logging.getLogger("agent.models").info("x", extra=log_fields(model="m", replica="other-1"))
    plain, own = (json.loads(line) for line in out.getvalue().splitlines())
    assert (plain["server"], plain["replica"]) == ("triton", "triton-2")
    assert (own["model"], own["replica"]) == ("m", "other-1")  # a line's own fields win


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("GPUPLACE_LOG_FORMAT", "xml", "GPUPLACE_LOG_FORMAT='xml': use one of text, json"),
        ("GPUPLACE_LOG_LEVEL", "loud", "GPUPLACE_LOG_LEVEL='LOUD': use one of DEBUG, INFO"),
    ],
)
def test_a_bad_logging_variable_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    said: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["model", "status", "iris"])
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err


def test_the_variables_set_the_defaults_and_the_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUPLACE_LOG_FORMAT", "JSON")
    monkeypatch.setenv("GPUPLACE_LOG_LEVEL", "debug")
    args = cli.build_parser().parse_args(["model", "status", "iris"])
    assert (args.log_format, args.log_level) == ("json", "DEBUG")
    args = cli.build_parser().parse_args(
        ["--log-format", "text", "--log-level", "ERROR", "model", "status", "iris"]
    )
    assert (args.log_format, args.log_level) == ("text", "ERROR")


def test_a_fatal_line_follows_the_log_format(
    restore_root_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fatal("error: one", "error: two")
    assert capsys.readouterr().err == "error: one\nerror: two\n"  # no logging set up: text
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    fatal("invalid setting MEMORY_REQUEST (--memory-bytes) = 'lots'")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["level"] == "ERROR"
    assert json.loads(line)["message"].startswith("invalid setting MEMORY_REQUEST")
    assert capsys.readouterr().err == ""
