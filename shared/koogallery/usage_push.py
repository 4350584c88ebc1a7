"""The usage push function's behaviour, for any trigger, in one call.

``functions/usage_push/index.py`` is a thin FunctionGraph entry point over
:func:`handle_usage_push`; keeping the behaviour here lets the CLI, the local server and the
tests run exactly what the cloud runs.

How it treats failures:

- a message or record that can never succeed is dead-lettered (logged, listed in the result);
  it never fails the batch, and every good record beside it is still pushed;
- records still undelivered after retries, or when time runs short, make the handler raise
  after everything else was pushed, so the platform delivers the batch again (harmless: the
  ``metering_sn`` of every record is the same on every delivery);
- a configuration error (credentials, signature, unknown path) raises at once, saying what to fix;
- an APIG trigger gets an HTTP answer instead: 200 with the summary, 400 when nothing in the
  body is a usage record, 503 when records are still pending.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from koogallery.client import KooGalleryClient
from koogallery.config import Settings
from koogallery.errors import TransientError
from koogallery.events import APIG_KEYS, EventFormatError, parse_trigger_event
from koogallery.functiongraph import (
    deadline_from_context,
    http_response,
    request_id_of,
    settings_from_context,
)
from koogallery.logs import configure_json_logging, request_context
from koogallery.pipeline import Summary, UsagePipeline

if TYPE_CHECKING:
    from koogallery.ledger import Ledger

__all__ = ["UsagePushIncomplete", "client_for", "handle_usage_push", "ledger_for"]

logger = logging.getLogger("koogallery.usage_push")


class UsagePushIncomplete(TransientError):
    """Raised after a push that left records pending, so that the platform redelivers the batch.

    ``summary`` holds the counts of what did get through.
    """

    def __init__(self, summary: Summary) -> None:
        super().__init__(
            f"{summary.pending} of {summary.received} usage records are still pending "
            f"({summary.pending_reason}); the batch must be delivered again, which is safe "
            "because their metering_sn values do not change"
        )
        self.summary = summary


def handle_usage_push(event: Any, context: Any) -> dict[str, Any]:
    """Parse ``event``, push its usage records and return the summary (see the module doc)."""
    request_id = request_id_of(context)
    with request_context(request_id):
        settings = settings_from_context(context)
        configure_json_logging(level=settings.log_level, secrets=settings.secret_values())

        try:
            batch = parse_trigger_event(event)
        except EventFormatError as error:
            logger.error(
                "unrecognised trigger event", extra={"event": "bad_event", "error": str(error)}
            )
            if _looks_like_apig(event):
                return http_response(400, {"error": str(error), "request_id": request_id})
            raise

        deadline = deadline_from_context(context, settings.deadline_margin_seconds)
        ledger = ledger_for(settings)
        client = client_for(settings)
        pipeline = UsagePipeline(
            client, ledger=ledger, owner=request_id, lease_seconds=settings.lease_seconds
        )
        summary = pipeline.push_messages(batch.messages, deadline=deadline)

        result = {"request_id": request_id, "trigger": batch.trigger, **summary.to_dict()}
        logger.info("usage push finished", extra={"event": "push_summary", **_counts(result)})

        if batch.is_http:
            return http_response(_http_status(summary), result)
        if summary.pending:
            raise UsagePushIncomplete(summary)
        return result


_clients: list[tuple[Settings, KooGalleryClient]] = []
_clients_lock = threading.Lock()
_KEPT_CLIENTS = 2


def client_for(settings: Settings) -> KooGalleryClient:
    """A client for ``settings``, kept across the invocations of a warm instance.

    Reusing it keeps the TLS connection to KooGallery open and the endpoint it failed over
    to. Settings that differ (temporary agency credentials change every few hours) get a new
    client; the oldest kept one is closed.
    """
    with _clients_lock:
        for kept, client in _clients:
            if kept == settings:
                return client
        client = KooGalleryClient(settings)
        _clients.append((settings, client))
        if len(_clients) > _KEPT_CLIENTS:
            _, oldest = _clients.pop(0)
            oldest.close()
        return client


_ledgers: dict[str, Ledger] = {}
_ledgers_lock = threading.Lock()


def ledger_for(settings: Settings) -> Ledger | None:
    """The ledger at ``KOOGALLERY_LEDGER_URL``, opened once per process (None when unset).

    A warm FunctionGraph instance handles many invocations; keeping the connection avoids a
    connect and a schema check on each of them.
    """
    if settings.ledger_url is None:
        return None
    url = settings.ledger_url.get_secret_value()
    with _ledgers_lock:
        ledger = _ledgers.get(url)
        if ledger is None:
            from koogallery.ledger import open_ledger

            ledger = open_ledger(url, billing_mode=settings.billing_mode)
            _ledgers[url] = ledger
        return ledger


def _http_status(summary: Summary) -> int:
    if summary.pending:
        return 503
    if summary.accepted + summary.duplicates == 0:
        return 400
    return 200


def _looks_like_apig(event: Any) -> bool:
    """The keys the event parser recognises an APIG event by, so a broken one gets a 400."""
    return isinstance(event, dict) and any(key in event for key in APIG_KEYS)


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    """The summary without the records themselves: an INFO line carries counts only."""
    counts = {key: value for key, value in result.items() if key != "dead_letters"}
    if isinstance(counts.get("outbox"), dict):
        counts["outbox"] = {k: v for k, v in counts["outbox"].items() if k != "dead_letters"}
    return counts
