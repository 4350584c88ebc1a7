"""The platform's checks on a usage body, field by field, for each of the three APIs.

A record is refused the way the platform refuses it: a missing, unknown or mis-shaped field is
MKT.0101; a present field with an illegal value is MKT.0100; a ``begin_time`` more than 21 days
old is MKT.9004; an unknown instance is MKT.9001; a legacy metering entity the instance does not
meter is MKT.9002; more than 1000 records is MKT.9003. Records are checked in order and the first
failure decides the answer, naming the record's index and field, e.g.
``usage_records[3].usage_value has 5 decimal places``. Nothing of a refused request is stored.

Numbers are kept as their literal JSON text (``JsonNumber``) rather than parsed into floats, so a
value is judged as written: ``1.00001`` has five decimal places and ``1e3`` is an exponent, both
refused, and the stored ``Decimal`` is exactly what the client sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from koogallery.emulator.config import Instance
from koogallery.emulator.errors import (
    BAD_ENTITY,
    BAD_INPUT,
    BAD_PARAMETER,
    NO_INSTANCE,
    TOO_MANY,
    TOO_OLD,
    ApiError,
)
from koogallery.emulator.variants import Api

__all__ = [
    "DEFAULT_ENTITIES",
    "FUTURE_TOLERANCE",
    "MAX_AGE",
    "MAX_RECORDS",
    "JsonNumber",
    "UsageRecord",
    "parse_usage_body",
    "validate_records",
]

MAX_RECORDS = 1000
MAX_AGE = timedelta(days=21)
FUTURE_TOLERANCE = timedelta(minutes=5)
DEFAULT_ENTITIES = ("times",)
_MAX_TEXT = 64
_MAX_INTEGER_DIGITS = 8
_MAX_DECIMAL_PLACES = 4
_TIME = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_DECIMAL = re.compile(r"([0-9]+)(?:\.([0-9]+))?")


class JsonNumber(str):
    """The literal text of a JSON number, kept so the value can be judged as it was written."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One record that passed every check, in the v2 field names whatever API it came through."""

    index: int
    instance_id: str
    record_time: str
    begin_time: str
    end_time: str
    usage_value: Decimal
    metering_sn: str | None = None
    relate_pkg_instance: str | None = None
    product_id: str | None = None
    entity: str | None = None


@dataclass(frozen=True)
class _Schema:
    """The wire names of one API: the list key, then each field as that API spells it."""

    list_key: str
    instance_id: str
    record_time: str
    begin_time: str
    end_time: str
    required: frozenset[str]
    optional: frozenset[str]


