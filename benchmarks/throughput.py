"""Records per second: the client alone, the handler end to end, and the emulator.

Each measurement runs beside its baseline in the same process and the same minute, best of a
few interleaved rounds, so that a noisy neighbour slows both sides alike:

- client overhead: ``UsageRecord.parse`` and ``KooGalleryClient.push_usage`` (``metering_sn``,
  serialisation, body and APIG signatures) into an in-process transport that only reads each
  request, against the floor of ``json.dumps`` and one HMAC over the very same bytes;
- end to end: Kafka trigger events through ``functions/usage_push/index.py`` into the emulator,
  with and without the SQLite ledger, against huaweicloudsdkcore's own client (``requests``)
  making the same pushes without any validation;
- emulator: how many records the emulator accepts per second with both signature checks on.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from benchmarks.loopback import EmulatorProcess, NonLoopbackError, is_loopback
from benchmarks.report import Figure, Section
from benchmarks.workload import MESSAGES_PER_EVENT, RECORDS_PER_MESSAGE, Workload
from koogallery.client import KooGalleryClient
from koogallery.config import Settings
from koogallery.emulator import DEFAULT_AK, DEFAULT_SELLER_KEY, DEFAULT_SK, V2_PATH
from koogallery.functiongraph import LocalContext
from koogallery.models import UsageRecord
from koogallery.signing import JSON_CONTENT_TYPE, ApigSigner, BodySigner, Credentials, SigningChain

__all__ = ["client_overhead", "emulator_throughput", "end_to_end"]

ROOT = Path(__file__).resolve().parents[1]
BATCH = 5_000
"""Records validated and pushed per call, as ``koogallery push`` does by default."""

CHUNK = 1_000
"""Records per request: KooGallery's limit and the client's default chunk size."""

_ACCEPTED = b'{"error_code":"MKT.0000","error_msg":"success","extra_info":{"duplicates":[]}}'
_UNUSED_ENDPOINT = "http://127.0.0.1:9"
"""The client needs an endpoint; the in-process transport answers before any socket opens."""


def _credentials(endpoint: str) -> dict[str, str]:
    """The emulator's default (obviously fake) credentials, as the function's user data."""
    return {
        "KOOGALLERY_ENDPOINT": endpoint,
        "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
        "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
        "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
    }


class _ReadingTransport(httpx.BaseTransport):
    """Reads each request to its last byte and answers as KooGallery does when all is taken."""

    def __init__(self) -> None:
        self.requests = 0
        self.body_bytes = 0
        self.first_body: bytes | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.requests += 1
        self.body_bytes += len(body)
        if self.first_body is None:
            self.first_body = body
        return httpx.Response(200, content=_ACCEPTED)


def _floor_seconds(wire: list[dict[str, str]], key: bytes) -> tuple[float, bytes]:
    """Seconds for the least any client must do: serialise each request body and HMAC it."""
    began = time.perf_counter()
    first_body = b""
    for first in range(0, len(wire), CHUNK):
        payload = {"usage_records": wire[first : first + CHUNK]}
        body = json.dumps(payload, separators=(",", ":")).encode("ascii")
        hmac.new(key, b"ts=0&nonce=0&body=" + body, hashlib.sha256).digest()
        first_body = first_body or body
    return time.perf_counter() - began, first_body


def _client_seconds(
    client: KooGalleryClient, raw: list[dict[str, Any]], workload: Workload
) -> float:
    """Seconds to validate ``raw`` and push it through ``client``, every record accepted."""
    began = time.perf_counter()
    records = [UsageRecord.parse(item, now=workload.now) for item in raw]
    result = client.push_usage(records)
    elapsed = time.perf_counter() - began

    if len(result.accepted) != len(raw):
        raise RuntimeError(f"the client accepted {len(result.accepted)} of {len(raw)} records")
    return elapsed


def _round(workload: Workload) -> tuple[float, float]:
    """Client and floor seconds over the whole workload, taking turns batch by batch.

    Taking turns every few milliseconds puts a burst of a neighbour's load on both sides
    alike. Making the input (the records, and their wire form for the floor) is not counted.
    """
    key = DEFAULT_SELLER_KEY.encode()
    transport = _ReadingTransport()
    settings = Settings.from_env(_credentials(_UNUSED_ENDPOINT).get)
    client_total = floor_total = 0.0
    with KooGalleryClient(settings, transport=transport) as client:
        for start in range(0, workload.size, BATCH):
            raw, wire = workload.raw(start, start + BATCH), workload.wire(start, start + BATCH)

            floor_seconds, floor_body = _floor_seconds(wire, key)
            transport.first_body = None
            client_total += _client_seconds(client, raw, workload)
            floor_total += floor_seconds

            if transport.first_body != floor_body:
                raise RuntimeError("the floor did not serialise the bytes the client sent")
    return client_total, floor_total


def client_overhead(sizes: Sequence[int], rounds: Callable[[int], int]) -> Section:
    """Records per second through the client, and how many times the floor's time it takes."""
    section = Section(
        "client_overhead",
        "Client overhead (validation, metering_sn, serialisation, both signatures)",
    )
    for size in sizes:
        workload = Workload(size)
        client_best = floor_best = float("inf")
        for _ in range(rounds(size)):
            client_seconds, floor_seconds = _round(workload)
            client_best = min(client_best, client_seconds)
            floor_best = min(floor_best, floor_seconds)

        client_rate, floor_rate = size / client_best, size / floor_best
        ratio = floor_rate / client_rate
        section.figures.append(
            Figure(
                f"{size:,} records",
                client_rate,
                "records/s",
                baseline=floor_rate,
                baseline_name="json.dumps + HMAC",
                ratio=ratio,
                target="ratio <= 3.0 and >= 100,000/s",
                met=ratio <= 3.0 and client_rate >= 100_000,
            )
        )
    section.notes.append(
        "ratio = client time / floor time; the floor serialises the same request bodies "
        "(checked byte for byte) and HMACs each once; one core, batches of 5,000"
    )
    return section


