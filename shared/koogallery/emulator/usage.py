"""The usage endpoints: one request through gateway, platform checks and storage, in order.

A usage request passes these steps; the first that refuses decides the answer:

1. route: method and path select v2, v1 or legacy, else 404 APIG.0101;
2. fault: added latency, then an injected 500 / 429 / drop ends the request here;
3. gateway: the AK/SK signature (``apig.verify``), 401 APIG.03xx or MKT.0154;
4. caller: the legacy path's partner id (401 MKT.0150) and the AK's API permission (MKT.0151);
5. body signature, v2 only, 400 MKT.0102 (checked only once the gateway has passed);
6. body and records (``validation``), MKT.0101 / 0100 / 9001 / 9002 / 9003 / 9004;
7. commit: first write wins; duplicates are reported by index in ``extra_info.duplicates``.

An injected ``drop_after_commit`` runs every step, stores what passed, and then withholds the
answer. Every request, whatever its fate, lands in the request log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote

from koogallery.emulator import apig
from koogallery.emulator.body_signature import verify_body_signature
from koogallery.emulator.config import Credential
from koogallery.emulator.errors import (
    APIG_NOT_FOUND,
    ILLEGAL_OP,
    INTERNAL,
    NO_AUTHORITY,
    RATE_LIMITED,
    SUCCESS,
    ApiError,
    ErrorCode,
)
from koogallery.emulator.exchange import IncomingRequest, Reply, new_request_id
from koogallery.emulator.faults import Fault, FaultInjector
from koogallery.emulator.state import EmulatorState, RequestLogEntry
from koogallery.emulator.validation import parse_usage_body, validate_records
from koogallery.emulator.variants import Api, UsageRoute, match_usage_route

__all__ = ["UsageApi"]

logger = logging.getLogger(__name__)


def _error_payload(error: ErrorCode, message: str | None = None) -> dict[str, object]:
    return {"error_code": error.code, "error_msg": message or error.message}


@dataclass
class _Outcome:
    """What processing decided, gathered for the reply and the request log."""

    status: int
    payload: dict[str, object]
    record_count: int | None = None
    stored: int = 0
    duplicates: list[int] = field(default_factory=list)


class UsageApi:
    """Serves the three usage endpoints over the shared state.

    api = UsageApi(state, faults, credentials={"AK": credential}, seller_key="k",
                   partner_id="p", clock=lambda: datetime.now(timezone.utc))
    reply = api.handle(request)
    """

    def __init__(
        self,
        state: EmulatorState,
        faults: FaultInjector,
        *,
        credentials: Mapping[str, Credential],
        seller_key: str,
        partner_id: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._state = state
        self._faults = faults
        self._credentials = dict(credentials)
        self._seller_key = seller_key
        self._partner_id = partner_id
        self._clock = clock

    def handle(self, request: IncomingRequest) -> Reply:
        """Answer one request whose path is not an admin route."""
        request_id = new_request_id()
        received_at = self._clock()

        route = match_usage_route(unquote(request.path))
        if route is None or request.method != "POST":
            outcome = _Outcome(APIG_NOT_FOUND.http_status, _error_payload(APIG_NOT_FOUND))
            self._log(request, route, outcome, request_id, received_at, fault=None)
            return Reply(outcome.status, outcome.payload, request_id)

        delay = self._faults.next_delay_seconds()
        if delay > 0:
            time.sleep(delay)

        fault = self._faults.next_fault()
        if fault in (Fault.ERROR_500, Fault.RATE_LIMIT_429, Fault.DROP):
            return self._inject(request, route, fault, request_id, received_at)

        outcome = self._process(request, route, request_id)
        if fault is Fault.DROP_AFTER_COMMIT:
            self._log(request, route, outcome, request_id, received_at, fault=fault)
            return Reply(outcome.status, None, request_id, drop=True)

        self._log(request, route, outcome, request_id, received_at, fault=None)
        return Reply(outcome.status, outcome.payload, request_id)

    def refuse(self, request: IncomingRequest, error: ErrorCode, detail: str) -> Reply:
        """Answer a request the transport could not read (e.g. too large), logging it too."""
        request_id = new_request_id()
        route = match_usage_route(unquote(request.path))
        outcome = _Outcome(error.http_status, _error_payload(error, f"{error.message}: {detail}"))
        self._log(request, route, outcome, request_id, self._clock(), fault=None)
        return Reply(outcome.status, outcome.payload, request_id)

    def _inject(
        self,
        request: IncomingRequest,
        route: UsageRoute,
        fault: Fault,
        request_id: str,
        received_at: datetime,
    ) -> Reply:
        if fault is Fault.DROP:
            outcome = _Outcome(0, {})
            self._log(request, route, outcome, request_id, received_at, fault=fault)
            return Reply(0, None, request_id, drop=True)

        error = INTERNAL if fault is Fault.ERROR_500 else RATE_LIMITED
        outcome = _Outcome(error.http_status, _error_payload(error))
        self._log(request, route, outcome, request_id, received_at, fault=fault)
        return Reply(outcome.status, outcome.payload, request_id)

    def _process(self, request: IncomingRequest, route: UsageRoute, request_id: str) -> _Outcome:
        outcome = _Outcome(0, {})
        try:
            self._accept(request, route, request_id, outcome)
        except ApiError as error:
            outcome.status = error.http_status
            outcome.payload = {"error_code": error.error_code, "error_msg": error.error_msg}
        except Exception:
            logger.exception("usage request %s failed inside the emulator", request_id)
            outcome.status = INTERNAL.http_status
            outcome.payload = _error_payload(INTERNAL)

        return outcome

    def _accept(
        self, request: IncomingRequest, route: UsageRoute, request_id: str, outcome: _Outcome
    ) -> None:
        now = self._clock()
        signed = apig.SignedRequest(
            request.method, request.path, request.query, request.headers, request.body
        )
        credential = apig.verify(signed, self._credentials, now)

        self._check_caller(route, credential)

        if route.api is Api.V2:
            verify_body_signature(
                request.headers, request.body, self._seller_key, self._state.nonces, now
            )

        items = parse_usage_body(route.api, request.body)
        outcome.record_count = len(items)
        records = validate_records(
            route.api,
            items,
            self._state.find_instance,
            accept_any_instance=self._state.accept_any_instance,
            now=now,
        )

        result = self._state.commit(route.api, records, request_id=request_id, received_at=now)
        outcome.status = SUCCESS.http_status
        outcome.stored = result.stored
        outcome.duplicates = list(result.duplicate_indexes)
        outcome.payload = {
            **_error_payload(SUCCESS),
            "extra_info": {"duplicates": outcome.duplicates},
        }

    def _check_caller(self, route: UsageRoute, credential: Credential) -> None:
        if route.api is Api.LEGACY and route.partner_id != self._partner_id:
            raise ApiError(ILLEGAL_OP, f"partner {route.partner_id} is not this seller")

        if route.api not in credential.apis:
            raise ApiError(NO_AUTHORITY, f"this AK may not call the {route.api.value} usage API")

    def _log(
        self,
        request: IncomingRequest,
        route: UsageRoute | None,
        outcome: _Outcome,
        request_id: str,
        received_at: datetime,
        *,
        fault: Fault | None,
    ) -> None:
        api = None if route is None else route.api
        answered = fault not in (Fault.DROP, Fault.DROP_AFTER_COMMIT)
        error_code = outcome.payload.get("error_code")
        record_count = outcome.record_count
        if record_count is None and api is not None:
            record_count = _count_records(api, request.body)

        entry = RequestLogEntry(
            time=received_at,
            method=request.method,
            path=request.path,
            api=api,
            http_status=outcome.status if answered else None,
            error_code=error_code if isinstance(error_code, str) else None,
            record_count=record_count,
            nonce=request.headers.get("nonce"),
            request_id=request_id,
            fault=None if fault is None else fault.value,
            stored=outcome.stored,
            duplicates=len(outcome.duplicates),
        )
        self._state.log_request(entry)
        logger.debug(
            "usage request %s %s %s api=%s status=%s code=%s records=%s fault=%s",
            request_id,
            request.method,
            request.path,
            entry.api and entry.api.value,
            entry.http_status,
            entry.error_code,
            entry.record_count,
            entry.fault,
        )


def _count_records(api: Api, body: bytes) -> int | None:
    """Best-effort record count for the log when the request was refused before parsing."""
    key = "usageRecords" if api is Api.LEGACY else "usage_records"
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None

    records = data.get(key) if isinstance(data, dict) else None
    return len(records) if isinstance(records, list) else None