_SNAKE_TIMES = {"record_time", "begin_time", "end_time"}
_SCHEMAS = {
    Api.V2: _Schema(
        list_key="usage_records",
        instance_id="instance_id",
        record_time="record_time",
        begin_time="begin_time",
        end_time="end_time",
        required=frozenset({"instance_id", *_SNAKE_TIMES, "usage_value", "metering_sn"}),
        optional=frozenset({"relate_pkg_instance"}),
    ),
    Api.V1: _Schema(
        list_key="usage_records",
        instance_id="instance_id",
        record_time="record_time",
        begin_time="begin_time",
        end_time="end_time",
        required=frozenset({"instance_id", *_SNAKE_TIMES, "usage_value", "product_id"}),
        optional=frozenset({"relate_pkg_instance"}),
    ),
    Api.LEGACY: _Schema(
        list_key="usageRecords",
        instance_id="instanceId",
        record_time="recordTime",
        begin_time="beginTime",
        end_time="endTime",
        required=frozenset({"instanceId", "recordTime", "beginTime", "endTime", "usageEntity"}),
        optional=frozenset(),
    ),
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_usage_body(api: Api, body: bytes) -> list[Any]:
    """The record list of a usage body; MKT.0101 / MKT.9003 when the body has the wrong shape."""
    schema = _SCHEMAS[api]
    try:
        data = json.loads(
            body,
            parse_float=JsonNumber,
            parse_int=JsonNumber,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError):
        raise ApiError(BAD_PARAMETER, "the body is not valid UTF-8 JSON") from None

    if not isinstance(data, dict):
        raise ApiError(BAD_PARAMETER, f'the body must be an object {{"{schema.list_key}": [...]}}')

    unknown = sorted(set(data) - {schema.list_key})
    if unknown:
        raise ApiError(BAD_PARAMETER, f"the body has unknown fields {unknown}")

    records = data.get(schema.list_key)
    if records is None:
        raise ApiError(BAD_PARAMETER, f"{schema.list_key} is missing")

    if not isinstance(records, list):
        raise ApiError(BAD_PARAMETER, f"{schema.list_key} must be a list")

    if not records:
        raise ApiError(BAD_PARAMETER, f"{schema.list_key} is empty")

    if len(records) > MAX_RECORDS:
        raise ApiError(TOO_MANY, f"{len(records)} records, at most {MAX_RECORDS} are allowed")

    return records


def parse_time(text: str) -> datetime | None:
    """A UTC ``yyyyMMdd'T'HHmmss'Z'`` time, or None when the text is not exactly that."""
    if _TIME.fullmatch(text) is None:
        return None

    try:
        return datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[9:11]),
            int(text[11:13]),
            int(text[13:15]),
            tzinfo=timezone.utc,
        )
    except ValueError:
        return None


class _RecordReader:
    """Reads one record's fields, raising with the record's index and the field's wire name."""

    def __init__(self, list_key: str, index: int, item: dict[str, Any]) -> None:
        self.where = f"{list_key}[{index}]"
        self.item = item

    def text(self, name: str, *, min_length: int = 1) -> str:
        value = self.item[name]
        if type(value) is not str:
            raise ApiError(BAD_INPUT, f"{self.where}.{name} must be a string")

        if not min_length <= len(value) <= _MAX_TEXT:
            raise ApiError(
                BAD_INPUT, f"{self.where}.{name} must hold {min_length}..{_MAX_TEXT} characters"
            )

        return value

    def optional_text(self, name: str) -> str | None:
        if self.item.get(name) is None:
            return None

        return self.text(name, min_length=0)

    def time(self, name: str) -> tuple[str, datetime]:
        value = self.item[name]
        parsed = parse_time(value) if type(value) is str else None
        if parsed is None:
            raise ApiError(BAD_INPUT, f"{self.where}.{name} must be a UTC time yyyyMMddTHHmmssZ")

        return value, parsed

    def quantity(self, name: str, value: object) -> Decimal:
        if not isinstance(value, str):
            raise ApiError(BAD_INPUT, f"{self.where}.{name} must be a decimal string")

        match = _DECIMAL.fullmatch(value)
        if match is None:
            raise ApiError(BAD_INPUT, f"{self.where}.{name} is not a plain decimal: {value!r}")

        integer, fraction = match.group(1), match.group(2) or ""
        if len(fraction) > _MAX_DECIMAL_PLACES:
            raise ApiError(BAD_INPUT, f"{self.where}.{name} has {len(fraction)} decimal places")

        if len(integer.lstrip("0")) > _MAX_INTEGER_DIGITS:
            raise ApiError(BAD_INPUT, f"{self.where}.{name} has more than 8 integer digits")

        number = Decimal(value)
        if number <= 0:
            raise ApiError(BAD_INPUT, f"{self.where}.{name} must be greater than 0")

        return number


@dataclass(frozen=True)
class _Context:
    api: Api
    schema: _Schema
    find_instance: Callable[[str], Instance | None]
    accept_any_instance: bool
    oldest_begin: datetime
    latest_end: datetime


def _check_shape(context: _Context, reader: _RecordReader) -> None:
    schema = context.schema
    unknown = sorted(set(reader.item) - schema.required - schema.optional)
    if unknown:
        raise ApiError(BAD_PARAMETER, f"{reader.where} has unknown fields {unknown}")

    missing = sorted(name for name in schema.required if reader.item.get(name) is None)
    if missing:
        raise ApiError(BAD_PARAMETER, f"{reader.where}.{missing[0]} is missing")


