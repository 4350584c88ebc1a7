"""A local fake of the FunctionGraph v2 endpoints that deploy uses, for the deploy tests.

It is a real HTTP server on 127.0.0.1 (a free port) that keeps state like the service does:
functions with their configuration and code, their triggers and their async-invocation
settings. Every request must carry a valid APIG ``SDK-HMAC-SHA256`` signature, checked by the
emulator's independent verifier, and an ``X-Project-Id`` that matches the path; every body is
checked field by field, unknown fields refused, so a request of the wrong shape fails the test
instead of passing silently. ``refuse`` makes the next matching request fail with a chosen
FunctionGraph error.

    with FakeFunctionGraph() as fake:
        env = fake.environment()              # HUAWEICLOUD_SDK_* and the endpoint override
        ...                                   # run deploy against fake.url
        fake.functions, fake.triggers, fake.writes()
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from koogallery.emulator import Credential
from koogallery.emulator.apig import SignedRequest, verify
from koogallery.emulator.errors import ApiError

__all__ = ["FakeFunctionGraph", "FakeRefusal", "Recorded", "UnexpectedRequest"]

PROJECT_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
REGION = "xx-test-1"
ACCESS_KEY = "FAKEFGSAK00000000000"
SECRET_KEY = "fake-functiongraph-sk-not-real"

_CONFIG_FIELDS = {
    "func_name": str,
    "runtime": str,
    "handler": str,
    "memory_size": int,
    "timeout": int,
    "description": str,
    "user_data": str,
    "encrypted_user_data": str,
    "xrole": str,
    "app_xrole": str,
    "func_vpc": dict,
}
_CONFIG_REQUIRED = {"func_name", "runtime", "handler", "memory_size", "timeout"}
_CODE_FIELDS = {"code_type": str, "code_filename": str, "func_code": dict}
_CREATE_FIELDS = {**_CONFIG_FIELDS, **_CODE_FIELDS, "package": str}
_TRIGGER_FIELDS = {
    "trigger_type_code": str,
    "trigger_status": str,
    "event_type_code": str,
    "event_data": dict,
}
_ASYNC_FIELDS = {
    "max_async_retry_attempts": int,
    "max_async_event_age_in_seconds": int,
    "destination_config": dict,
    "enable_async_status_log": bool,
}
_RUNTIMES = {"Python3.10", "Python3.12"}


class UnexpectedRequest(AssertionError):
    """A request the fake does not serve or whose shape is wrong; recorded for the test."""


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it (the body decoded, code files left out)."""

    method: str
    path: str
    body: Any


@dataclass
class FakeRefusal:
    """An error to answer the next ``times`` requests matching ``method`` and ``path_part``."""

    method: str
    path_part: str
    status: int
    error_code: str
    error_msg: str
    times: int = 1


@dataclass
class _Refused(Exception):
    status: int
    error_code: str
    error_msg: str


