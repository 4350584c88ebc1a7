"""A small FunctionGraph v2 API client: the calls deploy needs, signed with our APIG signer.

Every request carries an ``SDK-HMAC-SHA256`` signature from :class:`koogallery.ApigSigner` (the
same signer the functions use for KooGallery), with ``X-Project-Id`` among the signed headers.
A refused request raises :class:`FunctionGraphError` with the API's ``error_code`` and
``error_msg``; a read or an idempotent write that meets throttling or a server error is tried
again a few times.

    settings = DeploySettings.from_env()
    with FunctionGraphApi(settings) as api:
        config = api.get_function_config(urn)      # None when there is no such function
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from koogallery.errors import ConfigurationError, KooGalleryError
from koogallery.signing import ApigSigner, Credentials

__all__ = [
    "DEFAULT_ENDPOINT",
    "DeploySettings",
    "FunctionGraphApi",
    "FunctionGraphError",
]

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://functiongraph.{region}.myhuaweicloud.com"
"""FunctionGraph's public endpoint; ``KOOGALLERY_FUNCTIONGRAPH_ENDPOINT`` replaces it."""

_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE"})
_ATTEMPTS = 3
_BACKOFF_SECONDS = (0.5, 2.0)

_ENV_NAMES = {
    "region": "HUAWEICLOUD_SDK_REGION",
    "project_id": "HUAWEICLOUD_SDK_PROJECT_ID",
    "access_key": "HUAWEICLOUD_SDK_AK",
    "secret_key": "HUAWEICLOUD_SDK_SK",
    "security_token": "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "endpoint": "KOOGALLERY_FUNCTIONGRAPH_ENDPOINT",
}


class FunctionGraphError(KooGalleryError):
    """FunctionGraph refused a request, or could not be reached.

    ``error_code`` is the API's (``FSS.0409``, ``FSS.1051``, ``APIG.0301``...) when it sent one,
    ``status`` the HTTP status (``None`` when no answer came).
    """

    def __init__(
        self,
        operation: str,
        *,
        status: int | None,
        error_code: str | None,
        error_msg: str,
    ) -> None:
        code = f"{error_code} " if error_code else ""
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{operation} failed: {code}{error_msg} ({where})")
        self.operation = operation
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg


class DeploySettings(BaseModel):
    """Where and as whom deploy works: region, project, credentials, endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str
    project_id: str
    access_key: SecretStr
    secret_key: SecretStr
    security_token: SecretStr | None = None
    endpoint: str | None = None

    @field_validator("region")
    @classmethod
    def _region_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-[a-z0-9]+)+", value):
            raise ValueError(
                f"{value!r} is not a region name such as cn-north-4 or ap-southeast-1"
            )
        return value

    @field_validator("project_id")
    @classmethod
    def _project_is_an_id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9]{1,64}", value):
            raise ValueError("is not a project id (letters and digits)")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must start with http:// or https://")
        return value.rstrip("/")

    @property
    def base_url(self) -> str:
        """The endpoint in use: the override, or the region's public one."""
        return self.endpoint or DEFAULT_ENDPOINT.format(region=self.region)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploySettings:
        """Read the ``HUAWEICLOUD_SDK_*`` variables (and the endpoint override) from ``env``."""
        source = os.environ if env is None else env
        missing = [
            variable
            for field, variable in _ENV_NAMES.items()
            if field in ("region", "project_id", "access_key", "secret_key")
            and not source.get(variable)
        ]
        if missing:
            raise ConfigurationError(f"deploy needs {', '.join(missing)} in the environment")

        raw = {field: source.get(variable) or None for field, variable in _ENV_NAMES.items()}
        try:
            return cls.model_validate({key: value for key, value in raw.items() if value})
        except ValidationError as error:
            problems = [
                f"{_ENV_NAMES.get(str(item['loc'][0]), item['loc'][0])}: {item['msg']}"
                for item in error.errors(include_input=False)
            ]
            raise ConfigurationError("; ".join(problems)) from None


