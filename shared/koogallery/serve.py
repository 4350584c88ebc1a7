"""Both function handlers behind one local HTTP server, hosted by functions-framework.

POST a raw FunctionGraph event (the JSON a trigger would hand the function) to ``/usage-push``
or ``/bill-fetch`` and get the handler's result back as JSON. A handler that raises answers 500
with the body FunctionGraph's Python runtime gives, ``{"errorMessage", "errorType",
"stackTrace"}``, so a caller's error handling can be tried locally too.

Each request gets a fresh ``LocalContext``: user data from the server's environment, the request
id from the ``X-Request-Id`` header (or a new one), and ``KOOGALLERY_SERVE_TIMEOUT_SECONDS`` (30 by
default) as the time budget.

    koogallery serve --port 8080
    functions-framework --source shared/koogallery/serve.py --target koogallery_functions \\
        --signature-type http --host 127.0.0.1 --port 8080

Only loopback hosts are served: the server runs the handlers with this machine's credentials.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask

from koogallery.errors import ConfigurationError
from koogallery.functiongraph import LocalContext

__all__ = [
    "ENTRY_POINT",
    "FUNCTIONS",
    "LOOPBACK_HOSTS",
    "check_loopback",
    "error_body",
    "functions_framework_command",
    "koogallery_functions",
]

logger = logging.getLogger(__name__)

ENTRY_POINT = "koogallery_functions"
"""The functions-framework target (http signature) in this file."""

FUNCTIONS = {"usage-push": "usage_push", "bill-fetch": "bill_fetch"}
"""URL path -> the folder under ``functions/`` whose ``index.py`` handles it."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

_DEFAULT_TIMEOUT_SECONDS = 30.0
_FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"
_handlers: dict[str, Callable[[Any, Any], Any]] = {}

Handler = Callable[[Any, Any], Any]


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address, else a ConfigurationError: the handlers run with
    this machine's credentials and must not be reachable from elsewhere."""
    if host.strip("[]") not in LOOPBACK_HOSTS:
        raise ConfigurationError(
            f"koogallery serve listens on loopback only (127.0.0.1 or ::1), not {host!r}"
        )
    return host.strip("[]")


def functions_framework_command(python: str, host: str, port: int) -> list[str]:
    """The functions-framework command line that serves this file on ``host:port``."""
    return [
        python,
        "-m",
        "functions_framework",
        "--source",
        str(Path(__file__).resolve()),
        "--target",
        ENTRY_POINT,
        "--signature-type",
        "http",
        "--host",
        check_loopback(host),
        "--port",
        str(port),
    ]


def _load_handler(function: str) -> Handler | None:
    """The handler of ``functions/<name>/index.py``, loaded once; ``None`` when the function
    has no entry point file (yet)."""
    if function in _handlers:
        return _handlers[function]

    if not (_FUNCTIONS_DIR / FUNCTIONS[function] / "index.py").is_file():
        return None

    from koogallery.cli import load_handler

    handler: Handler = load_handler(function)
    _handlers[function] = handler
    return handler


def error_body(error: BaseException) -> dict[str, Any]:
    """What FunctionGraph returns for a handler that raised: message, type and stack."""
    frames = traceback.extract_tb(error.__traceback__)
    return {
        "errorMessage": str(error),
        "errorType": type(error).__name__,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_list(frames)],
    }


def _json(status: int, body: Any) -> flask.Response:
    return flask.Response(
        json.dumps(body, default=str), status=status, mimetype="application/json"
    )


def _timeout_seconds() -> float:
    try:
        return float(os.environ.get("KOOGALLERY_SERVE_TIMEOUT_SECONDS", _DEFAULT_TIMEOUT_SECONDS))
    except ValueError:
        return _DEFAULT_TIMEOUT_SECONDS


def koogallery_functions(request: flask.Request) -> flask.Response:
    """The functions-framework entry point: route by path, invoke, answer like FunctionGraph."""
    function = request.path.strip("/")
    if function not in FUNCTIONS:
        paths = ", ".join(f"/{name}" for name in FUNCTIONS)
        return _json(404, {"error": f"no function at {request.path}; POST to {paths}"})

    if request.method != "POST":
        return _json(405, {"error": "POST the FunctionGraph event as the request body"})

    event = request.get_json(force=True, silent=True)
    if event is None:
        return _json(400, {"error": "the body must be a JSON FunctionGraph event"})

    handler = _load_handler(function)
    if handler is None:
        return _json(501, {"error": f"functions/{FUNCTIONS[function]}/index.py does not exist"})

    request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
    context = LocalContext(
        user_data=dict(os.environ),
        timeout_seconds=_timeout_seconds(),
        request_id=request_id,
        function_name=FUNCTIONS[function],
    )
    try:
        result = handler(event, context)
    except Exception as error:
        logger.exception(
            "handler raised",
            extra={"event": "handler_error", "function": function, "request_id": request_id},
        )
        return _json(500, error_body(error))
    return _json(200, result)