def _read_entity(reader: _RecordReader) -> tuple[str, Decimal]:
    entity = reader.item["usageEntity"]
    if not isinstance(entity, dict) or len(entity) != 1:
        raise ApiError(BAD_PARAMETER, f"{reader.where}.usageEntity must hold exactly one entity")

    ((name, value),) = entity.items()
    return name, reader.quantity(f"usageEntity.{name}", value)


def _check_window(
    context: _Context, reader: _RecordReader, begin: datetime, end: datetime
) -> None:
    schema = context.schema
    if begin > end:
        raise ApiError(BAD_INPUT, f"{reader.where}.{schema.begin_time} is after {schema.end_time}")

    if end > context.latest_end:
        raise ApiError(BAD_INPUT, f"{reader.where}.{schema.end_time} is in the future")

    if begin < context.oldest_begin:
        raise ApiError(
            TOO_OLD, f"{reader.where}.{schema.begin_time} is more than 21 days in the past"
        )


def _check_instance(context: _Context, reader: _RecordReader, record: UsageRecord) -> None:
    schema = context.schema
    instance = context.find_instance(record.instance_id)
    if instance is None and not context.accept_any_instance:
        raise ApiError(
            NO_INSTANCE, f"{reader.where}.{schema.instance_id} {record.instance_id} is unknown"
        )

    product_id = record.product_id
    if instance is not None and product_id is not None and product_id != instance.product_id:
        raise ApiError(BAD_INPUT, f"{reader.where}.product_id is not the instance's product")

    entities = instance.entities if instance is not None else DEFAULT_ENTITIES
    if record.entity is not None and record.entity not in entities:
        raise ApiError(
            BAD_ENTITY, f"{reader.where}.usageEntity {record.entity} is not metered here"
        )


def _validate_record(context: _Context, index: int, item: object) -> UsageRecord:
    schema = context.schema
    if not isinstance(item, dict):
        raise ApiError(BAD_PARAMETER, f"{schema.list_key}[{index}] must be an object")

    reader = _RecordReader(schema.list_key, index, item)
    _check_shape(context, reader)

    instance_id = reader.text(schema.instance_id)
    product_id = reader.text("product_id") if context.api is Api.V1 else None
    metering_sn = reader.text("metering_sn") if context.api is Api.V2 else None
    relate_pkg_instance = reader.optional_text("relate_pkg_instance")
    record_time, _ = reader.time(schema.record_time)
    begin_time, begin = reader.time(schema.begin_time)
    end_time, end = reader.time(schema.end_time)

    entity: str | None = None
    if context.api is Api.LEGACY:
        entity, usage_value = _read_entity(reader)
    else:
        usage_value = reader.quantity("usage_value", item["usage_value"])

    _check_window(context, reader, begin, end)

    record = UsageRecord(
        index=index,
        instance_id=instance_id,
        record_time=record_time,
        begin_time=begin_time,
        end_time=end_time,
        usage_value=usage_value,
        metering_sn=metering_sn,
        relate_pkg_instance=relate_pkg_instance,
        product_id=product_id,
        entity=entity,
    )
    _check_instance(context, reader, record)

    return record


def validate_records(
    api: Api,
    items: list[Any],
    find_instance: Callable[[str], Instance | None],
    *,
    accept_any_instance: bool,
    now: datetime,
) -> list[UsageRecord]:
    """Every record checked in order; the first failure raises, naming its index and field."""
    context = _Context(
        api=api,
        schema=_SCHEMAS[api],
        find_instance=find_instance,
        accept_any_instance=accept_any_instance,
        oldest_begin=now - MAX_AGE,
        latest_end=now + FUTURE_TOLERANCE,
    )
    return [_validate_record(context, index, item) for index, item in enumerate(items)]