def _load_handler(name: str) -> Callable[[Any, Any], Any]:
    """The handler of ``functions/<name>/index.py``: the file that is packaged and deployed."""
    path = ROOT / "functions" / name / "index.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}_index", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Callable[[Any, Any], Any] = module.handler
    return handler


def _handler_push(
    handler: Callable[[Any, Any], Any], event: dict[str, Any], user_data: dict[str, str]
) -> int:
    """Hand one event to the handler, as FunctionGraph does; returns how many it accepted."""
    context = LocalContext(user_data=user_data, timeout_seconds=300)
    accepted: int = handler(event, context)["accepted"]
    return accepted


def _sdk_client(url: str) -> Any:
    """huaweicloudsdkcore's own client, pointed at the emulator only, with full credentials.

    ``project_id`` is given so the SDK never asks IAM for one, and AK/SK are given so it never
    walks its credential chain towards a metadata address; the endpoint list is the emulator's
    URL alone. Both are checked before the first request.
    """
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.client import Client, ClientBuilder
    from huaweicloudsdkcore.sdk_response import SdkResponse

    class PushUsageResponse(SdkResponse):  # type: ignore[misc]
        """The answer model a generated service client would declare (no fields read)."""

        openapi_types: ClassVar[dict[str, str]] = {}
        attribute_map: ClassVar[dict[str, str]] = {}

    credentials = BasicCredentials(DEFAULT_AK, DEFAULT_SK, project_id="bench-project")
    client = ClientBuilder(Client).with_credentials(credentials).with_endpoints([url]).build()
    client.model_package = SimpleNamespace(PushUsageResponse=PushUsageResponse)

    endpoints: list[str] = client._endpoints
    if not endpoints or not all(is_loopback(httpx.URL(item).host) for item in endpoints):
        raise NonLoopbackError(f"the SDK client would reach {endpoints}")
    if not (credentials.ak and credentials.sk and credentials.project_id):
        raise NonLoopbackError("the SDK client lacks credentials and would look them up")
    return client


