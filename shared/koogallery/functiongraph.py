"""What the library needs from FunctionGraph's ``context``, and a local stand-in for it.

FunctionGraph hands a Python handler a context object with camel-case getters. This module reads
settings, credentials, the request id and the time budget from it, and offers ``LocalContext``
with the same getters for local runs (``koogallery invoke``, ``koogallery serve``, tests).

    settings = settings_from_context(context)
    deadline = deadline_from_context(context, settings.deadline_margin_seconds)
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from koogallery.config import EnvGetter, Settings

__all__ = [
    "LocalContext",
    "deadline_from_context",
    "http_response",
    "request_id_of",
    "settings_from_context",
    "user_data_getter",
]


def _call(context: object, getter: str, *args: object) -> Any:
    """Call a context getter if this runtime has it; some runtimes lack a few of them."""
    method = getattr(context, getter, None)
    if method is None:
        return None
    try:
        return method(*args)
    except Exception:  # a missing key or an unsupported getter must not fail the invocation
        return None


def user_data_getter(context: object | None) -> EnvGetter:
    """Look a setting up in the function's user data first, then in the process environment."""

    def get(name: str) -> str | None:
        value = _call(context, "getUserData", name) if context is not None else None
        if value not in (None, ""):
            return str(value)
        return os.environ.get(name)

    return get


def settings_from_context(context: object | None, **overrides: object) -> Settings:
    """Settings from user data or the environment; credentials fall back to the agency's.

    A function with an agency gets temporary AK/SK and a security token from the context. They
    are used only when ``HUAWEICLOUD_SDK_AK`` is not configured, so an explicit key always wins.
    """
    getter = user_data_getter(context)
    if getter("HUAWEICLOUD_SDK_AK") is None and context is not None:
        agency = {
            "access_key": _call(context, "getSecurityAccessKey"),
            "secret_key": _call(context, "getSecuritySecretKey"),
            "security_token": _call(context, "getSecurityToken"),
        }
        if agency["access_key"] and agency["secret_key"]:
            overrides = {**{k: v for k, v in agency.items() if v}, **overrides}
    return Settings.from_env(getter, **overrides)


def request_id_of(context: object | None) -> str:
    """The invocation's request id (a fresh one when the runtime gives none)."""
    value = _call(context, "getRequestID") if context is not None else None
    return str(value) if value else str(uuid.uuid4())


def deadline_from_context(context: object | None, margin_seconds: float) -> float | None:
    """A ``time.monotonic()`` moment to finish by, ``margin_seconds`` before the forced stop."""
    remaining = _call(context, "getRemainingTimeInMilliSeconds") if context is not None else None
    if remaining is None:
        return None
    try:
        return time.monotonic() + float(remaining) / 1000 - margin_seconds
    except (TypeError, ValueError):
        return None


def http_response(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """The response object an APIG trigger expects from a handler."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body, default=str),
        "isBase64Encoded": False,
    }


class LocalContext:
    """A FunctionGraph-like context for running handlers on this machine.

    It answers the getters the product uses with the values given here, so a local run behaves
    like one in the cloud: user data, temporary credentials, a request id and a time budget.
    """

    def __init__(
        self,
        *,
        user_data: Mapping[str, str] | None = None,
        timeout_seconds: float = 30.0,
        request_id: str | None = None,
        function_name: str = "usage_push",
        security_access_key: str | None = None,
        security_secret_key: str | None = None,
        security_token: str | None = None,
    ) -> None:
        self._user_data = dict(user_data or {})
        self._timeout = timeout_seconds
        self._started = time.monotonic()
        self._request_id = request_id or str(uuid.uuid4())
        self._function_name = function_name
        self._access_key = SecretStr(security_access_key or "")
        self._secret_key = SecretStr(security_secret_key or "")
        self._token = SecretStr(security_token or "")

    def __repr__(self) -> str:
        return f"LocalContext(request_id={self._request_id!r}, function={self._function_name!r})"

    def getRequestID(self) -> str:
        return self._request_id

    def getRemainingTimeInMilliSeconds(self) -> int:
        elapsed = time.monotonic() - self._started
        return max(0, int((self._timeout - elapsed) * 1000))

    def getUserData(self, key: str) -> str | None:
        return self._user_data.get(key)

    def getSecurityAccessKey(self) -> str:
        return self._access_key.get_secret_value()

    def getSecuritySecretKey(self) -> str:
        return self._secret_key.get_secret_value()

    def getSecurityToken(self) -> str:
        return self._token.get_secret_value()

    def getFunctionName(self) -> str:
        return self._function_name

    def getRunningTimeInSeconds(self) -> int:
        return int(self._timeout)

    def getMemorySize(self) -> int:
        return 256

    def getLogger(self) -> logging.Logger:
        return logging.getLogger(f"koogallery.function.{self._function_name}")
