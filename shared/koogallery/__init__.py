"""koogallery: usage push, bill fetch and reconciliation for Huawei Cloud KooGallery sellers.

The public names, by the module that holds them (each is loaded on first use, so importing one
room, such as the emulator, does not load the others):

- ``Settings`` (config): sites, endpoints, API variant, credentials as ``SecretStr``.
- ``ApigSigner``, ``BodySigner``, ``Credentials`` (signing): ``httpx.Auth`` signers.
- ``UsageRecord`` (models): validated record, deterministic ``metering_sn``, wire formats.
- ``KooGalleryClient``, ``PushResult``, ``RecordOutcome``, ``Status`` (client).
- ``parse_trigger_event``, ``decode_usage_message`` (events): FunctionGraph trigger views.
- ``UsagePipeline``, ``Summary``, ``DeadLetter`` (pipeline): messages to summary.
- ``handle_usage_push`` (usage_push): the usage push function's whole behaviour.
- ``handle_bill_fetch``, ``BillFetchFailed`` (bill_fetch): the bill fetch function's behaviour.
- ``BillClient`` (bills) and ``reconcile`` (reconcile): bills and their reconciliation.
- ``LocalContext`` (functiongraph): a FunctionGraph-like context for local runs.
- the error tree (errors): ``KooGalleryError`` and its branches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Settings": "config",
    "ApigSigner": "signing",
    "BodySigner": "signing",
    "Credentials": "signing",
    "UsageRecord": "models",
    "KooGalleryClient": "client",
    "PushResult": "client",
    "RecordOutcome": "client",
    "Status": "client",
    "parse_trigger_event": "events",
    "decode_usage_message": "events",
    "EventFormatError": "events",
    "UsagePipeline": "pipeline",
    "Summary": "pipeline",
    "DeadLetter": "pipeline",
    "handle_usage_push": "usage_push",
    "handle_bill_fetch": "bill_fetch",
    "BillFetchFailed": "bill_fetch",
    "BillClient": "bills",
    "reconcile": "reconcile",
    "UsagePushIncomplete": "usage_push",
    "LocalContext": "functiongraph",
    "KooGalleryError": "errors",
    "ConfigurationError": "errors",
    "AuthenticationError": "errors",
    "TransientError": "errors",
    "DeadlineExceeded": "errors",
    "RecordError": "errors",
    "RecordValidationError": "errors",
}

__all__ = [
    "ApigSigner",
    "AuthenticationError",
    "BillClient",
    "BillFetchFailed",
    "BodySigner",
    "ConfigurationError",
    "Credentials",
    "DeadLetter",
    "DeadlineExceeded",
    "EventFormatError",
    "KooGalleryClient",
    "KooGalleryError",
    "LocalContext",
    "PushResult",
    "RecordError",
    "RecordOutcome",
    "RecordValidationError",
    "Settings",
    "Status",
    "Summary",
    "TransientError",
    "UsagePipeline",
    "UsagePushIncomplete",
    "UsageRecord",
    "decode_usage_message",
    "handle_bill_fetch",
    "handle_usage_push",
    "parse_trigger_event",
    "reconcile",
]

if TYPE_CHECKING:
    from koogallery.bill_fetch import BillFetchFailed, handle_bill_fetch
    from koogallery.bills import BillClient
    from koogallery.client import KooGalleryClient, PushResult, RecordOutcome, Status
    from koogallery.config import Settings
    from koogallery.errors import (
        AuthenticationError,
        ConfigurationError,
        DeadlineExceeded,
        KooGalleryError,
        RecordError,
        RecordValidationError,
        TransientError,
    )
    from koogallery.events import EventFormatError, decode_usage_message, parse_trigger_event
    from koogallery.functiongraph import LocalContext
    from koogallery.models import UsageRecord
    from koogallery.pipeline import DeadLetter, Summary, UsagePipeline
    from koogallery.reconcile import reconcile
    from koogallery.signing import ApigSigner, BodySigner, Credentials
    from koogallery.usage_push import UsagePushIncomplete, handle_usage_push


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'koogallery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"koogallery.{module}"), name)
    globals()[name] = value
    return value