class FunctionGraphApi:
    """The FunctionGraph v2 calls deploy makes, each returning the decoded JSON answer."""

    def __init__(
        self,
        settings: DeploySettings,
        *,
        timeout_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        credentials = Credentials(
            settings.access_key, settings.secret_key, settings.security_token
        )
        signer = ApigSigner(credentials, extra_headers={"X-Project-Id": settings.project_id})
        self._client = httpx.Client(
            base_url=f"{settings.base_url}/v2/{settings.project_id}/fgs",
            auth=signer,
            timeout=timeout_seconds,
            headers={"Content-Type": "application/json"},
        )
        self._sleep = sleep

    def __enter__(self) -> FunctionGraphApi:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def get_function_config(self, urn: str) -> dict[str, Any] | None:
        """``GET /functions/{urn}/config``; ``None`` when the function does not exist."""
        return self._optional("GET", f"/functions/{urn}/config", "get function config")

    def create_function(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /functions``: code and configuration in one request."""
        return self._object("POST", "/functions", "create function", body)

    def update_function_code(self, urn: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /functions/{urn}/code``."""
        return self._object("PUT", f"/functions/{urn}/code", "update function code", body)

    def update_function_config(self, urn: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /functions/{urn}/config``: the whole configuration, unset fields included."""
        return self._object("PUT", f"/functions/{urn}/config", "update function config", body)

    def list_triggers(self, urn: str) -> list[dict[str, Any]]:
        """``GET /triggers/{urn}``: the function's triggers (an empty list when it has none)."""
        answer = self._request("GET", f"/triggers/{urn}", "list triggers")
        if answer is None:
            return []
        if not isinstance(answer, list):
            raise FunctionGraphError(
                "list triggers", status=200, error_code=None, error_msg="the answer is not a list"
            )
        return [item for item in answer if isinstance(item, dict)]

    def create_trigger(self, urn: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /triggers/{urn}``."""
        return self._object("POST", f"/triggers/{urn}", "create trigger", body)

    def update_trigger(
        self, urn: str, type_code: str, trigger_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``PUT /triggers/{urn}/{type}/{id}``: FunctionGraph changes only the status this way."""
        path = f"/triggers/{urn}/{type_code}/{trigger_id}"
        return self._object("PUT", path, "update trigger", body)

    def delete_trigger(self, urn: str, type_code: str, trigger_id: str) -> None:
        """``DELETE /triggers/{urn}/{type}/{id}``."""
        self._request("DELETE", f"/triggers/{urn}/{type_code}/{trigger_id}", "delete trigger")

    def get_async_invoke_config(self, urn: str) -> dict[str, Any] | None:
        """``GET /functions/{urn}/async-invoke-config``; ``None`` when none is set."""
        path = f"/functions/{urn}/async-invoke-config"
        return self._optional("GET", path, "get async invoke config")

    def update_async_invoke_config(self, urn: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /functions/{urn}/async-invoke-config``."""
        path = f"/functions/{urn}/async-invoke-config"
        return self._object("PUT", path, "update async invoke config", body)

    def _optional(self, method: str, path: str, operation: str) -> dict[str, Any] | None:
        try:
            return self._object(method, path, operation)
        except FunctionGraphError as error:
            if error.status == 404:
                return None
            raise

    def _object(
        self, method: str, path: str, operation: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        answer = self._request(method, path, operation, body)
        if answer is None:
            return {}
        if not isinstance(answer, dict):
            raise FunctionGraphError(
                operation, status=200, error_code=None, error_msg="the answer is not an object"
            )
        return answer

    def _request(
        self, method: str, path: str, operation: str, body: Mapping[str, Any] | None = None
    ) -> Any:
        """Send once, or up to three times for a retryable failure of an idempotent call."""
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        attempts = _ATTEMPTS if method in _IDEMPOTENT_METHODS else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._client.request(method, path, content=content)
            except httpx.HTTPError as error:
                if attempt == attempts:
                    raise FunctionGraphError(
                        operation, status=None, error_code=None, error_msg=type(error).__name__
                    ) from None
                self._back_off(operation, attempt, None)
                continue

            if response.status_code in _RETRIED_STATUSES and attempt < attempts:
                self._back_off(operation, attempt, response.status_code)
                continue

            return _answer(operation, response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _back_off(self, operation: str, attempt: int, status: int | None) -> None:
        logger.warning(
            "functiongraph call retried",
            extra={
                "event": "functiongraph_retry",
                "operation": operation,
                "attempt": attempt,
                "status": status,
            },
        )
        self._sleep(_BACKOFF_SECONDS[min(attempt, len(_BACKOFF_SECONDS)) - 1])


def _answer(operation: str, response: httpx.Response) -> Any:
    """The decoded body of a 2xx answer, or the API's error as a FunctionGraphError."""
    try:
        data = response.json() if response.content else None
    except ValueError:
        data = None

    if response.is_success:
        return data

    error_code = None
    error_msg = response.reason_phrase or "refused"
    if isinstance(data, dict):
        error_code = data.get("error_code") or data.get("errorCode") or data.get("code")
        error_msg = str(data.get("error_msg") or data.get("errorMsg") or error_msg)
    raise FunctionGraphError(
        operation,
        status=response.status_code,
        error_code=str(error_code) if error_code else None,
        error_msg=error_msg,
    )
