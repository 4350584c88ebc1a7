"""The admin API under ``/_emulator/``: JSON over HTTP for tests, demos and the CLI.

It needs no authentication because the server only ever listens on loopback. Numbers that are
money or quantities travel as decimal strings. Routes:

    GET    /_emulator/health     {"status": "ok", "now": ..., "instances": n, "records": n}
    GET    /_emulator/instances  {"instances": [Instance...], "accept_any_instance": bool}
    POST   /_emulator/instances  body: one Instance object or a list -> {"instances": [added...]}
    GET    /_emulator/faults     {"faults": FaultPlan, "remaining_sequence": [...]}
    POST   /_emulator/faults     body: FaultPlan -> same as GET
    DELETE /_emulator/faults     clears the plan -> same as GET
    GET    /_emulator/records    {"records": [...], "count": n,
                                  "duplicates": [...], "duplicate_count": n}
    GET    /_emulator/requests   {"requests": [...], "count": n}
    GET    /_emulator/charges    {"charges": [{"instance_id", "product_id", "quantity",
                                  "unit_price", "amount", "currency", "record_count"}]}
    POST   /_emulator/reset      clears records, duplicates, log, nonces, faults -> {"status"}

An Instance object is ``{"instance_id", "product_id", "unit_price", "billing_mode",
"currency", "entities"}`` and a FaultPlan ``{"rates", "sequence", "latency_ms", "seed"}``.
Admin errors answer ``{"error": "..."}`` with 400, 404 or 405. Admin calls are not written to the
request log, which is the log of what a client sent to the platform.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from koogallery.emulator.config import Instance
from koogallery.emulator.exchange import IncomingRequest, Reply
from koogallery.emulator.faults import FaultInjector, FaultPlan
from koogallery.emulator.state import EmulatorState

__all__ = ["ADMIN_PREFIX", "AdminApi"]

ADMIN_PREFIX = "/_emulator/"


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


class _BadRequest(Exception):
    """An admin body the emulator cannot use; answered as 400 with the reason."""


def _json_body(request: IncomingRequest) -> Any:
    try:
        return json.loads(request.body or b"null", parse_float=Decimal)
    except (ValueError, RecursionError):
        raise _BadRequest("the body is not JSON") from None


class AdminApi:
    """Routes ``/_emulator/*`` requests to the state and the fault injector.

    admin = AdminApi(state, faults, clock=lambda: datetime.now(timezone.utc))
    reply = admin.handle(request)
    """

    def __init__(
        self, state: EmulatorState, faults: FaultInjector, *, clock: Callable[[], datetime]
    ) -> None:
        self._state = state
        self._faults = faults
        self._clock = clock
        self._routes: dict[str, dict[str, Callable[[IncomingRequest], Reply]]] = {
            "health": {"GET": self._health},
            "instances": {"GET": self._list_instances, "POST": self._add_instances},
            "faults": {
                "GET": self._show_faults,
                "POST": self._set_faults,
                "DELETE": self._clear_faults,
            },
            "records": {"GET": self._records},
            "requests": {"GET": self._requests},
            "charges": {"GET": self._charges},
            "reset": {"POST": self._reset},
        }

    def handle(self, request: IncomingRequest) -> Reply:
        """Answer one admin request."""
        name = request.path[len(ADMIN_PREFIX) :].strip("/")
        methods = self._routes.get(name)
        if methods is None:
            return _error(404, f"no admin route {request.path}")

        handler = methods.get(request.method)
        if handler is None:
            return _error(405, f"{request.method} is not allowed on {request.path}")

        try:
            return handler(request)
        except _BadRequest as error:
            return _error(400, str(error))

    def _health(self, request: IncomingRequest) -> Reply:
        return Reply(
            200,
            {
                "status": "ok",
                "now": self._clock().isoformat().replace("+00:00", "Z"),
                "instances": len(self._state.instances),
                "records": len(self._state.records),
            },
        )

    def _list_instances(self, request: IncomingRequest) -> Reply:
        return Reply(
            200,
            {
                "instances": [instance.as_dict() for instance in self._state.instances],
                "accept_any_instance": self._state.accept_any_instance,
            },
        )

    def _add_instances(self, request: IncomingRequest) -> Reply:
        body = _json_body(request)
        items = body if isinstance(body, list) else [body]
        try:
            instances = [Instance.from_dict(item) for item in items]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise _BadRequest(f"not a valid instance: {error}") from None

        self._state.add_instances(instances)
        return Reply(200, {"instances": [instance.as_dict() for instance in instances]})

    def _show_faults(self, request: IncomingRequest) -> Reply:
        return Reply(
            200,
            {
                "faults": self._faults.plan.as_dict(),
                "remaining_sequence": list(self._faults.remaining_sequence),
            },
        )

    def _set_faults(self, request: IncomingRequest) -> Reply:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest("a fault plan must be a JSON object")

        try:
            plan = FaultPlan.from_dict(body)
        except (ValueError, TypeError) as error:
            raise _BadRequest(f"not a valid fault plan: {error}") from None

        self._faults.set_plan(plan)
        return self._show_faults(request)

    def _clear_faults(self, request: IncomingRequest) -> Reply:
        self._faults.clear()
        return self._show_faults(request)

    def _records(self, request: IncomingRequest) -> Reply:
        records = [record.as_dict() for record in self._state.records]
        duplicates = [record.as_dict() for record in self._state.duplicates]
        return Reply(
            200,
            {
                "records": records,
                "count": len(records),
                "duplicates": duplicates,
                "duplicate_count": len(duplicates),
            },
        )

    def _requests(self, request: IncomingRequest) -> Reply:
        entries = [entry.as_dict() for entry in self._state.requests]
        return Reply(200, {"requests": entries, "count": len(entries)})

    def _charges(self, request: IncomingRequest) -> Reply:
        return Reply(200, {"charges": [charge.as_dict() for charge in self._state.charges()]})

    def _reset(self, request: IncomingRequest) -> Reply:
        self._state.reset()
        self._faults.clear()
        return Reply(200, {"status": "reset"})
