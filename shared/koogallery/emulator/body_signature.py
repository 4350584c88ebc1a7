"""The v2 usage API's own body signature (headers ``ts``, ``nonce``, ``signature``).

On top of the gateway's AK/SK check, the v2 push carries a signature keyed with the seller's
interconnection key, over the exact bytes of the body:

    signature = base64(HMAC-SHA256(seller_key, "ts={ts}&nonce={nonce}&body={raw body}"))

``ts`` is Unix time in milliseconds and must lie within 15 minutes of the platform clock; a nonce
may be used once per 15 minutes. Every failure answers 400 MKT.0102. Verifying over the raw bytes
(never a re-serialised body) is what makes the check catch a client that signs one text and sends
another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta

from koogallery.emulator.errors import BAD_BODY_SIGN, ApiError

__all__ = ["NONCE_WINDOW", "NonceCache", "body_signature", "verify_body_signature"]

NONCE_WINDOW = timedelta(minutes=15)
_MAX_NONCE_LENGTH = 64
_MAX_TS_DIGITS = 20


def body_signature(seller_key: str, ts: str, nonce: str, body: bytes) -> str:
    """The base64 signature a client must send for this ``ts``, ``nonce`` and body."""
    ts_bytes = ts.encode("utf-8", "surrogateescape")
    nonce_bytes = nonce.encode("utf-8", "surrogateescape")
    message = b"ts=" + ts_bytes + b"&nonce=" + nonce_bytes + b"&body=" + body
    mac = hmac.new(seller_key.encode("utf-8"), message, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


class NonceCache:
    """The nonces seen in the last 15 minutes, to refuse a replayed request.

    Check and record happen in one locked step, so two concurrent copies of one request cannot
    both pass. Entries older than the window are pruned as new ones arrive, which keeps the cache
    bounded by the request rate rather than by the emulator's lifetime.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, datetime] = {}
        self._next_prune: datetime | None = None

    def remember(self, nonce: str, now: datetime) -> bool:
        """Record the nonce; False when it was already seen within the window (a replay)."""
        with self._lock:
            self._prune(now)

            seen_at = self._seen.get(nonce)
            if seen_at is not None and now - seen_at < NONCE_WINDOW:
                return False

            self._seen[nonce] = now
            return True

    def clear(self) -> None:
        """Forget every nonce."""
        with self._lock:
            self._seen.clear()
            self._next_prune = None

    def _prune(self, now: datetime) -> None:
        if self._next_prune is not None and now < self._next_prune:
            return

        cutoff = now - NONCE_WINDOW
        self._seen = {nonce: at for nonce, at in self._seen.items() if at > cutoff}
        self._next_prune = now + timedelta(minutes=1)


def _check_ts(ts: str, now: datetime) -> None:
    if not ts.isascii() or not ts.isdigit() or len(ts) > _MAX_TS_DIGITS:
        raise ApiError(BAD_BODY_SIGN, "ts must be Unix time in milliseconds")

    skew_ms = abs(int(ts) - int(now.timestamp() * 1000))
    if skew_ms > NONCE_WINDOW.total_seconds() * 1000:
        raise ApiError(BAD_BODY_SIGN, "ts is more than 15 minutes from server time")


def verify_body_signature(
    headers: Mapping[str, str],
    body: bytes,
    seller_key: str,
    nonces: NonceCache,
    now: datetime,
) -> str:
    """Check ``ts``/``nonce``/``signature`` against the raw body and return the nonce.

    The nonce is recorded only once the signature is known good, so a forged request cannot burn
    a nonce the real client is about to use.
    """
    ts = headers.get("ts")
    nonce = headers.get("nonce")
    signature = headers.get("signature")
    if ts is None or nonce is None or signature is None:
        raise ApiError(BAD_BODY_SIGN, "headers ts, nonce and signature are all required")

    if not 1 <= len(nonce) <= _MAX_NONCE_LENGTH:
        raise ApiError(BAD_BODY_SIGN, "nonce must hold 1..64 characters")

    _check_ts(ts, now)

    expected = body_signature(seller_key, ts, nonce, body)
    sent = signature.strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(expected.encode("ascii"), sent):
        raise ApiError(BAD_BODY_SIGN, "signature does not match ts, nonce and body")

    if not nonces.remember(nonce, now):
        raise ApiError(BAD_BODY_SIGN, f"nonce {nonce} was already used")

    return nonce
