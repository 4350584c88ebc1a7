"""Fixtures and helpers for tests that push usage to the local KooGallery emulator.

Requests are signed with the official ``huaweicloudsdkcore`` signer, the one the product's client
signs with, so a passing test shows real interoperability with the emulator's independent
verifier. The v2 body signature is computed here with ``hmac`` directly, never with the
emulator's own helper, for the same reason.

Fixtures: ``clock`` (a settable UTC clock the emulator runs on), ``emulator`` (started on
127.0.0.1, port 0, with ``HOURLY`` and ``DAILY`` registered and the default credentials),
``client`` (an ``EmulatorClient`` for that emulator) and ``start_emulator`` (a factory for
tests that need another configuration). Test modules load them with
``pytest_plugins = ["tests.emulator_fixtures"]``.

PYTEST_DONT_REWRITE: this module holds no assertions, and test modules import its helpers before
pytest loads it as a plugin, so it opts out of assertion rewriting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_DOMAIN_ID,
    DEFAULT_PARTNER_ID,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    V1_PATH,
    V2_PATH,
    Emulator,
    EmulatorConfig,
    Instance,
    legacy_path,
)

HOURLY = Instance(
    "inst-hourly-0001",
    product_id="prod-hourly",
    unit_price=Decimal("0.5"),
    billing_mode="hourly",
)
DAILY = Instance(
    "inst-daily-0002",
    product_id="prod-daily",
    unit_price=Decimal("1.25"),
    billing_mode="daily",
    entities=("times", "gb"),
)


def compact(moment: datetime) -> str:
    """A UTC time in KooGallery's ``yyyyMMdd'T'HHmmss'Z'`` form (also the X-Sdk-Date form)."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class ManualClock:
    """A UTC clock that stands still until a test moves it, shared by emulator and client."""

    def __init__(self, start: datetime) -> None:
        self._lock = threading.Lock()
        self._now = start

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


class _SignerCredentials:
    """The two attributes ``Signer`` reads from a credentials object."""

    def __init__(self, ak: str, sk: str) -> None:
        self.ak = ak
        self.sk = sk


def seller_signature(seller_key: str, ts: str, nonce: str, body: bytes) -> str:
    """The v2 ``signature`` header: base64 HMAC-SHA256 over ``ts=..&nonce=..&body=..``."""
    message = f"ts={ts}&nonce={nonce}&body=".encode() + body
    return base64.b64encode(
        hmac.new(seller_key.encode(), message, hashlib.sha256).digest()
    ).decode()


