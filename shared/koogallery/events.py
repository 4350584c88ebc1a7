"""Trigger payload views: every FunctionGraph event becomes one uniform batch of messages.

FunctionGraph hands a function a different payload for each trigger: DMS queues (Kafka,
open-source Kafka, RocketMQ, RabbitMQ) deliver ``records[].messages[]``, SMN a ``record`` list of
notifications, DIS base64 ``data`` under ``Message.records``, APIG one HTTP request, and a direct
invocation the usage message itself. The rest of the pipeline should not care which one arrived,
so this module reads each shape into a ``TriggerBatch`` of ``Message`` objects whose ``Origin``
says where each message came from:

    batch = parse_trigger_event(event)
    records = [raw for message in batch.messages for raw in decode_usage_message(message)]

Two kinds of failure are kept apart on purpose. A payload that is not what the trigger promises
(``records`` not a list, a message that is not text, broken base64) raises ``EventFormatError``:
nothing in it can be trusted. A message whose *body* is not a valid usage message is a problem of
that one message: it still comes out of ``parse_trigger_event``, and ``decode_usage_message``
returns it as a ``RawRecord`` with ``error`` set, so it can be dead-lettered while its neighbours
go on.

Sample events under ``events/`` carry ``{{HOUR-N}}`` placeholders instead of fixed times, because
KooGallery refuses usage older than 21 days; ``render_sample_event`` fills them in.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NoReturn

__all__ = [
    "APIG_KEYS",
    "EventFormatError",
    "Message",
    "Origin",
    "RawRecord",
    "TriggerBatch",
    "decode_usage_message",
    "parse_trigger_event",
    "render_sample_event",
]

_QUEUE_TRIGGERS = ("KAFKA", "OPENSOURCEKAFKA", "ROCKETMQ", "RABBITMQ")
"""``trigger_type`` values of the DMS queue triggers, which all share the ``records`` shape."""

_SOURCE_KEYS = {"RABBITMQ": ("exchange", "queue")}
"""Where a queue record names its source; RabbitMQ payloads are seen with either key."""

APIG_KEYS = frozenset({"requestContext", "httpMethod", "isBase64Encoded"})

_MAX_SAMPLE_HOURS = 48

_HOUR_PLACEHOLDER = re.compile(r"\{\{HOUR-([0-9]+)(?::([^{}]*))?\}\}")

_BASE64_MARKER = ("{{BASE64:", "}}")

_HOUR_FORMATS = {"iso": "%Y-%m-%dT%H:00:00Z", "compact": "%Y%m%dT%H0000Z"}


class EventFormatError(ValueError):
    """The trigger payload does not have the shape its trigger promises.

    The whole event is unusable, unlike a single bad message body: the message says what was
    expected and where, e.g. ``KAFKA event: records[1].messages[0] is a number, expected a
    string``.
    """


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one message came from, precise enough to find it again in the trigger payload.

    ``index`` counts messages across the whole batch; ``record_index`` and ``message_index``
    point into the payload's own lists where the trigger has them.

        origin = batch.messages[3].origin
        origin.label()   # "KAFKA topic-a #3"
    """

    trigger: str
    source: str | None
    index: int
    record_index: int | None = None
    message_index: int | None = None
    message_id: str | None = None

    def label(self) -> str:
        """A short form for logs and error reports: trigger, source when known, batch index."""
        if self.source is None:
            return f"{self.trigger} #{self.index}"
        return f"{self.trigger} {self.source} #{self.index}"


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a batch: its text, already decoded from base64 where the source encodes.

    The body is not judged here: text that is not a usage message is still a message.

        for message in parse_trigger_event(event).messages:
            print(message.origin.label(), message.body)
    """

    origin: Origin
    body: str


@dataclass(frozen=True)
class TriggerBatch:
    """Every message of one invocation, in delivery order, whatever the trigger.

    ``is_http`` tells the handler it was called through APIG and must answer with an HTTP
    response object; ``request_id`` is the id the caller knows the request by, when the payload
    carries one.

        batch = parse_trigger_event(event)
        batch.trigger, len(batch.messages)   # ("KAFKA", 3)
    """

    trigger: str
    messages: list[Message]
    is_http: bool
    request_id: str | None


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One usage record as found in a message, before any field is validated.

    ``data`` is ``None`` and ``error`` names the problem when the message or this element of it
    could not be read as a record object. ``raw`` is the whole message text either way, so a dead
    letter can be replayed exactly as it arrived.

        for raw in decode_usage_message(message):
            if raw.error is not None:
                print(raw.origin.label(), raw.error)
    """

    origin: Origin
    position: int | None
    data: dict[str, object] | None
    error: str | None
    raw: str


