"""Domain errors. They carry no transport: the servicers map them to gRPC status codes."""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of every error a client may see."""


class InvalidArgument(SchedulerError):
    """The request is malformed: names the field and the rule."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(SchedulerError):
    """No such model (or server)."""


class FailedPrecondition(SchedulerError):
    """The request cannot be honoured in the current state."""


class ResourceExhausted(SchedulerError):
    """A bound was reached (models, queues)."""
