"""The usage every benchmark pushes: valid, distinct, recent, and made the same way each run.

Record ``k`` of a workload belongs to instance ``k // HOURS`` and covers hour ``k % HOURS`` of
the last ``HOURS`` hours. So every record has a window of its own (and a ``metering_sn`` of its
own), no record is older than KooGallery's 21 days allow, and window boundaries repeat across
instances, as hourly usage from many instances does.

    workload = Workload(10_000)
    workload.raw(0, 5_000)       # records as a producer writes them (JSON-ready dicts)
    workload.wire(0, 1_000)      # the same records as the v2 usage API receives them
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

__all__ = ["HOURS", "MESSAGES_PER_EVENT", "RECORDS_PER_MESSAGE", "Workload"]

HOURS = 480
"""20 days of hourly windows: inside the 21-day limit with a day to spare for a long run."""

MESSAGES_PER_EVENT = 100
"""Messages per Kafka trigger event: the ``batch_size`` of the trigger in ``template.yaml``."""

RECORDS_PER_MESSAGE = 10
"""Records per message, so that one event carries one full request of 1000 records."""

TimeForm = Literal["iso", "compact"]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class Workload:
    """``size`` records whose windows end before ``now`` (default: the start of this hour).

    ``time_form`` is how the producer writes times: ISO-8601 (``iso``), as the README's message
    examples do, or KooGallery's own compact form (``compact``). ``prefix`` starts every
    instance id, so that workloads with different prefixes never share a record.
    """

    size: int
    time_form: TimeForm = "iso"
    prefix: str = "bench"
    now: datetime = field(
        default_factory=lambda: datetime.now(timezone.utc).replace(
            minute=0, second=0, microsecond=0
        )
    )

    def __post_init__(self) -> None:
        boundaries = [self.now - timedelta(hours=HOURS - hour) for hour in range(HOURS + 1)]
        form = _iso if self.time_form == "iso" else _compact
        object.__setattr__(self, "_texts", [form(moment) for moment in boundaries])
        object.__setattr__(self, "_compacts", [_compact(moment) for moment in boundaries])

    def instance_id(self, index: int) -> str:
        return f"{self.prefix}-{index // HOURS:07d}"

    def usage_value(self, index: int) -> str:
        """A decimal text with up to two places, as a producer would write it."""
        return f"{index % 9973 + 1}.{index % 97:02d}"

    def raw(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Records ``start`` to ``stop`` as a producer writes them."""
        texts: list[str] = self._texts  # type: ignore[attr-defined]
        return [
            {
                "instance_id": self.instance_id(index),
                "begin_time": texts[index % HOURS],
                "end_time": texts[index % HOURS + 1],
                "usage_value": self.usage_value(index),
            }
            for index in range(start, min(stop, self.size))
        ]

    def wire(self, start: int, stop: int) -> list[dict[str, str]]:
        """Records ``start`` to ``stop`` in the v2 API's wire form, keys in sorted order.

        Sorted keys make ``json.dumps`` without ``sort_keys`` write the very bytes the client
        writes, so a floor built on them serialises exactly what the client sends.
        """
        compacts: list[str] = self._compacts  # type: ignore[attr-defined]
        wire = []
        for index in range(start, min(stop, self.size)):
            instance_id = self.instance_id(index)
            begin, end = compacts[index % HOURS], compacts[index % HOURS + 1]
            key = f"{instance_id}|{begin}|{end}|".encode()
            value = Decimal(self.usage_value(index)).normalize()
            wire.append(
                {
                    "begin_time": begin,
                    "end_time": end,
                    "instance_id": instance_id,
                    "metering_sn": hashlib.sha256(key).hexdigest(),
                    "record_time": end,
                    "usage_value": format(value, "f"),
                }
            )
        return wire

    def kafka_events(self) -> Iterator[dict[str, Any]]:
        """The workload as DMS Kafka trigger events of ``MESSAGES_PER_EVENT`` messages each."""
        per_event = MESSAGES_PER_EVENT * RECORDS_PER_MESSAGE
        for start in range(0, self.size, per_event):
            records = self.raw(start, start + per_event)
            messages = [
                json.dumps({"usage_records": records[first : first + RECORDS_PER_MESSAGE]})
                for first in range(0, len(records), RECORDS_PER_MESSAGE)
            ]
            yield {
                "event_version": "v1.0",
                "trigger_type": "KAFKA",
                "region": "bench-region",
                "instance_id": "bench-kafka",
                "records": [{"topic_id": "usage-events", "messages": messages}],
            }

    def write_jsonl(self, path: Path, *, batch: int = 10_000) -> Path:
        """Write the workload as JSON Lines, one record a line, without holding all of it."""
        with path.open("w", encoding="utf-8") as stream:
            for start in range(0, self.size, batch):
                stream.writelines(
                    json.dumps(record) + "\n" for record in self.raw(start, start + batch)
                )
        return path