class _Missing:
    """Stands for a key that is absent, so error messages can say "missing" instead of "null"."""


_MISSING = _Missing()


def parse_trigger_event(event: object) -> TriggerBatch:
    """Read any supported FunctionGraph payload into one batch of messages.

    The shape is recognised by the keys only one trigger uses, in this order: ``trigger_type``
    (DMS queues), ``record`` (SMN), ``StreamName``/``ShardID`` (DIS), ``requestContext``,
    ``httpMethod`` or ``isBase64Encoded`` (APIG), then ``usage_records``/``instance_id`` or a
    list (a direct invocation with a usage message). Raises ``EventFormatError`` when the event
    matches no shape or breaks the one it matches.
    """
    if isinstance(event, list):
        return _parse_direct_event(event)

    if not isinstance(event, dict):
        raise EventFormatError(f"event is {_describe(event)}, expected an object or an array")

    if "trigger_type" in event:
        return _parse_queue_event(event)
    if "record" in event:
        return _parse_smn_event(event)
    if "StreamName" in event or "ShardID" in event:
        return _parse_dis_event(event)
    if APIG_KEYS.intersection(event):
        return _parse_apig_event(event)
    if "usage_records" in event or "instance_id" in event:
        return _parse_direct_event(event)

    raise EventFormatError(
        "event matches no known trigger shape: expected trigger_type (DMS queues), "
        "record (SMN), StreamName (DIS), requestContext (APIG) or a usage message with "
        f"usage_records or instance_id; found keys {_key_list(event)}"
    )


def decode_usage_message(message: Message) -> list[RawRecord]:
    """Split one usage message into its records without judging any record's fields.

    A usage message is JSON: one record object, an array of them, or ``{"usage_records": [...]}``.
    Numbers with a fraction are read as ``Decimal`` so a usage value never passes through a binary
    float. A message that cannot be read gives one ``RawRecord`` with ``error`` set; an element of
    a list that is not an object gives one such record while its siblings still decode.
    """
    try:
        document = _load_json(message.body)
    except ValueError as exc:
        return [_unusable(message, None, f"message is not valid JSON: {_json_problem(exc)}")]

    if isinstance(document, list):
        return _decode_record_list(message, document, "message")

    if not isinstance(document, dict):
        problem = f"message is {_describe(document)}, expected an object or an array"
        return [_unusable(message, None, problem)]

    if "usage_records" not in document:
        return [RawRecord(message.origin, None, document, None, message.body)]

    records = document["usage_records"]
    if not isinstance(records, list):
        problem = f"usage_records is {_describe(records)}, expected an array"
        return [_unusable(message, None, problem)]
    return _decode_record_list(message, records, "usage_records")


def render_sample_event(text: str, now: datetime) -> str:
    """Fill the time placeholders of a sample event, so its usage is always recent enough.

    ``{{HOUR-N}}`` (N from 0 to 48) becomes the start of the current UTC hour minus N hours as
    ``YYYY-MM-DDTHH:00:00Z``; ``{{HOUR-N:compact}}`` gives KooGallery's ``YYYYMMDDTHH0000Z``.
    A naive ``now`` is taken as UTC. Base64 payloads cannot hold a readable placeholder, so a JSON
    string value ``"{{BASE64:<text>}}"`` is rendered and then replaced by the base64 of its text;
    the event is then written back as indented JSON.
    """
    hour = _start_of_hour(now)
    rendered = _HOUR_PLACEHOLDER.sub(lambda match: _render_hour(match, hour), text)

    if _BASE64_MARKER[0] not in rendered:
        return rendered

    document = json.loads(rendered)
    return json.dumps(_encode_base64_markers(document), indent=2, ensure_ascii=False) + "\n"


def _parse_queue_event(event: dict[Any, Any]) -> TriggerBatch:
    trigger = _queue_trigger(event["trigger_type"])
    records = _list_at(event, "records", trigger, "records")

    messages: list[Message] = []
    for record_index, record in enumerate(records):
        where = f"records[{record_index}]"
        if not isinstance(record, dict):
            raise _wrong_type(trigger, where, record, "an object")
        source = _queue_source(trigger, record, where)
        bodies = _list_at(record, "messages", trigger, f"{where}.messages")
        for message_index, body in enumerate(bodies):
            text = _message_text(body)
            origin = Origin(trigger, source, len(messages), record_index, message_index)
            messages.append(Message(origin, text))

    return TriggerBatch(trigger, messages, is_http=False, request_id=None)


