"""The request and reply the emulator's routes work on, free of any HTTP server type.

Keeping the routes on these two plain values lets the usage pipeline and the admin API be read
(and tested) without sockets, and keeps the HTTP handler down to reading and writing bytes.

The bill APIs send money as JSON numbers. A payload may therefore hold ``Decimal`` values, which
are written as their exact digits (``Decimal("12.3450")`` becomes ``12.3450``), never through a
float that could turn them into ``12.345`` or ``12.344999...``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["IncomingRequest", "Reply", "json_text", "new_request_id"]


def new_request_id() -> str:
    """A fresh id for the ``X-Request-Id`` header and the request log."""
    return uuid.uuid4().hex


def json_text(value: Any) -> str:
    """Compact JSON, with each ``Decimal`` written as the exact number its digits spell.

    json_text({"amount": Decimal("0.750")})  # '{"amount":0.750}'
    """
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"JSON has no number for {value}")

        return format(value, "f")

    if isinstance(value, Mapping):
        members = (f"{_string(str(key))}:{json_text(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"

    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_text(item) for item in value) + "]"

    return json.dumps(value, ensure_ascii=False)


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class IncomingRequest:
    """One HTTP request: the raw path and query, lower-case header names, the exact body bytes."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """What to send back: a JSON payload with a status, or (``drop``) no answer at all."""

    status: int
    payload: Mapping[str, Any] | None
    request_id: str = field(default_factory=new_request_id)
    drop: bool = False

    def body_bytes(self) -> bytes:
        """The payload as compact UTF-8 JSON, decimals as exact numbers (see ``json_text``)."""
        if self.payload is None:
            return b""

        try:
            text = json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)
        except TypeError:
            text = json_text(self.payload)

        return text.encode()
