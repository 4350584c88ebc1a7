"""The usage record: its rules, its deterministic ``metering_sn`` and its three wire formats.

A record is validated once, when it is built, against every rule KooGallery applies (and a few
it applies only later, asynchronously, where a bad record would be lost silently). After that it
is immutable, so the bytes of a retry are always the bytes of the first attempt.

:meth:`UsageRecord.parse` checks a plain, well-formed record with direct tests and builds it
without pydantic's machinery, because a month of usage is millions of records; anything unusual
(another type, a broken rule) goes through ``model_validate``, the complete path, so every
answer and every error message is the one that path gives.

    record = UsageRecord.parse({"instance_id": "i-1", "begin_time": "2026-12-01T08:00:00Z",
                                "end_time": "2026-12-01T09:00:00Z", "usage_value": "12.5"})
    record.metering_sn   # sha256 of instance, window and package: the same on every retry
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring_ascii
from typing import Any, TypeGuard, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from koogallery.errors import RecordValidationError

__all__ = [
    "CLOCK_SKEW",
    "MAX_BEGIN_AGE",
    "UsageRecord",
    "canonical_json",
    "format_time",
    "format_usage_value",
    "json_text",
    "metering_sn_for",
    "parse_time",
    "usage_body",
    "wire_body",
]

MAX_BEGIN_AGE = timedelta(days=21)
"""KooGallery rejects a record whose ``begin_time`` is older than this (``MKT.9004``)."""

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future an ``end_time`` may lie, to tolerate clocks that disagree slightly."""

_COMPACT_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
_MAX_INTEGER_DIGITS = 8
_MAX_DECIMAL_PLACES = 4

_TIME_CACHE_SIZE = 4096
"""Distinct time texts and UTC moments remembered. Hourly usage repeats a few hundred window
boundaries across every instance, so a small cache answers nearly every record; when it is full
it starts again, which bounds its memory whatever the input."""

_PLAIN_USAGE_VALUE = re.compile(r"[0-9]{1,8}(?:\.[0-9]{1,4})?")
"""A usage value text that can break no rule but "greater than 0"."""

_times_by_text: dict[str, tuple[datetime, str]] = {}
_texts_by_moment: dict[datetime, str] = {}

_object_setattr = object.__setattr__

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


def _remember(cache: dict[_Key, _Value], key: _Key, value: _Value) -> None:
    if len(cache) >= _TIME_CACHE_SIZE:
        cache.clear()
    cache[key] = value


def parse_time(value: object) -> datetime:
    """Read a time in KooGallery's compact UTC form or ISO-8601 with an explicit offset.

    A time without a zone is refused rather than guessed: a wrong guess shifts the usage window
    by hours, and KooGallery never lets a wrong record be corrected.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = _parse_time_text(value.strip())
    else:
        raise ValueError(f"expected a time string, got {type(value).__name__}")

    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("time has no zone; add 'Z' or an offset such as '+08:00'")
    if moment.microsecond:
        raise ValueError("time has fractional seconds; KooGallery times are whole seconds")
    return moment.astimezone(timezone.utc)


def _parse_time_text(text: str) -> datetime:
    compact = _COMPACT_TIME.match(text)
    if compact:
        year, month, day, hour, minute, second = (int(part) for part in compact.groups())
        try:
            return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
        except ValueError as error:
            raise ValueError(f"{text!r} is not a real time: {error}") from None

    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        return datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither yyyyMMddTHHmmssZ nor ISO-8601 with an offset"
        ) from None


def format_time(moment: datetime) -> str:
    """KooGallery's wire form: UTC, ``yyyyMMdd'T'HHmmss'Z'``.

    A moment already in UTC is formatted once and remembered: each record's window is formatted
    for its ``metering_sn``, its body and the ledger, and one window is shared by many records.
    Other moments (another zone, a naive local time) are converted every time, since what they
    mean can depend on the machine's zone.
    """
    if moment.tzinfo is not timezone.utc or type(moment) is not datetime:
        return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    text = _texts_by_moment.get(moment)
    if text is None:
        text = moment.strftime("%Y%m%dT%H%M%SZ")
        _remember(_texts_by_moment, moment, text)
    return text


def parse_usage_value(value: object) -> Decimal:
    """Read a usage value exactly: floats go through their shortest text form, never binary."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError(f"expected a number or a decimal string, got {type(value).__name__}")

    if not number.is_finite():
        raise ValueError("must be a finite number")
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {format_usage_value(number)}")
    places = _decimal_places(number)
    if places > _MAX_DECIMAL_PLACES:
        raise ValueError(f"has {places} decimal places, at most {_MAX_DECIMAL_PLACES} are allowed")
    if number.adjusted() >= _MAX_INTEGER_DIGITS:
        raise ValueError(f"has more than {_MAX_INTEGER_DIGITS} integer digits")
    return number.normalize()