@dataclass
class EmulatorClient:
    """Signs and sends requests to one emulator, and reads its admin API.

    client.push_v2([v2_record(client.clock)]).json()
    client.admin("GET", "records")
    """

    emulator: Emulator
    clock: ManualClock
    http: httpx.Client

    def sign(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        ak: str = DEFAULT_AK,
        sk: str = DEFAULT_SK,
        headers: dict[str, str] | None = None,
        query: Sequence[tuple[str, str]] = (),
        sdk_date: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of a request signed by the official signer (all headers signed)."""
        header_params = {
            "Content-Type": "application/json",
            "X-Sdk-Date": sdk_date or compact(self.clock()),
            **(headers or {}),
        }
        request = SdkRequest(
            method=method,
            schema="http",
            host=f"127.0.0.1:{self.emulator.port}",
            resource_path=path,
            query_params=list(query),
            header_params=header_params,
            body=body,
        )
        Signer(_SignerCredentials(ak, sk)).sign(request)
        return self.emulator.url + request.uri, dict(request.header_params)

    def send(
        self, method: str, path: str, body: bytes = b"", **sign_options: Any
    ) -> httpx.Response:
        """Sign (see ``sign``) and send one request."""
        url, headers = self.sign(method, path, body, **sign_options)
        return self.http.request(method, url, headers=headers, content=body)

    def push_v2(
        self,
        records: list[dict[str, Any]],
        *,
        body: bytes | None = None,
        seller_key: str = DEFAULT_SELLER_KEY,
        ts: str | None = None,
        nonce: str | None = None,
        body_headers: dict[str, str] | None = None,
        **send_options: Any,
    ) -> httpx.Response:
        """POST to the v2 endpoint with a correct body signature unless told otherwise."""
        payload = body if body is not None else dumps({"usage_records": records})
        ts = ts or str(int(self.clock().timestamp() * 1000))
        nonce = nonce or uuid.uuid4().hex
        signature_headers = {
            "ts": ts,
            "nonce": nonce,
            "signature": seller_signature(seller_key, ts, nonce, payload),
        }
        if body_headers is not None:
            signature_headers = body_headers

        return self.send("POST", V2_PATH, payload, headers=signature_headers, **send_options)

    def push_v1(self, records: list[dict[str, Any]], **send_options: Any) -> httpx.Response:
        """POST to the v1 endpoint (AK/SK only)."""
        return self.send("POST", V1_PATH, dumps({"usage_records": records}), **send_options)

    def push_legacy(
        self,
        records: list[dict[str, Any]],
        *,
        partner_id: str = DEFAULT_PARTNER_ID,
        **send_options: Any,
    ) -> httpx.Response:
        """POST to the legacy endpoint of a partner (AK/SK only, camelCase body)."""
        body = dumps({"usageRecords": records})
        return self.send("POST", legacy_path(partner_id), body, **send_options)

    def get(
        self,
        path: str,
        query: Mapping[str, Any] | Sequence[tuple[str, Any]] = (),
        *,
        domain_id: str | None = DEFAULT_DOMAIN_ID,
        headers: dict[str, str] | None = None,
        **sign_options: Any,
    ) -> httpx.Response:
        """A signed GET with a query (the bill APIs), sending ``X-Domain-Id`` unless None."""
        pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
        extra = {"X-Domain-Id": domain_id} if domain_id is not None else {}
        url, signed = self.sign(
            "GET",
            path,
            query=[(name, str(value)) for name, value in pairs],
            headers={**extra, **(headers or {})},
            **sign_options,
        )
        return self.http.get(url, headers=signed)

    def admin(self, method: str, route: str, body: Any = None) -> httpx.Response:
        """Call ``/_emulator/{route}`` with an optional JSON body."""
        content = None if body is None else json.dumps(body).encode()
        return self.http.request(method, f"{self.emulator.url}/_emulator/{route}", content=content)


def dumps(value: Any) -> bytes:
    """Compact JSON bytes, the form a client sends and signs."""
    return json.dumps(value, separators=(",", ":")).encode()


def window(clock: ManualClock, hours_ago: int = 1) -> tuple[str, str]:
    """``(begin_time, end_time)`` of the whole hour that ended ``hours_ago - 1`` hours ago."""
    top = clock().replace(minute=0, second=0, microsecond=0)
    begin = top - timedelta(hours=hours_ago)
    return compact(begin), compact(begin + timedelta(hours=1))


def minute_window(clock: ManualClock, minutes_ago: int) -> dict[str, str]:
    """``begin_time``/``end_time`` of a one-minute window, for batches of many distinct windows."""
    top = clock().replace(second=0, microsecond=0)
    begin = top - timedelta(minutes=minutes_ago + 1)
    return {"begin_time": compact(begin), "end_time": compact(begin + timedelta(minutes=1))}


def v2_record(
    clock: ManualClock,
    *,
    instance_id: str = HOURLY.instance_id,
    hours_ago: int = 1,
    usage_value: Any = "1",
    metering_sn: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A valid v2 record for one past hour; ``fields`` override or add wire fields."""
    begin, end = window(clock, hours_ago)
    record = {
        "instance_id": instance_id,
        "record_time": compact(clock()),
        "begin_time": begin,
        "end_time": end,
        "usage_value": usage_value,
        "metering_sn": metering_sn or f"{instance_id}-{begin}",
    }
    record.update(fields)
    return record


def v1_record(
    clock: ManualClock,
    *,
    instance: Instance = HOURLY,
    hours_ago: int = 1,
    usage_value: Any = "1",
    **fields: Any,
) -> dict[str, Any]:
    """A valid v1 record (``product_id``, no ``metering_sn``) for one past hour."""
    begin, end = window(clock, hours_ago)
    record = {
        "instance_id": instance.instance_id,
        "product_id": instance.product_id,
        "record_time": compact(clock()),
        "begin_time": begin,
        "end_time": end,
        "usage_value": usage_value,
    }
    record.update(fields)
    return record


def legacy_record(
    clock: ManualClock,
    *,
    instance_id: str = HOURLY.instance_id,
    hours_ago: int = 1,
    usage_entity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A valid legacy camelCase record for one past hour."""
    begin, end = window(clock, hours_ago)
    return {
        "instanceId": instance_id,
        "recordTime": compact(clock()),
        "beginTime": begin,
        "endTime": end,
        "usageEntity": usage_entity if usage_entity is not None else {"times": "3"},
    }


@pytest.fixture
def clock() -> ManualClock:
    """The platform clock, starting at the current second."""
    return ManualClock(datetime.now(timezone.utc).replace(microsecond=0))


@pytest.fixture
def emulator(clock: ManualClock) -> Iterator[Emulator]:
    """An emulator on 127.0.0.1 port 0 with HOURLY and DAILY registered, default credentials."""
    config = EmulatorConfig(instances=[HOURLY, DAILY])
    with Emulator(config, clock=clock) as emu:
        yield emu


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """An HTTP client that ignores proxy settings from the environment."""
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        yield client


@pytest.fixture
def client(emulator: Emulator, clock: ManualClock, http: httpx.Client) -> EmulatorClient:
    """A signing client for the ``emulator`` fixture."""
    return EmulatorClient(emulator, clock, http)


@pytest.fixture
def start_emulator(
    clock: ManualClock, http: httpx.Client
) -> Iterator[Callable[[EmulatorConfig], EmulatorClient]]:
    """Start emulators with other configurations; each is stopped when the test ends."""
    started: list[Emulator] = []

    def start(config: EmulatorConfig) -> EmulatorClient:
        emu = Emulator(config, clock=clock).start()
        started.append(emu)
        return EmulatorClient(emu, clock, http)

    yield start

    for emu in started:
        emu.stop()
