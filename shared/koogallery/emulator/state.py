"""Everything the emulator remembers: instances, stored records, duplicates and the request log.

One lock guards it all. Snapshots (``records``, ``duplicates``, ``requests``, ``charges``)
are immutable tuples copied under that lock, so a test can read them while clients keep pushing.

The platform keeps the first write: a record whose ``metering_sn`` is already held, or whose
``(instance_id, begin_time, end_time)`` window is already held, is a duplicate. It is counted and
reported, never stored a second time, and never fails its request. A request is committed in one
locked step, so duplicates inside one request and across concurrent requests are judged in a
single, consistent order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any, Literal

from koogallery.emulator.body_signature import NonceCache
from koogallery.emulator.config import Instance
from koogallery.emulator.validation import UsageRecord
from koogallery.emulator.variants import Api

__all__ = [
    "Charge",
    "CommitResult",
    "DuplicateReason",
    "DuplicateRecord",
    "EmulatorState",
    "RequestLogEntry",
    "StoredRecord",
    "decimal_text",
]

DuplicateReason = Literal["duplicate_metering_sn", "duplicate_window"]
_CHARGE_PRECISION = 60


def decimal_text(value: Decimal | None) -> str | None:
    """A decimal as plain digits (never an exponent), the form money travels in on the wire."""
    return None if value is None else format(value, "f")


def _time_text(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record the platform accepted and will bill, times kept exactly as received."""

    api: Api
    instance_id: str
    record_time: str
    begin_time: str
    end_time: str
    usage_value: Decimal
    metering_sn: str | None
    relate_pkg_instance: str | None
    product_id: str | None
    entity: str | None
    received_at: datetime
    request_id: str
    index: int

    def as_dict(self) -> dict[str, Any]:
        """The admin API form: status ``accepted``, the value as a decimal string."""
        return {
            "status": "accepted",
            "api": self.api.value,
            "instance_id": self.instance_id,
            "record_time": self.record_time,
            "begin_time": self.begin_time,
            "end_time": self.end_time,
            "usage_value": decimal_text(self.usage_value),
            "metering_sn": self.metering_sn,
            "relate_pkg_instance": self.relate_pkg_instance,
            "product_id": self.product_id,
            "entity": self.entity,
            "received_at": _time_text(self.received_at),
            "request_id": self.request_id,
            "index": self.index,
        }


@dataclass(frozen=True, slots=True)
class DuplicateRecord:
    """A record that was received but not stored, because an earlier one held its key."""

    api: Api
    instance_id: str
    begin_time: str
    end_time: str
    usage_value: Decimal
    metering_sn: str | None
    reason: DuplicateReason
    received_at: datetime
    request_id: str
    index: int

    def as_dict(self) -> dict[str, Any]:
        """The admin API form, with the reason the record was a duplicate."""
        return {
            "status": "duplicate",
            "reason": self.reason,
            "api": self.api.value,
            "instance_id": self.instance_id,
            "begin_time": self.begin_time,
            "end_time": self.end_time,
            "usage_value": decimal_text(self.usage_value),
            "metering_sn": self.metering_sn,
            "received_at": _time_text(self.received_at),
            "request_id": self.request_id,
            "index": self.index,
        }


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One request as the emulator answered it, injected faults included.

    ``http_status`` and ``error_code`` are None when the connection was dropped before any
    answer; ``record_count`` is None when the body could not be read as a record list.
    """

    time: datetime
    method: str
    path: str
    api: Api | None
    http_status: int | None
    error_code: str | None
    record_count: int | None
    nonce: str | None
    request_id: str
    fault: str | None
    stored: int = 0
    duplicates: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The admin API form."""
        return {
            "time": _time_text(self.time),
            "method": self.method,
            "path": self.path,
            "api": None if self.api is None else self.api.value,
            "http_status": self.http_status,
            "error_code": self.error_code,
            "record_count": self.record_count,
            "nonce": self.nonce,
            "request_id": self.request_id,
            "fault": self.fault,
            "stored": self.stored,
            "duplicates": self.duplicates,
        }


@dataclass(frozen=True, slots=True)
class Charge:
    """What one instance's stored usage costs: quantity times unit price, exactly.

    ``unit_price`` and ``amount`` are None for an instance accepted without registration, whose
    price the emulator cannot know.
    """

    instance_id: str
    product_id: str | None
    quantity: Decimal
    unit_price: Decimal | None
    amount: Decimal | None
    currency: str | None
    record_count: int

    def as_dict(self) -> dict[str, Any]:
        """The admin API form, every number as a decimal string."""
        return {
            "instance_id": self.instance_id,
            "product_id": self.product_id,
            "quantity": decimal_text(self.quantity),
            "unit_price": decimal_text(self.unit_price),
            "amount": decimal_text(self.amount),
            "currency": self.currency,
            "record_count": self.record_count,
        }


@dataclass(frozen=True)
class CommitResult:
    """How many records a request stored, and the indexes of those that were duplicates."""

    stored: int
    duplicate_indexes: tuple[int, ...]