def _baseline_push(client: Any, event: dict[str, Any], key: bytes) -> None:
    """The same push with the SDK's client: read the messages, add what the wire needs
    (``record_time``, ``metering_sn``), serialise, sign the body, send; nothing is validated."""
    wire = []
    for record in event["records"]:
        for message in record["messages"]:
            for item in json.loads(message)["usage_records"]:
                window = f"{item['instance_id']}|{item['begin_time']}|{item['end_time']}|"
                item["record_time"] = item["end_time"]
                item["metering_sn"] = hashlib.sha256(window.encode()).hexdigest()
                wire.append(item)
    body = json.dumps({"usage_records": wire}, sort_keys=True, separators=(",", ":"))

    ts, nonce = str(time.time_ns() // 1_000_000), secrets.token_hex(16)
    signed = f"ts={ts}&nonce={nonce}&body={body}".encode()
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    headers = {
        "Content-Type": JSON_CONTENT_TYPE,
        "ts": ts,
        "nonce": nonce,
        "signature": signature.decode("ascii"),
    }
    response = client.do_http_request(
        "POST", V2_PATH, header_params=headers, body=body, response_type="PushUsageResponse"
    )
    if response.status_code != 200:
        raise RuntimeError(f"the emulator refused the SDK's push: {response.raw_content!r}")


_VARIANTS = ("baseline", "plain", "ledger")


def _e2e_round(
    emulator: EmulatorProcess,
    sdk: Any,
    handler: Callable[[Any, Any], Any],
    events: dict[str, list[dict[str, Any]]],
    ledger: Path,
) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds and accepted records of each variant, taking turns event by event.

    Each variant pushes records of its own instances, so the three can share one emulator
    and take turns every few milliseconds: a burst of a neighbour's load then falls on all of
    them alike. The handler's JSON log lines go to the null device: written, paid for, unseen.
    """
    emulator.reset()
    plain = _credentials(emulator.url)
    with_ledger = {**plain, "KOOGALLERY_LEDGER_URL": f"sqlite:///{ledger}"}
    baseline_events = [json.loads(json.dumps(event)) for event in events["baseline"]]
    key = DEFAULT_SELLER_KEY.encode()
    seconds = dict.fromkeys(_VARIANTS, 0.0)
    accepted = dict.fromkeys(_VARIANTS, 0)

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        for index, baseline_event in enumerate(baseline_events):
            began = time.perf_counter()
            _baseline_push(sdk, baseline_event, key)
            seconds["baseline"] += time.perf_counter() - began

            for variant, user_data in (("plain", plain), ("ledger", with_ledger)):
                began = time.perf_counter()
                accepted[variant] += _handler_push(handler, events[variant][index], user_data)
                seconds[variant] += time.perf_counter() - began

    return seconds, accepted


def end_to_end(records: int, rounds: int) -> Section:
    """Handler records per second (plain and with the SQLite ledger) against the SDK's."""
    section = Section(
        "end_to_end",
        "End to end: Kafka events -> handler -> emulator (subprocess on loopback)",
    )
    events = {
        variant: list(Workload(records, time_form="compact", prefix=variant).kafka_events())
        for variant in _VARIANTS
    }
    handler = _load_handler("usage_push")
    best = dict.fromkeys(_VARIANTS, float("inf"))

    with EmulatorProcess() as emulator, tempfile.TemporaryDirectory() as folder:
        sdk = _sdk_client(emulator.url)
        for round_number in range(rounds):
            ledger = Path(folder) / f"ledger-{round_number}.db"
            seconds, accepted = _e2e_round(emulator, sdk, handler, events, ledger)
            for variant in ("plain", "ledger"):
                if accepted[variant] != records:
                    raise RuntimeError(
                        f"the handler ({variant}) accepted {accepted[variant]} of {records}"
                    )
            _expect_stored(emulator, len(_VARIANTS) * records, "the three variants")
            best = {variant: min(best[variant], seconds[variant]) for variant in _VARIANTS}
        _close_ledgers()

    baseline_rate = records / best["baseline"]
    for variant, label in (("plain", "handler, no ledger"), ("ledger", "handler + SQLite ledger")):
        rate = records / best[variant]
        section.figures.append(
            Figure(
                label,
                rate,
                "records/s",
                baseline=baseline_rate,
                baseline_name="huaweicloudsdkcore client",
                ratio=rate / baseline_rate,
                target="ratio >= 1.0",
                met=rate >= baseline_rate,
            )
        )
    section.notes.append(
        f"{records:,} records per variant in events of {MESSAGES_PER_EVENT} messages x "
        f"{RECORDS_PER_MESSAGE} records (one 1000-record request each), variants taking turns "
        "event by event; ratio = handler rate / SDK rate; both keep their client between "
        "events, as a warm function instance does"
    )
    return section


def _expect_stored(emulator: EmulatorProcess, records: int, who: str) -> None:
    stored = emulator.stored_records()
    if stored != records:
        raise RuntimeError(f"{who} left {stored} records in the emulator, expected {records}")


def _close_ledgers() -> None:
    """Close the SQLite ledgers the handler opened (it keeps one per URL for warm starts)."""
    from koogallery import usage_push

    for ledger in usage_push._ledgers.values():
        ledger.close()
    usage_push._ledgers.clear()


def emulator_throughput(requests: int) -> Section:
    """Records per second the emulator takes, APIG and body signatures checked on each request.

    The bodies are made before the clock starts; each request is signed as it is sent, since a
    replayed nonce would be refused. The figure includes that signing and the loopback hop.
    """
    section = Section("emulator", "Emulator: records accepted per second, signatures checked")
    workload = Workload(requests * CHUNK, time_form="compact")
    bodies = [
        json.dumps({"usage_records": workload.wire(start, start + CHUNK)}).encode()
        for start in range(0, workload.size, CHUNK)
    ]
    auth = SigningChain(
        BodySigner(SecretStr(DEFAULT_SELLER_KEY)),
        ApigSigner(Credentials.of(DEFAULT_AK, DEFAULT_SK)),
    )

    with EmulatorProcess() as emulator:
        headers = {"Content-Type": JSON_CONTENT_TYPE}
        with httpx.Client(auth=auth, headers=headers, timeout=60, trust_env=False) as http:
            began = time.perf_counter()
            for body in bodies:
                response = http.post(emulator.url + V2_PATH, content=body)
                if response.status_code != 200:
                    raise RuntimeError(f"the emulator refused a request: {response.text[:200]}")
            elapsed = time.perf_counter() - began
        _expect_stored(emulator, workload.size, "the emulator")

    rate = workload.size / elapsed
    section.figures.append(Figure(f"{workload.size:,} records", rate, "records/s"))
    section.notes.append("one connection, requests of 1000 records, emulator in its own process")
    return section
