"""Structured logs: one JSON object per line, the request id on every line, no secret ever.

FunctionGraph collects stdout into LTS, where one JSON object per line can be searched by field.

    configure_json_logging(secrets=[settings.secret_key])
    with request_context("c61f58df-..."):
        logger.info("pushed", extra={"event": "push_done", "accepted": 12})

Secrets registered with :func:`configure_json_logging` are masked in the final line as a last
line of defence; the code never logs them in the first place.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from pydantic import SecretStr

__all__ = ["JsonFormatter", "configure_json_logging", "current_request_id", "request_context"]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "koogallery_request_id", default=None
)

_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)
_MASK = "***"


def current_request_id() -> str | None:
    """The FunctionGraph request id of the invocation being handled, if any."""
    return _request_id.get()


@contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Tag every log line emitted inside the block with ``request_id``."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, request id, extras."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({value for value in secrets if len(value) >= 4}, key=len)[::-1]

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": current_request_id(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)

        return json.dumps(self._masked(entry), default=str, ensure_ascii=False)

    def _masked(self, value: Any) -> Any:
        """Mask secrets in every string before serialising, where quotes and backslashes in a
        secret are still as written (after ``json.dumps`` they would be escaped)."""
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, _MASK)
            return value
        if isinstance(value, dict):
            return {key: self._masked(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._masked(item) for item in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self._masked(str(value))


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[IO[str]]
else:  # logging's handlers are subscriptable only from Python 3.11
    _StreamHandler = logging.StreamHandler


class _StdoutHandler(_StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the moment of each line.

    A host that swaps stdout (a test runner capturing output, a local server) keeps getting
    the lines, instead of this handler writing into a stream that was since closed.
    """

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        """The base class assigns a stream once; the property ignores it on purpose."""


def configure_json_logging(
    *,
    level: int | str = logging.INFO,
    secrets: Iterable[SecretStr | str | None] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send the ``koogallery`` loggers' output to ``stream`` (stdout) as JSON lines.

    It replaces whatever handlers the ``koogallery`` logger had, so a warm FunctionGraph
    instance that handles many invocations, or a CLI that runs a handler, never duplicates lines.
    """
    plain = [
        value.get_secret_value() if isinstance(value, SecretStr) else value
        for value in secrets
        if value is not None
    ]
    handler: logging.StreamHandler[Any] = (
        logging.StreamHandler(stream) if stream is not None else _StdoutHandler()
    )
    handler.setFormatter(JsonFormatter(plain))
    handler.set_name("koogallery-json")

    root = logging.getLogger("koogallery")
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
    return handler