class EmulatorState:
    """The platform's memory, shared by every request thread.

    state = EmulatorState(instances=[Instance("inst-1", product_id="p", unit_price=Decimal(1))])
    state.records      # tuple of StoredRecord, a consistent snapshot
    """

    def __init__(self, instances: Iterable[Instance] = (), *, accept_any_instance: bool = False):
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {item.instance_id: item for item in instances}
        self._accept_any_instance = accept_any_instance
        self._records: list[StoredRecord] = []
        self._duplicates: list[DuplicateRecord] = []
        self._requests: list[RequestLogEntry] = []
        self._held_sns: set[str] = set()
        self._held_windows: set[tuple[str, str, str]] = set()
        self.nonces = NonceCache()

    @property
    def accept_any_instance(self) -> bool:
        """Whether records for never-registered instances are accepted."""
        return self._accept_any_instance

    @accept_any_instance.setter
    def accept_any_instance(self, value: bool) -> None:
        with self._lock:
            self._accept_any_instance = value

    @property
    def instances(self) -> tuple[Instance, ...]:
        """The registered instances, in registration order."""
        with self._lock:
            return tuple(self._instances.values())

    @property
    def records(self) -> tuple[StoredRecord, ...]:
        """Every stored record, in the order it was accepted."""
        with self._lock:
            return tuple(self._records)

    @property
    def duplicates(self) -> tuple[DuplicateRecord, ...]:
        """Every duplicate received, in the order it arrived."""
        with self._lock:
            return tuple(self._duplicates)

    @property
    def requests(self) -> tuple[RequestLogEntry, ...]:
        """The request log, oldest first."""
        with self._lock:
            return tuple(self._requests)

    def find_instance(self, instance_id: str) -> Instance | None:
        """The registered instance with this id, if any."""
        with self._lock:
            return self._instances.get(instance_id)

    def add_instances(self, instances: Iterable[Instance]) -> None:
        """Register instances; registering an id again replaces its settings."""
        with self._lock:
            for instance in instances:
                self._instances[instance.instance_id] = instance

    def commit(
        self,
        api: Api,
        records: Sequence[UsageRecord],
        *,
        request_id: str,
        received_at: datetime,
    ) -> CommitResult:
        """Store a validated request's records, first write wins, in one locked step."""
        stored = 0
        duplicates: list[int] = []
        with self._lock:
            for record in records:
                reason = self._duplicate_reason(record)
                if reason is not None:
                    duplicates.append(record.index)
                    self._duplicates.append(
                        _duplicate(api, record, reason, request_id, received_at)
                    )
                    continue

                self._hold(record)
                self._records.append(_stored(api, record, request_id, received_at))
                stored += 1

        return CommitResult(stored=stored, duplicate_indexes=tuple(duplicates))

    def log_request(self, entry: RequestLogEntry) -> None:
        """Append one answered (or dropped) request to the log."""
        with self._lock:
            self._requests.append(entry)

    @property
    def charges(self) -> tuple[Charge, ...]:
        """Per instance: stored quantity times unit price, registered instances first."""
        with self._lock:
            totals: dict[str, tuple[Decimal, int]] = {
                instance_id: (Decimal(0), 0) for instance_id in self._instances
            }
            with localcontext() as context:
                context.prec = _CHARGE_PRECISION
                for record in self._records:
                    quantity, count = totals.get(record.instance_id, (Decimal(0), 0))
                    totals[record.instance_id] = (quantity + record.usage_value, count + 1)

            instances = dict(self._instances)

        return tuple(
            _charge(instance_id, quantity, count, instances.get(instance_id))
            for instance_id, (quantity, count) in totals.items()
        )

    def reset(self) -> None:
        """Forget records, duplicates, the log and nonces; instances and settings stay."""
        with self._lock:
            self._records.clear()
            self._duplicates.clear()
            self._requests.clear()
            self._held_sns.clear()
            self._held_windows.clear()

        self.nonces.clear()

    def _duplicate_reason(self, record: UsageRecord) -> DuplicateReason | None:
        if record.metering_sn is not None and record.metering_sn in self._held_sns:
            return "duplicate_metering_sn"

        if (record.instance_id, record.begin_time, record.end_time) in self._held_windows:
            return "duplicate_window"

        return None

    def _hold(self, record: UsageRecord) -> None:
        if record.metering_sn is not None:
            self._held_sns.add(record.metering_sn)

        self._held_windows.add((record.instance_id, record.begin_time, record.end_time))


def _stored(api: Api, record: UsageRecord, request_id: str, at: datetime) -> StoredRecord:
    return StoredRecord(
        api=api,
        instance_id=record.instance_id,
        record_time=record.record_time,
        begin_time=record.begin_time,
        end_time=record.end_time,
        usage_value=record.usage_value,
        metering_sn=record.metering_sn,
        relate_pkg_instance=record.relate_pkg_instance,
        product_id=record.product_id,
        entity=record.entity,
        received_at=at,
        request_id=request_id,
        index=record.index,
    )


def _duplicate(
    api: Api, record: UsageRecord, reason: DuplicateReason, request_id: str, at: datetime
) -> DuplicateRecord:
    return DuplicateRecord(
        api=api,
        instance_id=record.instance_id,
        begin_time=record.begin_time,
        end_time=record.end_time,
        usage_value=record.usage_value,
        metering_sn=record.metering_sn,
        reason=reason,
        received_at=at,
        request_id=request_id,
        index=record.index,
    )


def _charge(instance_id: str, quantity: Decimal, count: int, instance: Instance | None) -> Charge:
    if instance is None:
        return Charge(instance_id, None, quantity, None, None, None, count)

    with localcontext() as context:
        context.prec = _CHARGE_PRECISION
        amount = quantity * instance.unit_price

    return Charge(
        instance_id=instance_id,
        product_id=instance.product_id,
        quantity=quantity,
        unit_price=instance.unit_price,
        amount=amount,
        currency=instance.currency,
        record_count=count,
    )