@dataclass
class _State:
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, bytes] = field(default_factory=dict)
    triggers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    async_configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _check_fields(body: Any, allowed: Mapping[str, type], required: set[str], what: str) -> None:
    if not isinstance(body, dict):
        raise _Refused(400, "FSS.0400", f"{what}: the body is not a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _Refused(400, "FSS.0400", f"{what}: unknown fields {unknown}")
    missing = sorted(required - set(body))
    if missing:
        raise _Refused(400, "FSS.0400", f"{what}: missing fields {missing}")
    for name, value in body.items():
        expected = allowed[name]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise _Refused(400, "FSS.0400", f"{what}: {name} must be a {expected.__name__}")


def _check_json_object_text(body: Mapping[str, Any], name: str) -> None:
    if name not in body:
        return
    try:
        value = json.loads(body[name])
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise _Refused(400, "FSS.1009", f"{name} must be a JSON object of strings, as text")


def _check_config(body: Mapping[str, Any]) -> None:
    if body["runtime"] not in _RUNTIMES:
        raise _Refused(400, "FSS.1005", "Invalid runtime.")
    if not 3 <= body["timeout"] <= 900:
        raise _Refused(400, "FSS.1008", "Invalid function timeout.")
    if len(body.get("description", "")) > 512:
        raise _Refused(400, "FSS.0400", "description is longer than 512 characters")
    _check_json_object_text(body, "user_data")
    _check_json_object_text(body, "encrypted_user_data")
    vpc = body.get("func_vpc")
    if vpc is not None and set(vpc) != {"vpc_id", "subnet_id"}:
        raise _Refused(400, "FSS.0400", "func_vpc needs vpc_id and subnet_id")


def _decode_code(body: Mapping[str, Any]) -> bytes:
    if body.get("code_type") != "zip" or not body.get("code_filename", "").endswith(".zip"):
        raise _Refused(400, "FSS.1006", "Invalid function code entry mode.")
    code = body.get("func_code") or {}
    if set(code) != {"file"}:
        raise _Refused(400, "FSS.1011", "func_code must hold file only")
    try:
        data = base64.b64decode(code["file"], validate=True)
    except (binascii.Error, TypeError):
        raise _Refused(400, "FSS.1011", "func_code.file is not base64") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise _Refused(400, "FSS.1013", "Invalid file type.")
    return data


class FakeFunctionGraph:
    """The FunctionGraph v2 API on loopback, for one project of one region."""

    def __init__(
        self,
        *,
        project_id: str = PROJECT_ID,
        region: str = REGION,
        security_token: str | None = None,
    ) -> None:
        self.project_id = project_id
        self.region = region
        self.security_token = security_token
        self.credentials = {
            ACCESS_KEY: Credential(ACCESS_KEY, SECRET_KEY, security_token=security_token)
        }
        self.requests: list[Recorded] = []
        self.unexpected: list[str] = []
        self.refusals: list[FakeRefusal] = []
        self._state = _State()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeFunctionGraph:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def environment(self, **extra: str) -> dict[str, str]:
        """What deploy reads from the environment to reach this fake."""
        env = {
            "HUAWEICLOUD_SDK_REGION": self.region,
            "HUAWEICLOUD_SDK_PROJECT_ID": self.project_id,
            "HUAWEICLOUD_SDK_AK": ACCESS_KEY,
            "HUAWEICLOUD_SDK_SK": SECRET_KEY,
            "KOOGALLERY_FUNCTIONGRAPH_ENDPOINT": self.url,
        }
        if self.security_token is not None:
            env["HUAWEICLOUD_SDK_SECURITY_TOKEN"] = self.security_token
        return {**env, **extra}

    def urn(self, name: str, package: str = "default") -> str:
        return f"urn:fss:{self.region}:{self.project_id}:function:{package}:{name}"

    @property
    def functions(self) -> dict[str, dict[str, Any]]:
        return self._state.functions

    @property
    def codes(self) -> dict[str, bytes]:
        return self._state.codes

    @property
    def triggers(self) -> dict[str, list[dict[str, Any]]]:
        return self._state.triggers

    @property
    def async_configs(self) -> dict[str, dict[str, Any]]:
        return self._state.async_configs

    def writes(self) -> list[tuple[str, str]]:
        """The method and path of every request that changed something, in order."""
        return [(item.method, item.path) for item in self.requests if item.method != "GET"]

    def clear_log(self) -> None:
        self.requests.clear()

    def refuse(
        self,
        method: str,
        path_part: str,
        *,
        status: int = 400,
        error_code: str = "FSS.1051",
        error_msg: str = "The request was refused.",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests whose path contains ``path_part`` with an error."""
        self.refusals.append(FakeRefusal(method, path_part, status, error_code, error_msg, times))

    def add_trigger(self, name: str, trigger: Mapping[str, Any]) -> str:
        """Put a trigger on a function directly, as the console would."""
        trigger_id = str(uuid.uuid4())
        self._state.triggers.setdefault(self.urn(name), []).append(
            {"trigger_id": trigger_id, **trigger}
        )
        return trigger_id

    def serve(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        """Answer one request: signature, refusals, then the route."""
        path = urlsplit(raw_path).path
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = "<not JSON>"

        with self._lock:
            self.requests.append(Recorded(method, unquote(path), _without_code(decoded)))
            try:
                self._check_signature(method, raw_path, headers, body)
                self._apply_refusals(method, unquote(path))
                return self._route(method, unquote(path), decoded)
            except _Refused as refusal:
                return refusal.status, {
                    "error_code": refusal.error_code,
                    "error_msg": refusal.error_msg,
                }
            except ApiError as error:
                return error.http_status, {
                    "error_code": error.error_code,
                    "error_msg": error.error_msg,
                }
            except UnexpectedRequest as error:
                self.unexpected.append(str(error))
                return 404, {"error_code": "FSS.0404", "error_msg": str(error)}

    def _check_signature(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        parts = urlsplit(raw_path)
        request = SignedRequest(method, parts.path, parts.query, headers, body)
        verify(request, self.credentials, datetime.now(timezone.utc))
        if headers.get("x-project-id") != self.project_id:
            raise _Refused(403, "FSS.0403", "X-Project-Id does not match the project")
        signed = headers.get("authorization", "").split("SignedHeaders=", 1)[-1]
        if "x-project-id" not in signed.split(",", 1)[0].split(";"):
            raise _Refused(401, "APIG.0301", "X-Project-Id must be signed")

    def _apply_refusals(self, method: str, path: str) -> None:
        for refusal in self.refusals:
            if refusal.times > 0 and refusal.method == method and refusal.path_part in path:
                refusal.times -= 1
                raise _Refused(refusal.status, refusal.error_code, refusal.error_msg)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        prefix = f"/v2/{self.project_id}/fgs/"
        if not path.startswith(prefix):
            raise UnexpectedRequest(f"{method} {path}: not under {prefix}")
        rest = path[len(prefix) :]
        urn = r"(urn:fss:[^/]+?)(?::latest)?"

        routes = [
            ("POST", r"functions", self._create_function),
            ("GET", rf"functions/{urn}/config", self._get_config),
            ("PUT", rf"functions/{urn}/config", self._put_config),
            ("PUT", rf"functions/{urn}/code", self._put_code),
            ("GET", rf"functions/{urn}/async-invoke-config", self._get_async),
            ("PUT", rf"functions/{urn}/async-invoke-config", self._put_async),
            ("GET", rf"triggers/{urn}", self._list_triggers),
            ("POST", rf"triggers/{urn}", self._create_trigger),
            ("PUT", rf"triggers/{urn}/([A-Z]+)/([^/]+)", self._update_trigger),
            ("DELETE", rf"triggers/{urn}/([A-Z]+)/([^/]+)", self._delete_trigger),
        ]
        for route_method, pattern, action in routes:
            match = re.fullmatch(pattern, rest)
            if match and route_method == method:
                return action(body, *match.groups())  # type: ignore[operator]
        raise UnexpectedRequest(f"{method} {path}: no such FunctionGraph API")

    def _function(self, urn: str) -> dict[str, Any]:
        if urn not in self._state.functions:
            raise _Refused(404, "FSS.0404", "The specified resource was not found.")
        return self._state.functions[urn]

    def _create_function(self, body: Any) -> tuple[int, Any]:
        _check_fields(body, _CREATE_FIELDS, _CONFIG_REQUIRED | {"package", "code_type"}, "create")
        _check_config(body)
        code = _decode_code(body)
        urn = self.urn(body["func_name"], body["package"])
        if urn in self._state.functions:
            raise _Refused(409, "FSS.0409", "The specified resource already exists.")

        config = {
            key: value
            for key, value in body.items()
            if key not in ("func_code", "encrypted_user_data")
        }
        config.update(func_urn=urn, code_size=len(code), code_type="zip")
        self._state.functions[urn] = config
        self._state.codes[urn] = code
        return 200, config

    def _get_config(self, body: Any, urn: str) -> tuple[int, Any]:
        if body is not None:
            raise _Refused(400, "FSS.0400", "a GET has no body")
        return 200, self._function(urn)

    def _put_config(self, body: Any, urn: str) -> tuple[int, Any]:
        config = self._function(urn)
        _check_fields(body, _CONFIG_FIELDS, _CONFIG_REQUIRED, "update config")
        _check_config(body)
        if body["func_name"] != config["func_name"]:
            raise _Refused(400, "FSS.1002", "Invalid function name.")

        kept = {
            key: config[key]
            for key in ("func_urn", "package", "code_size", "code_type", "code_filename")
        }
        updated = {key: value for key, value in body.items() if key != "encrypted_user_data"}
        self._state.functions[urn] = {**kept, **updated}
        return 200, self._state.functions[urn]

    def _put_code(self, body: Any, urn: str) -> tuple[int, Any]:
        config = self._function(urn)
        _check_fields(body, _CODE_FIELDS, set(_CODE_FIELDS), "update code")
        code = _decode_code(body)
        self._state.codes[urn] = code
        config.update(code_size=len(code), code_filename=body["code_filename"])
        return 200, config

    def _get_async(self, body: Any, urn: str) -> tuple[int, Any]:
        self._function(urn)
        if urn not in self._state.async_configs:
            raise _Refused(404, "FSS.0404", "The specified resource was not found.")
        return 200, self._state.async_configs[urn]

    def _put_async(self, body: Any, urn: str) -> tuple[int, Any]:
        self._function(urn)
        required = {"max_async_retry_attempts", "max_async_event_age_in_seconds"}
        _check_fields(body, _ASYNC_FIELDS, required, "async invoke config")
        for target in (body.get("destination_config") or {}).values():
            if not isinstance(target.get("param"), str):
                raise _Refused(400, "FSS.0400", "destination param must be JSON text")
        self._state.async_configs[urn] = {"func_urn": urn, **body}
        return 200, self._state.async_configs[urn]

    def _list_triggers(self, body: Any, urn: str) -> tuple[int, Any]:
        self._function(urn)
        return 200, self._state.triggers.get(urn, [])

    def _create_trigger(self, body: Any, urn: str) -> tuple[int, Any]:
        self._function(urn)
        _check_fields(body, _TRIGGER_FIELDS, {"trigger_type_code", "event_data"}, "trigger")
        if body.get("trigger_status", "ACTIVE") not in ("ACTIVE", "DISABLED"):
            raise _Refused(400, "FSS.0400", "trigger_status must be ACTIVE or DISABLED")

        trigger = {"trigger_id": str(uuid.uuid4()), "trigger_status": "ACTIVE", **body}
        trigger.pop("event_type_code", None)
        self._state.triggers.setdefault(urn, []).append(trigger)
        return 201, trigger

    def _find_trigger(self, urn: str, type_code: str, trigger_id: str) -> dict[str, Any]:
        for trigger in self._state.triggers.get(urn, []):
            if trigger["trigger_id"] == trigger_id and trigger["trigger_type_code"] == type_code:
                return trigger
        raise _Refused(404, "FSS.0404", "The specified resource was not found.")

    def _update_trigger(
        self, body: Any, urn: str, type_code: str, trigger_id: str
    ) -> tuple[int, Any]:
        trigger = self._find_trigger(urn, type_code, trigger_id)
        _check_fields(body, {"trigger_status": str}, {"trigger_status"}, "update trigger")
        trigger["trigger_status"] = body["trigger_status"]
        return 200, trigger

    def _delete_trigger(
        self, body: Any, urn: str, type_code: str, trigger_id: str
    ) -> tuple[int, Any]:
        trigger = self._find_trigger(urn, type_code, trigger_id)
        self._state.triggers[urn].remove(trigger)
        return 204, None


def _without_code(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("func_code"), dict):
        return {**body, "func_code": {"file": "<zip>"}}
    return body


def _handler_for(fake: FakeFunctionGraph) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer = fake.serve(self.command, self.path, headers, body)

            payload = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads ``fake.requests`` instead."""

    return Handler