def _decimal_places(number: Decimal) -> int:
    """Significant decimal places, counted on the digits as given: ``normalize`` would round a
    value longer than the context's precision (28 digits) before it could be counted."""
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    index = len(digits)
    while index > 0 and digits[index - 1] == 0 and exponent < 0:
        index -= 1
        exponent += 1
    return max(0, -exponent)


def format_usage_value(value: Decimal) -> str:
    """A plain decimal string (``"99"``, ``"12.5"``): never a float, never an exponent.

    ``str`` is plain for every usage value but whole hundreds and more (``1E+2``) and tiny
    fractions, and much faster than formatting; those two get the formatting.
    """
    normalized = value.normalize()
    text = str(normalized)
    return format(normalized, "f") if "E" in text else text


def metering_sn_for(
    instance_id: str, begin_time: datetime, end_time: datetime, relate_pkg_instance: str | None
) -> str:
    """The deterministic record id: the same usage window always gets the same ``metering_sn``.

    KooGallery keeps the first record with a given ``metering_sn`` and flags the rest, so a
    retry after an ambiguous failure lands as a harmless duplicate instead of a second charge.
    """
    return _metering_sn(
        instance_id, format_time(begin_time), format_time(end_time), relate_pkg_instance
    )


def _metering_sn(
    instance_id: str, begin_text: str, end_text: str, relate_pkg_instance: str | None
) -> str:
    """``metering_sn_for`` from the window already in compact form."""
    key = "|".join((instance_id, begin_text, end_text, relate_pkg_instance or ""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
"""One encoder for every call: ``json.dumps`` with options builds a new one each time, which
costs more than encoding a small record (the ledger stores one copy per record)."""


json_text = encode_basestring_ascii
"""A string as JSON text, escaped exactly as ``json.dumps`` escapes it (ASCII only): the piece
from which records are rendered field by field (``UsageRecord.wire_json``, the ledger's copy)."""


class UsageRecord(BaseModel):
    """One metering record (an SDR) for one pay-per-use instance and one time window.

    Build it with :meth:`parse`, which turns every rule violation into a
    :class:`~koogallery.errors.RecordValidationError` naming the field.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=False, defer_build=True
    )

    instance_id: str = Field(min_length=1, max_length=64)
    begin_time: datetime
    end_time: datetime
    record_time: datetime | None = None
    usage_value: Decimal
    metering_sn: str | None = Field(default=None, min_length=1, max_length=64)
    relate_pkg_instance: str | None = Field(default=None, min_length=1, max_length=64)
    product_id: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("begin_time", "end_time", "record_time", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime | None:
        if value is None:
            return None
        return parse_time(value)

    @field_validator("usage_value", mode="before")
    @classmethod
    def _value(cls, value: object) -> Decimal:
        return parse_usage_value(value)

    @model_validator(mode="after")
    def _window_and_defaults(self, info: ValidationInfo) -> UsageRecord:
        if self.begin_time > self.end_time:
            raise ValueError(
                f"begin_time {format_time(self.begin_time)} is after "
                f"end_time {format_time(self.end_time)}"
            )

        now = _now_from(info)
        if self.end_time > now + CLOCK_SKEW:
            raise ValueError(
                f"end_time {format_time(self.end_time)} is in the future (more than 5 minutes "
                "ahead of this machine's clock)"
            )
        if self.record_time is not None and not (
            self.begin_time <= self.record_time <= now + CLOCK_SKEW
        ):
            raise ValueError(
                f"record_time {format_time(self.record_time)} must lie between begin_time "
                f"{format_time(self.begin_time)} and now"
            )
        if self.begin_time < now - MAX_BEGIN_AGE:
            raise ValueError(
                f"begin_time {format_time(self.begin_time)} is more than 21 days old; "
                "KooGallery rejects it (MKT.9004)"
            )

        if self.record_time is None:
            object.__setattr__(self, "record_time", self.end_time)
        if self.metering_sn is None:
            sn = metering_sn_for(
                self.instance_id, self.begin_time, self.end_time, self.relate_pkg_instance
            )
            object.__setattr__(self, "metering_sn", sn)
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, now: datetime | None = None) -> UsageRecord:
        """Validate ``data``; ``now`` pins the clock for the future and 21-day rules.

        A plain record passes the direct checks of ``_checked_fields``; any other goes through
        ``model_validate``, which builds the same record or names what is wrong.
        """
        fields = _checked_fields(data, now)
        if fields is not None:
            return cls._from_checked(fields, set(data))

        try:
            return cls.model_validate(data, context={"now": now})
        except ValidationError as error:
            raise _record_error(error) from None

    @classmethod
    def _from_checked(cls, fields: dict[str, Any], fields_set: set[str]) -> UsageRecord:
        """Build a record from values that already passed every rule, as ``model_construct``
        does, minus its walk over every field's default: each value is already here, and
        that walk costs more than all the checks together."""
        record = cls.__new__(cls)
        _object_setattr(record, "__dict__", fields)
        _object_setattr(record, "__pydantic_fields_set__", fields_set)
        _object_setattr(record, "__pydantic_extra__", None)
        _object_setattr(record, "__pydantic_private__", None)
        return record

    @property
    def sn(self) -> str:
        """``metering_sn``, which validation always fills."""
        assert self.metering_sn is not None
        return self.metering_sn

    def window_key(self) -> tuple[str, str, str]:
        """KooGallery's second duplicate key: the same instance and the same window."""
        return (self.instance_id, format_time(self.begin_time), format_time(self.end_time))

    def to_wire(self, usage_api: str = "v2", *, usage_entity: str = "times") -> dict[str, Any]:
        """The record as the chosen usage API variant expects it (snake or camel case)."""
        begin_time, end_time = format_time(self.begin_time), format_time(self.end_time)
        record_time = end_time
        if self.record_time is not None and self.record_time is not self.end_time:
            record_time = format_time(self.record_time)
        value = format_usage_value(self.usage_value)
        if usage_api == "legacy":
            return {
                "instanceId": self.instance_id,
                "recordTime": record_time,
                "beginTime": begin_time,
                "endTime": end_time,
                "usageEntity": {usage_entity: value},
            }

        wire: dict[str, Any] = {
            "instance_id": self.instance_id,
            "record_time": record_time,
            "begin_time": begin_time,
            "end_time": end_time,
            "usage_value": value,
        }
        if usage_api == "v2":
            wire["metering_sn"] = self.sn
        if self.relate_pkg_instance is not None:
            wire["relate_pkg_instance"] = self.relate_pkg_instance
        if usage_api == "v1":
            if self.product_id is None:
                raise RecordValidationError("product_id", "required by the v1 usage API")
            wire["product_id"] = self.product_id
        return wire

    def wire_json(self, usage_api: str = "v2", *, usage_entity: str = "times") -> str:
        """``to_wire`` as canonical JSON text, the form a request body is joined from.

        For the v2 API, which every push uses by default, the text is written field by field
        (keys in sorted order, strings escaped by the JSON module's own encoder): the very
        characters of encoding ``to_wire``'s dict, without building the dict.
        """
        if usage_api != "v2":
            return _CANONICAL_ENCODER.encode(self.to_wire(usage_api, usage_entity=usage_entity))

        end_time = format_time(self.end_time)
        record_time = end_time
        if self.record_time is not None and self.record_time is not self.end_time:
            record_time = format_time(self.record_time)
        relate = ""
        if self.relate_pkg_instance is not None:
            relate = f'"relate_pkg_instance":{json_text(self.relate_pkg_instance)},'
        return (
            f'{{"begin_time":{json_text(format_time(self.begin_time))},'
            f'"end_time":{json_text(end_time)},'
            f'"instance_id":{json_text(self.instance_id)},'
            f'"metering_sn":{json_text(self.sn)},'
            f'"record_time":{json_text(record_time)},{relate}'
            f'"usage_value":{json_text(format_usage_value(self.usage_value))}}}'
        )

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the product's own (snake case, compact time) form, for reports."""
        return {
            "instance_id": self.instance_id,
            "begin_time": format_time(self.begin_time),
            "end_time": format_time(self.end_time),
            "record_time": format_time(self.record_time or self.end_time),
            "usage_value": format_usage_value(self.usage_value),
            "metering_sn": self.sn,
            "relate_pkg_instance": self.relate_pkg_instance,
            "product_id": self.product_id,
        }


def _now_from(info: ValidationInfo) -> datetime:
    context = info.context or {}
    return _utc_now(context.get("now"))


def _utc_now(now: object) -> datetime:
    """The pinned ``now`` in UTC, or the clock's when none is pinned."""
    if isinstance(now, datetime):
        return now.astimezone(timezone.utc)
    return datetime.now(timezone.utc)


_FIELD_NAMES = frozenset(UsageRecord.model_fields)
_REQUIRED_FIELDS = ("instance_id", "begin_time", "end_time", "usage_value")
_OPTIONAL_TEXT_FIELDS = ("metering_sn", "relate_pkg_instance", "product_id")
_MAX_TEXT_LENGTH = 64
_NUMBER_TYPES = (str, int, float, Decimal)


def _checked_fields(data: Mapping[str, Any], now: datetime | None) -> dict[str, Any] | None:
    """Every field of a plain, valid record, by direct checks; None means "ask pydantic".

    Plain means: a dict of known fields, ASCII strings, time texts and a number (not a bool).
    Each check is a rule ``model_validate`` applies, through the same functions (``parse_time``,
    ``parse_usage_value``, the ``metering_sn`` key); whatever fails or looks unusual is left to
    ``model_validate``, so the record or the error is always the one it would give.
    """
    if type(data) is not dict or not _FIELD_NAMES.issuperset(data):
        return None

    instance_id = data.get("instance_id")
    begin = _known_time(data.get("begin_time"))
    end = _known_time(data.get("end_time"))
    usage_value = _known_usage_value(data.get("usage_value"))
    if not _plain_text(instance_id) or begin is None or end is None or usage_value is None:
        return None

    record_time = end[0]
    if len(data) > len(_REQUIRED_FIELDS):
        if data.get("record_time") is not None:
            given = _known_time(data["record_time"])
            if given is None:
                return None
            record_time = given[0]
        for name in _OPTIONAL_TEXT_FIELDS:
            value = data.get(name)
            if value is not None and not _plain_text(value):
                return None

    earliest_begin, latest_end = _time_window(now)
    begin_time, end_time = begin[0], end[0]
    if not earliest_begin <= begin_time <= end_time <= latest_end:
        return None
    if record_time is not end_time and not begin_time <= record_time <= latest_end:
        return None

    relate_pkg_instance = data.get("relate_pkg_instance")
    metering_sn = data.get("metering_sn")
    if metering_sn is None:
        metering_sn = _metering_sn(instance_id, begin[1], end[1], relate_pkg_instance)
    return {
        "instance_id": instance_id,
        "begin_time": begin_time,
        "end_time": end_time,
        "record_time": record_time,
        "usage_value": usage_value,
        "metering_sn": metering_sn,
        "relate_pkg_instance": relate_pkg_instance,
        "product_id": data.get("product_id"),
    }


_last_window: tuple[datetime | None, datetime, datetime] = (None, datetime.min, datetime.min)


def _time_window(now: datetime | None) -> tuple[datetime, datetime]:
    """The earliest ``begin_time`` and the latest ``end_time`` the time rules allow at ``now``.

    A batch is validated against one pinned ``now``; its window is worked out once for it
    (unless ``now`` is naive: what it means depends on the machine's zone at the time).
    """
    pinned, earliest_begin, latest_end = _last_window
    if now is None or pinned is not now:
        moment = _utc_now(now)
        earliest_begin, latest_end = moment - MAX_BEGIN_AGE, moment + CLOCK_SKEW
        if now is not None and now.tzinfo is not None:
            _remember_window(now, earliest_begin, latest_end)
    return earliest_begin, latest_end


def _remember_window(now: datetime, earliest_begin: datetime, latest_end: datetime) -> None:
    global _last_window
    _last_window = (now, earliest_begin, latest_end)


def _plain_text(value: object) -> TypeGuard[str]:
    """An ASCII ``str`` of 1 to 64 characters: pydantic would take it exactly as it is."""
    return type(value) is str and value.isascii() and 0 < len(value) <= _MAX_TEXT_LENGTH


def _known_time(value: object) -> tuple[datetime, str] | None:
    """``parse_time`` of a time text and its compact form, remembered by the text; None when
    the value is not a valid time text."""
    if type(value) is not str:
        return None

    known = _times_by_text.get(value)
    if known is None:
        try:
            moment = parse_time(value)
        except (ValueError, OverflowError):
            return None
        known = (moment, format_time(moment))
        _remember(_times_by_text, value, known)
    return known


def _known_usage_value(value: object) -> Decimal | None:
    """``parse_usage_value`` of a string or a number; None when it refuses or is not one.

    Most values are short decimal texts, which one pattern shows to be within every limit.
    """
    if type(value) is str and _PLAIN_USAGE_VALUE.fullmatch(value):
        number = Decimal(value).normalize()
        return number if number > 0 else None
    if type(value) not in _NUMBER_TYPES:
        return None

    try:
        return parse_usage_value(value)
    except (ValueError, ArithmeticError):
        return None


def _record_error(error: ValidationError) -> RecordValidationError:
    """Turn pydantic's report into one error that names each offending field."""
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in item["loc"]) or _field_named_in(message)
        if item["type"] == "extra_forbidden":
            message = "is not a usage record field"
        elif item["type"] == "missing":
            message = "is required"
        problems.append((field, message.removeprefix(field + " ")))

    field, message = problems[0]
    rest = "".join(f"; {other}: {text}" for other, text in problems[1:])
    return RecordValidationError(field, message + rest)


def _field_named_in(message: str) -> str:
    """Rules that compare fields start their message with the field they blame."""
    first_word = message.split(" ", 1)[0]
    return first_word if first_word in UsageRecord.model_fields else "record"


def canonical_json(payload: object) -> bytes:
    """The bytes we sign and send: keys sorted, no whitespace, ASCII only."""
    return _CANONICAL_ENCODER.encode(payload).encode("ascii")


def usage_body(
    records: Iterable[UsageRecord], usage_api: str = "v2", *, usage_entity: str = "times"
) -> bytes:
    """The request body of one push, in the variant's envelope."""
    wire = [record.wire_json(usage_api, usage_entity=usage_entity) for record in records]
    return wire_body(wire, usage_api)


def wire_body(wire: list[str], usage_api: str = "v2") -> bytes:
    """The request body around records already rendered (``UsageRecord.wire_json``): the
    canonical JSON of the envelope, joined instead of encoded again.

    A client renders each record once and reuses the text for every request that carries it:
    a retry, or a half of a request split to isolate a rejected record.
    """
    envelope = "usageRecords" if usage_api == "legacy" else "usage_records"
    return f'{{"{envelope}":[{",".join(wire)}]}}'.encode("ascii")