def _queue_trigger(value: object) -> str:
    if not isinstance(value, str):
        raise EventFormatError(f"event: trigger_type is {_describe(value)}, expected a string")

    trigger = value.strip().upper()
    if trigger not in _QUEUE_TRIGGERS:
        raise EventFormatError(
            f"event: trigger_type {value!r} carries no usage messages, "
            f"expected one of {', '.join(_QUEUE_TRIGGERS)}"
        )
    return trigger


def _queue_source(trigger: str, record: dict[Any, Any], where: str) -> str | None:
    for key in _SOURCE_KEYS.get(trigger, ("topic_id",)):
        source = _optional_text(record.get(key), trigger, f"{where}.{key}")
        if source is not None:
            return source
    return None


def _parse_smn_event(event: dict[Any, Any]) -> TriggerBatch:
    trigger = "SMN"
    records = _list_at(event, "record", trigger, "record")
    request_id = _optional_text(event.get("requestId"), trigger, "requestId")

    messages: list[Message] = []
    for record_index, record in enumerate(records):
        where = f"record[{record_index}]"
        if not isinstance(record, dict):
            raise _wrong_type(trigger, where, record, "an object")
        _require_smn_source(record.get("event_source", _MISSING), where)
        notification = record.get("smn", _MISSING)
        if not isinstance(notification, dict):
            raise _wrong_type(trigger, f"{where}.smn", notification, "an object")
        message = notification.get("message", _MISSING)
        if message is _MISSING:
            raise _wrong_type(trigger, f"{where}.smn.message", message, "a string")
        body = _message_text(message)
        origin = Origin(
            trigger,
            _optional_text(notification.get("topic_urn"), trigger, f"{where}.smn.topic_urn"),
            len(messages),
            record_index=record_index,
            message_id=_optional_text(
                notification.get("message_id"), trigger, f"{where}.smn.message_id"
            ),
        )
        messages.append(Message(origin, body))

    return TriggerBatch(trigger, messages, is_http=False, request_id=request_id)


def _require_smn_source(value: object, where: str) -> None:
    """Refuse any other notification that might share the ``record`` key."""
    if value != "smn":
        shown = repr(value) if isinstance(value, str) else _describe(value)
        raise EventFormatError(f"SMN event: {where}.event_source is {shown}, expected 'smn'")


def _parse_dis_event(event: dict[Any, Any]) -> TriggerBatch:
    trigger = "DIS"
    stream = _optional_text(event.get("StreamName"), trigger, "StreamName")
    envelope = event.get("Message", _MISSING)
    if not isinstance(envelope, dict):
        raise _wrong_type(trigger, "Message", envelope, "an object")
    records = _list_at(envelope, "records", trigger, "Message.records")

    messages: list[Message] = []
    for record_index, record in enumerate(records):
        where = f"Message.records[{record_index}]"
        if not isinstance(record, dict):
            raise _wrong_type(trigger, where, record, "an object")
        data = _text(record.get("data", _MISSING), trigger, f"{where}.data")
        body = _decode_base64_text(data, trigger, f"{where}.data")
        sequence_number = _optional_id(
            record.get("sequence_number"), trigger, f"{where}.sequence_number"
        )
        origin = Origin(
            trigger, stream, len(messages), record_index=record_index, message_id=sequence_number
        )
        messages.append(Message(origin, body))

    return TriggerBatch(trigger, messages, is_http=False, request_id=None)


def _parse_apig_event(event: dict[Any, Any]) -> TriggerBatch:
    trigger = "APIG"
    context = event.get("requestContext")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise _wrong_type(trigger, "requestContext", context, "an object")
    request_id = _optional_text(context.get("requestId"), trigger, "requestContext.requestId")
    path = _optional_text(event.get("path"), trigger, "path")

    body = _optional_text(event.get("body"), trigger, "body")
    encoded = event.get("isBase64Encoded", False)
    if not isinstance(encoded, bool):
        raise _wrong_type(trigger, "isBase64Encoded", encoded, "a boolean")
    if body and encoded:
        body = _decode_base64_text(body, trigger, "body")

    if not body:
        return TriggerBatch(trigger, [], is_http=True, request_id=request_id)
    origin = Origin(trigger, path, 0, message_id=request_id)
    return TriggerBatch(trigger, [Message(origin, body)], is_http=True, request_id=request_id)


