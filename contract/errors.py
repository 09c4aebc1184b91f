"""Errors a caller may see. They carry no transport: each server maps them to its status
codes in one place (the scheduler's servicers)."""

from __future__ import annotations


class GpuplaceError(Exception):
    """Base of every error a client or an agent may be answered with."""


class InvalidArgument(GpuplaceError):
    """The request is malformed: names the field and the rule."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(GpuplaceError):
    """No such model (or server)."""


class ResourceExhausted(GpuplaceError):
    """A bound was reached (models, queues)."""


class AlreadyExists(GpuplaceError):
    """Something of that name is live already (a replica's agent); `holder`: who has it,
    for the log (not told to the caller)."""

    holder: str = ""
