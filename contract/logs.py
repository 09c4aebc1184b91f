"""Log output for every process: text for people (the default) or one JSON object per line.

A line about a model or a replica carries them as fields (`extra=log_fields(...)`), so a log
pipeline can filter by model, version, server, replica or reason without parsing the text.
The text format shows the message only: it already names them.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

from contract.names import split_pod_name

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The fields a line may carry besides time, level, logger and message.
FIELDS = ("model", "version", "server", "replica", "reason")


def log_fields(
    *,
    model: str | None = None,
    version: int | None = None,
    replica: str | None = None,
    reason: str | None = None,
) -> dict[str, object]:
    """`extra=` for a log line: the fields given (empty ones left out); a replica's name
    (`mlserver-0`) gives its server (`mlserver`) too."""
    fields: dict[str, object] = {}
    if model:
        fields["model"] = model
    if version:
        fields["version"] = version
    if replica:
        fields["server"] = split_pod_name(replica)[0]
        fields["replica"] = replica
    if reason:
        fields["reason"] = reason
    return fields


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter  # the CLI's commands never need it

        # Every attribute given with `extra=` becomes a field; a traceback is `error`.
        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "error"},
            json_ensure_ascii=False,
        )
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


_HANDLER_NAMES: dict[LogFormat, str] = {name: f"gpuplace-{name}" for name in LOG_FORMATS}


def configure_logging(level: str, log_format: LogFormat, stream: TextIO) -> None:
    """The root logger writes `level` and above to `stream` in `log_format`."""
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAMES[log_format])
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class _Fields(logging.Filter):
    """Fields every line of the process carries (a line's own fields win)."""

    def __init__(self, fields: dict[str, object]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def tag_process(*, replica: str) -> None:
    """Every line this process writes from now on carries the replica it serves (and its
    server): the agent's identity, in lines about its link or its GPUs too."""
    tag = _Fields(log_fields(replica=replica))
    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


def fatal(*lines: str) -> None:
    """Why the process stops before it serves, on stderr: each line as it is, or, with JSON
    logs, each as an ERROR object, so that the stream stays one object per line."""
    root = logging.getLogger()
    if any(handler.name == _HANDLER_NAMES["json"] for handler in root.handlers):
        for line in lines:
            logging.getLogger("gpuplace").error(line)
        return
    for line in lines:
        print(line, file=sys.stderr)
