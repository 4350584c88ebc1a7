"""The usage record: its rules, its deterministic ``metering_sn`` and its three wire formats.

A record is validated once, when it is built, against every rule KooGallery applies (and a few
it applies only later, asynchronously, where a bad record would be lost silently). After that it
is immutable, so the bytes of a retry are always the bytes of the first attempt.

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
from typing import Any

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
    "metering_sn_for",
    "parse_time",
    "usage_body",
]

MAX_BEGIN_AGE = timedelta(days=21)
"""KooGallery rejects a record whose ``begin_time`` is older than this (``MKT.9004``)."""

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future an ``end_time`` may lie, to tolerate clocks that disagree slightly."""

_COMPACT_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
_MAX_INTEGER_DIGITS = 8
_MAX_DECIMAL_PLACES = 4


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
    """KooGallery's wire form: UTC, ``yyyyMMdd'T'HHmmss'Z'``."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


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
    normalized = number.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -_MAX_DECIMAL_PLACES:
        raise ValueError(
            f"has {-exponent} decimal places, at most {_MAX_DECIMAL_PLACES} are allowed"
        )
    if normalized.adjusted() >= _MAX_INTEGER_DIGITS:
        raise ValueError(f"has more than {_MAX_INTEGER_DIGITS} integer digits")
    return normalized


def format_usage_value(value: Decimal) -> str:
    """A plain decimal string (``"99"``, ``"12.5"``): never a float, never an exponent."""
    text = format(value.normalize(), "f")
    return text


def metering_sn_for(
    instance_id: str, begin_time: datetime, end_time: datetime, relate_pkg_instance: str | None
) -> str:
    """The deterministic record id: the same usage window always gets the same ``metering_sn``.

    KooGallery keeps the first record with a given ``metering_sn`` and flags the rest, so a
    retry after an ambiguous failure lands as a harmless duplicate instead of a second charge.
    """
    key = "|".join(
        (instance_id, format_time(begin_time), format_time(end_time), relate_pkg_instance or "")
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class UsageRecord(BaseModel):
    """One metering record (an SDR) for one pay-per-use instance and one time window.

    Build it with :meth:`parse`, which turns every rule violation into a
    :class:`~koogallery.errors.RecordValidationError` naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

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
                f"end_time {format_time(self.end_time)} is in the future (now {format_time(now)})"
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
        """Validate ``data``; ``now`` pins the clock for the future and 21-day rules."""
        try:
            return cls.model_validate(data, context={"now": now})
        except ValidationError as error:
            raise _record_error(error) from None

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
        record_time = format_time(self.record_time or self.end_time)
        value = format_usage_value(self.usage_value)
        if usage_api == "legacy":
            return {
                "instanceId": self.instance_id,
                "recordTime": record_time,
                "beginTime": format_time(self.begin_time),
                "endTime": format_time(self.end_time),
                "usageEntity": {usage_entity: value},
            }

        wire: dict[str, Any] = {
            "instance_id": self.instance_id,
            "record_time": record_time,
            "begin_time": format_time(self.begin_time),
            "end_time": format_time(self.end_time),
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
    now = context.get("now")
    if isinstance(now, datetime):
        return now.astimezone(timezone.utc)
    return datetime.now(timezone.utc)


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
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("ascii")


def usage_body(
    records: Iterable[UsageRecord], usage_api: str = "v2", *, usage_entity: str = "times"
) -> bytes:
    """The request body of one push, in the variant's envelope."""
    wire = [record.to_wire(usage_api, usage_entity=usage_entity) for record in records]
    envelope = "usageRecords" if usage_api == "legacy" else "usage_records"
    return canonical_json({envelope: wire})
