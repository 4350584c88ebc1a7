"""The KooGallery usage client: chunk, sign, send, retry, isolate bad records, report each fate.

    with KooGalleryClient(Settings.from_env()) as client:
        result = client.push_usage(records, deadline=time.monotonic() + 30)
        result.pending      # what must be pushed again later (transient trouble, time ran out)

How each answer is handled:

- accepted (``MKT.0000``): every record of the request is delivered; indexes the platform lists
  in ``extra_info.duplicates`` (the local emulator does; KooGallery itself may not) are
  duplicates, i.e. delivered earlier.
- transient (network, timeout, HTTP 429 and 5xx, ``MKT.0999``, ``MKT.0250``): the same body is
  sent again after a capped, jittered exponential backoff, never past the deadline.
- permanent (``MKT.01xx`` input errors, ``MKT.9001``-``MKT.9004``): the request is split in
  halves until each rejected record stands alone, so every good record still lands.
- configuration (``MKT.0102``, ``MKT.0150``, ``MKT.0151``, ``MKT.0154``, APIG 401/403, 404):
  the run stops with an :class:`~koogallery.errors.AuthenticationError` that says what to fix;
  nothing is dead-lettered, because the records themselves are fine.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import httpx

from koogallery.config import Settings
from koogallery.errors import AuthenticationError, ConfigurationError, RecordValidationError
from koogallery.models import UsageRecord, wire_body
from koogallery.signing import (
    JSON_CONTENT_TYPE,
    ApigSigner,
    BodySigner,
    Credentials,
    SigningChain,
)

__all__ = [
    "Attempt",
    "KooGalleryClient",
    "PushObserver",
    "PushResult",
    "RecordOutcome",
    "Status",
]

logger = logging.getLogger(__name__)

USER_AGENT = "koogallery-functions/0.1"

_CONFIGURATION_CODES = {
    "MKT.0102": "the body signature was refused: check KOOGALLERY_SELLER_KEY (the interconnection "
    "key bound in Seller Console) and this machine's clock",
    "MKT.0150": "illegal operation: the instance's product is not published by the seller that "
    "owns HUAWEICLOUD_SDK_AK",
    "MKT.0151": "no authority: the AK/SK does not belong to a seller account allowed to call "
    "this API",
    "MKT.0154": "illegal token: check HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK and, for temporary "
    "credentials, HUAWEICLOUD_SDK_SECURITY_TOKEN",
}
_TRANSIENT_CODES = {"MKT.0999", "MKT.0250", "APIG.0308", "APIGW.0308", "CBC.0999"}
_PERMANENT_CODES = {
    "MKT.0100": "input value rejected",
    "MKT.0101": "invalid or missing parameter",
    "MKT.0199": "request parameter error",
    "MKT.9001": "instance ID not found",
    "MKT.9002": "invalid usage entity",
    "MKT.9003": "too many records in one request",
    "MKT.9004": "begin_time more than 21 days old",
}


_LOST_ANSWER = "accepted on an earlier attempt whose answer was lost"


class Status(str, enum.Enum):
    """The fate of one record after a push."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What happened to one record, with the platform's code and a reason a person can act on."""

    record: UsageRecord
    status: Status
    reason: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One HTTP exchange with KooGallery, for the audit trail."""

    started_at: datetime
    endpoint: str
    record_count: int
    latency_ms: float
    http_status: int | None
    error_code: str | None
    request_id: str | None
    error: str | None = None


class PushObserver(Protocol):
    """Told about every attempt and every settled record as it happens, not only at the end.

    A ledger implements this so that progress survives a crash in the middle of a long push.
    """

    def on_attempt(self, attempt: Attempt) -> None: ...

    def on_outcomes(self, outcomes: Sequence[RecordOutcome]) -> None: ...


@dataclass
class PushResult:
    """Every record's outcome, in the order the records were given, and every attempt made."""

    outcomes: list[RecordOutcome] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def with_status(self, status: Status) -> list[RecordOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status is status]

    @property
    def accepted(self) -> list[RecordOutcome]:
        return self.with_status(Status.ACCEPTED)

    @property
    def duplicates(self) -> list[RecordOutcome]:
        return self.with_status(Status.DUPLICATE)

    @property
    def dead_lettered(self) -> list[RecordOutcome]:
        return self.with_status(Status.DEAD_LETTERED)

    @property
    def pending(self) -> list[RecordOutcome]:
        return self.with_status(Status.PENDING)


