"""aiohttp logs each malformed HTTP request (a gRPC client on the HTTP port, a port scan, a
stray TLS handshake) at ERROR with a traceback: anyone who can reach the port could flood
the log. Such a request becomes one DEBUG line here; real errors stay as they are."""

from __future__ import annotations

import logging


class _MalformedRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and type(error).__module__ == "aiohttp.http_exceptions":
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            record.msg, record.args = (
                "%s: %s (%s)",
                (
                    record.getMessage(),
                    type(error).__name__,
                    first[:200],
                ),
            )
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_FILTER = _MalformedRequests()


def quiet_malformed_requests() -> None:
    """Install the filter on aiohttp's server logger (once per process is enough; again
    changes nothing)."""
    logging.getLogger("aiohttp.server").addFilter(_FILTER)