def _parse_direct_event(event: dict[Any, Any] | list[Any]) -> TriggerBatch:
    """Pass the invocation's own payload on as the text of a single usage message."""
    try:
        body = json.dumps(event, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise EventFormatError(f"DIRECT event: cannot be written as JSON: {exc}") from None

    origin = Origin("DIRECT", None, 0)
    return TriggerBatch("DIRECT", [Message(origin, body)], is_http=False, request_id=None)


def _list_at(container: dict[Any, Any], key: str, trigger: str, path: str) -> list[Any]:
    value = container.get(key, _MISSING)
    if not isinstance(value, list):
        raise _wrong_type(trigger, path, value, "an array")
    return value


def _message_text(value: object) -> str:
    """A queue message as text. Messages are strings; anything else is kept as its JSON text
    rather than failing the whole batch: the next step reads it as a usage message or
    dead-letters it alone, and every good message beside it is still pushed."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def _text(value: object, trigger: str, path: str) -> str:
    if not isinstance(value, str):
        raise _wrong_type(trigger, path, value, "a string")
    return value


def _optional_text(value: object, trigger: str, path: str) -> str | None:
    if value is None:
        return None
    return _text(value, trigger, path)


def _optional_id(value: object, trigger: str, path: str) -> str | None:
    """Read an id that some producers write as a number; it is only ever compared as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _optional_text(value, trigger, path)


def _decode_base64_text(data: str, trigger: str, path: str) -> str:
    """Decode base64 strictly: a payload that only half decodes would be a different message."""
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except binascii.Error:
        raise EventFormatError(f"{trigger} event: {path} is not valid base64") from None

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventFormatError(
            f"{trigger} event: {path} does not decode to UTF-8 text (byte {exc.start})"
        ) from None


def _wrong_type(trigger: str, path: str, value: object, expected: str) -> EventFormatError:
    return EventFormatError(f"{trigger} event: {path} is {_describe(value)}, expected {expected}")


def _describe(value: object) -> str:
    """Name a value's type in JSON's words, since that is what the sender wrote."""
    if isinstance(value, _Missing):
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _key_list(event: dict[Any, Any]) -> str:
    """Name the keys (never the values, which may hold anything) of an unrecognised event."""
    keys = sorted(str(key) for key in event)
    if not keys:
        return "none"
    shown = ", ".join(keys[:10])
    return shown if len(keys) <= 10 else f"{shown}, ... ({len(keys)} in all)"


class _NonFiniteNumberError(ValueError):
    """JSON has no NaN or Infinity; Python's reader accepts them unless told not to."""


def _refuse_constant(constant: str) -> NoReturn:
    raise _NonFiniteNumberError(f"{constant} is not a JSON number")


_USAGE_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_refuse_constant)
"""One decoder for every message: ``json.loads`` with options would build one per call."""


def _load_json(text: str) -> object:
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _USAGE_DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)


def _decode_record_list(message: Message, elements: list[Any], name: str) -> list[RawRecord]:
    decoded: list[RawRecord] = []
    for position, element in enumerate(elements):
        if isinstance(element, dict):
            decoded.append(RawRecord(message.origin, position, element, None, message.body))
        else:
            problem = f"{name}[{position}] is {_describe(element)}, expected an object"
            decoded.append(_unusable(message, position, problem))
    return decoded


def _unusable(message: Message, position: int | None, problem: str) -> RawRecord:
    return RawRecord(message.origin, position, None, problem, message.body)


def _start_of_hour(now: datetime) -> datetime:
    utc = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    return utc.replace(minute=0, second=0, microsecond=0)


def _render_hour(match: re.Match[str], hour: datetime) -> str:
    hours_back = int(match.group(1))
    if hours_back > _MAX_SAMPLE_HOURS:
        raise ValueError(f"{match.group(0)} reaches back more than {_MAX_SAMPLE_HOURS} hours")

    form = match.group(2) or "iso"
    if form not in _HOUR_FORMATS:
        raise ValueError(f"{match.group(0)} has an unknown form, expected :compact or none")
    return (hour - timedelta(hours=hours_back)).strftime(_HOUR_FORMATS[form])


def _encode_base64_markers(value: object) -> object:
    if isinstance(value, dict):
        return {key: _encode_base64_markers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encode_base64_markers(item) for item in value]

    prefix, suffix = _BASE64_MARKER
    if isinstance(value, str) and value.startswith(prefix) and value.endswith(suffix):
        inner = value[len(prefix) : -len(suffix)]
        return base64.b64encode(inner.encode("utf-8")).decode("ascii")
    return value