@dataclass(frozen=True)
class _Answer:
    """The classified reply to one request (after retries)."""

    kind: str  # "accepted", "permanent" or "transient"
    error_code: str | None = None
    message: str | None = None
    duplicates: frozenset[int] = frozenset()
    maybe_delivered: bool = False
    """The request may have reached KooGallery without its answer reaching us (a dropped
    connection, a read timeout): an answer to a later attempt naming duplicates then names our
    own first attempt."""


@dataclass
class _Push:
    """The state of one ``push_usage`` call, so the client itself keeps none between calls."""

    records: Sequence[UsageRecord]
    deadline: float | None
    observer: PushObserver | None
    result: PushResult = field(default_factory=PushResult)
    wires: dict[int, str] = field(default_factory=dict)
    outcomes: list[RecordOutcome | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outcomes = [None] * len(self.records)


@dataclass(frozen=True)
class _Exchange:
    """Where and when one HTTP request went, for its audit line."""

    started_at: datetime
    endpoint: str
    record_count: int
    clock: float


class KooGalleryClient:
    """Pushes usage records to KooGallery over one pooled HTTP connection per endpoint.

    ``transport``, ``sleep``, ``monotonic`` and ``rng`` are injectable so that tests can run
    retries without waiting and pin the jitter.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        observer: PushObserver | None = None,
    ) -> None:
        settings.require_push_credentials()
        self.settings = settings
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng
        self._observer = observer
        self._endpoint_index = 0
        self._http = httpx.Client(
            auth=_auth_for(settings),
            transport=transport,
            timeout=settings.timeout_seconds,
            verify=_tls_context(
                settings.verify_tls,
                os.environ.get("SSL_CERT_FILE"),
                os.environ.get("SSL_CERT_DIR"),
            ),
            headers={"User-Agent": USER_AGENT, "Content-Type": JSON_CONTENT_TYPE},
        )

    def __enter__(self) -> KooGalleryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def endpoint(self) -> str:
        """The endpoint in use now (it moves down the list on connection failures)."""
        return self.settings.endpoints[self._endpoint_index]

    def push_usage(
        self,
        records: Sequence[UsageRecord],
        *,
        deadline: float | None = None,
        observer: PushObserver | None = None,
    ) -> PushResult:
        """Deliver ``records``; ``deadline`` is a ``time.monotonic()`` value never to pass.

        Returns each record's outcome. Raises :class:`ConfigurationError` when the platform
        refuses the credentials or signature; outcomes settled before that were already
        reported to the observer (``observer`` replaces the client's own for this call).
        """
        push = _Push(records, deadline, observer or self._observer)
        sendable = self._render_check(push)

        stopped: str | None = None
        size = self.settings.chunk_size
        for start in range(0, len(sendable), size):
            chunk = sendable[start : start + size]
            if stopped is None:
                stopped = self._deliver(push, chunk)
            else:
                self._settle(push, chunk, Status.PENDING, reason=stopped)

        push.result.outcomes = [outcome for outcome in push.outcomes if outcome is not None]
        return push.result

    def _render_check(self, push: _Push) -> list[int]:
        """Render each record's wire form once, for every request that carries it; a record
        the API variant cannot carry (v1 needs ``product_id``) is dead-lettered instead.
        Returns the indexes of the records to send."""
        usage_api, usage_entity = self.settings.usage_api, self.settings.usage_entity
        for index, record in enumerate(push.records):
            try:
                push.wires[index] = record.wire_json(usage_api, usage_entity=usage_entity)
            except RecordValidationError as error:
                self._settle(push, [index], Status.DEAD_LETTERED, reason=str(error))
        return list(push.wires)

    def _deliver(self, push: _Push, chunk: list[int]) -> str | None:
        """Send one chunk, halving it on permanent errors; returns why it stopped, if it did."""
        parts = [chunk]
        while parts:
            part = parts.pop()
            answer = self._send(push, part)

            if answer.kind == "accepted" and answer.maybe_delivered:
                reason = _LOST_ANSWER if answer.duplicates else None
                self._settle(push, part, Status.ACCEPTED, reason)
            elif answer.kind == "accepted":
                held = answer.duplicates
                self._settle(
                    push,
                    [index for at, index in enumerate(part) if at not in held],
                    Status.ACCEPTED,
                )
                self._settle(
                    push,
                    [index for at, index in enumerate(part) if at in held],
                    Status.DUPLICATE,
                    reason="already held by KooGallery",
                )
            elif answer.kind == "permanent" and len(part) > 1:
                middle = len(part) // 2
                parts.extend((part[middle:], part[:middle]))
            elif answer.kind == "permanent":
                reason = f"{answer.error_code} {answer.message}"
                self._settle(push, part, Status.DEAD_LETTERED, reason, answer.error_code)
            else:
                reason = answer.message or "transient failure"
                for rest in (part, *parts):
                    self._settle(push, rest, Status.PENDING, reason, answer.error_code)
                return reason
        return None

    def _settle(
        self,
        push: _Push,
        part: list[int],
        status: Status,
        reason: str | None = None,
        error_code: str | None = None,
    ) -> None:
        """Record the fate of ``part`` and tell the observer at once."""
        if not part:
            return
        settled = [
            RecordOutcome(push.records[index], status, reason, error_code) for index in part
        ]
        for index, outcome in zip(part, settled, strict=True):
            push.outcomes[index] = outcome
        if push.observer is not None:
            push.observer.on_outcomes(settled)

    def _send(self, push: _Push, part: list[int]) -> _Answer:
        """Send one request body until it gets a definite answer or retrying must stop."""
        body = wire_body([push.wires[index] for index in part], self.settings.usage_api)
        answer = _Answer("transient", message="not sent")
        attempt = 0
        while attempt < self.settings.max_attempts:
            timeout = self._time_left(push.deadline)
            if timeout is not None and timeout <= 0:
                return _Answer("transient", message="deadline reached before the request")
            attempt += 1

            previous = answer
            answer, retry_after = self._exchange(push, body, len(part), timeout)
            if previous.maybe_delivered:
                answer = replace(answer, maybe_delivered=True)
            if answer.kind != "transient":
                return answer
            if attempt >= self.settings.max_attempts:
                break

            delay = self._backoff(attempt, retry_after)
            left = self._time_left(push.deadline)
            if left is not None and delay >= left:
                return _Answer("transient", answer.error_code, f"{answer.message}; no time left")
            self._sleep(delay)

        message = f"{answer.message} after {attempt} attempt{'s' if attempt != 1 else ''}"
        return _Answer("transient", answer.error_code, message)

    def _time_left(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return deadline - self._monotonic()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Capped exponential backoff with equal jitter; the server's Retry-After wins."""
        cap = self.settings.backoff_cap_seconds
        if retry_after is not None:
            return min(retry_after, cap)
        ceiling = min(cap, self.settings.backoff_base_seconds * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng() * ceiling / 2

    def _exchange(
        self, push: _Push, body: bytes, count: int, timeout: float | None
    ) -> tuple[_Answer, float | None]:
        """One POST, failing over to the next endpoint when a host cannot be reached."""
        while True:
            endpoint = self.endpoint
            started = datetime.now(timezone.utc)
            clock = time.perf_counter()
            try:
                response = self._http.post(
                    endpoint + self.settings.usage_path,
                    content=body,
                    timeout=self.settings.timeout_seconds
                    if timeout is None
                    else min(timeout, self.settings.timeout_seconds),
                )
            except httpx.ConnectError as error:
                self._audit(push, _Exchange(started, endpoint, count, clock), error=error)
                if _is_tls_failure(error):
                    raise ConfigurationError(
                        f"TLS verification of {endpoint} failed ({error}); check the system's "
                        "CA certificates (SSL_CERT_FILE) or KOOGALLERY_ENDPOINT; another host "
                        "is not tried, since a certificate problem is not an outage"
                    ) from None
                if self._endpoint_index + 1 < len(self.settings.endpoints):
                    self._endpoint_index += 1
                    logger.warning(
                        "endpoint unreachable, failing over",
                        extra={"event": "endpoint_failover", "endpoint": self.endpoint},
                    )
                    continue
                return _Answer("transient", message=f"cannot connect: {error}"), None
            except httpx.TransportError as error:
                self._audit(push, _Exchange(started, endpoint, count, clock), error=error)
                kind = type(error).__name__
                sent = not isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
                answer = _Answer("transient", message=f"{kind}: {error}", maybe_delivered=sent)
                return answer, None

            code, message = _error_fields(response)
            request_id = response.headers.get("X-Request-Id")
            exchange = _Exchange(started, endpoint, count, clock)
            self._audit(push, exchange, response.status_code, code, request_id)
            return _classify(response.status_code, code, message, response), _retry_after(response)

    def _audit(
        self,
        push: _Push,
        exchange: _Exchange,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        *,
        error: Exception | None = None,
    ) -> None:
        """Keep the attempt in the result, log it, and tell the observer."""
        endpoint, count = exchange.endpoint, exchange.record_count
        attempt = Attempt(
            started_at=exchange.started_at,
            endpoint=endpoint,
            record_count=count,
            latency_ms=round((time.perf_counter() - exchange.clock) * 1000, 3),
            http_status=status,
            error_code=code,
            request_id=request_id,
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
        push.result.attempts.append(attempt)
        logger.info(
            "usage push attempt",
            extra={
                "event": "push_attempt",
                "endpoint": endpoint,
                "records": count,
                "http_status": status,
                "error_code": code,
                "platform_request_id": request_id,
                "latency_ms": attempt.latency_ms,
                "error": attempt.error,
            },
        )
        if push.observer is not None:
            push.observer.on_attempt(attempt)


@functools.lru_cache(maxsize=4)
def _tls_context(verify: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The TLS context of every client in this process, made once per distinct setting.

    Loading the CA bundle takes tens of milliseconds, and a warm function builds a client on
    each invocation. httpx reads ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` itself; they are part
    of the cache key so that a changed variable still gets its own context.
    """
    return httpx.create_ssl_context(verify=verify)


def _is_tls_failure(error: BaseException) -> bool:
    """Whether a connection failed on the certificate, not on reaching the host."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _auth_for(settings: Settings) -> SigningChain:
    """The body signature (v2 only) first, then APIG's, which then covers its headers too."""
    assert settings.access_key is not None and settings.secret_key is not None
    apig = ApigSigner(
        Credentials(settings.access_key, settings.secret_key, settings.security_token)
    )
    if settings.usage_api == "v2":
        assert settings.seller_key is not None
        return SigningChain(BodySigner(settings.seller_key), apig)
    return SigningChain(apig)


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """Read ``error_code``/``error_msg`` in any of the spellings Huawei services use."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, response.text[:200] or None
    if not isinstance(body, dict):
        return None, None
    for code_key, message_key in (
        ("error_code", "error_msg"),
        ("errorCode", "errorMsg"),
        ("code", "message"),
    ):
        if code_key in body:
            return str(body[code_key]), _short(body.get(message_key))
    return None, None


def _short(value: object) -> str | None:
    if value is None:
        return None
    return str(value)[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _classify(
    status: int, code: str | None, message: str | None, response: httpx.Response
) -> _Answer:
    """Decide what an answer means. The platform's code wins over the HTTP status: KooGallery
    sends some input errors (``MKT.0100``, ``MKT.9001``) with status 500."""
    if status == 200 and code == "MKT.0000":
        return _Answer("accepted", code, duplicates=_duplicate_indexes(response))
    if 200 <= status < 300:
        # A success status without KooGallery's success code (a proxy's page, an empty body)
        # proves nothing was stored: send the same body again, which is safe.
        detail = code or "no error_code in the answer"
        return _Answer("transient", code, f"HTTP {status} without MKT.0000 ({detail})")

    if code in _CONFIGURATION_CODES:
        raise AuthenticationError(
            f"KooGallery refused the request ({code}): {_CONFIGURATION_CODES[code]}",
            error_code=code,
            status=status,
        )
    if code in _TRANSIENT_CODES or status == 429:
        return _Answer("transient", code, f"HTTP {status} {code or ''}".strip())
    if code is not None and (code in _PERMANENT_CODES or code.startswith("MKT.01")):
        label = _PERMANENT_CODES.get(code, "request rejected")
        detail = f" (platform says: {message})" if message else ""
        return _Answer("permanent", code, f"{label}{detail}")
    if status in (401, 403):
        raise AuthenticationError(
            f"the API gateway refused the AK/SK signature (HTTP {status} {code}: {message}); "
            "check HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK and this machine's clock",
            error_code=code,
            status=status,
        )
    if status == 404:
        raise ConfigurationError(
            f"the usage API path was not found at {response.request.url.host} (HTTP 404 {code}): "
            "check KOOGALLERY_USAGE_API and KOOGALLERY_ENDPOINT"
        )
    if status >= 500:
        return _Answer("transient", code, f"HTTP {status} {code or ''}".strip())
    return _Answer("permanent", code, f"HTTP {status}: {message or 'request rejected'}")


def _duplicate_indexes(response: httpx.Response) -> frozenset[int]:
    """Read the optional per-record duplicate report, ignoring anything malformed."""
    try:
        extra = response.json().get("extra_info")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return frozenset()
    if not isinstance(extra, dict):
        return frozenset()
    duplicates = extra.get("duplicates")
    if not isinstance(duplicates, list):
        return frozenset()
    return frozenset(item for item in duplicates if isinstance(item, int))
