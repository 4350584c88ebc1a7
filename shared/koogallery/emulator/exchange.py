"""The request and reply the emulator's routes work on, free of any HTTP server type.

Keeping the routes on these two plain values lets the usage pipeline and the admin API be read
(and tested) without sockets, and keeps the HTTP handler down to reading and writing bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IncomingRequest", "Reply", "new_request_id"]


def new_request_id() -> str:
    """A fresh id for the ``X-Request-Id`` header and the request log."""
    return uuid.uuid4().hex


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
        """The payload as compact UTF-8 JSON."""
        if self.payload is None:
            return b""

        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False).encode()
