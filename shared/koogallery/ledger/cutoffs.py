"""KooGallery's collection cut-offs: when the usage of a window is turned into a bill.

KooGallery collects hourly-billed usage at minute 15 of every hour and daily-billed usage at
01:00 Beijing time (UTC+8) the next day. A record that arrives after its collection has run is
*late*: KooGallery may still take it, but the charge slips into a later bill, so the ledger
reports it.

A window belongs to the billing period that holds its last instant, the same rule for both
modes: a window ending exactly on a boundary belongs to the period before it.

    collection_moment(datetime(2026, 12, 4, 10, 0, tzinfo=UTC), "hourly")  # 10:15 UTC
    collection_moment(datetime(2026, 12, 4, 10, 10, tzinfo=UTC), "hourly")  # 11:15 UTC
    collection_moment(datetime(2026, 12, 3, 16, 0, tzinfo=UTC), "daily")    # 12-03 17:00 UTC
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Literal

__all__ = [
    "BEIJING",
    "BillingMode",
    "collection_moment",
    "is_late",
    "next_collection",
]

BillingMode = Literal["hourly", "daily"]
"""How the instances of the product are billed. KooGallery decides it per product; the ledger
cannot see it, so it is a setting of the ledger."""

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
"""KooGallery's billing clock. China has no daylight saving time, so a fixed offset is exact."""

_HOURLY_DELAY = timedelta(minutes=15)
_DAILY_DELAY = timedelta(hours=1)

_CACHE_SIZE = 4096
"""Distinct window ends remembered. Every record of a claim is checked for lateness, and a
batch shares a few hundred window ends; when the cache is full it starts again, which bounds
its memory whatever the input."""

_moments: dict[tuple[datetime, str], datetime] = {}


def collection_moment(end_time: datetime, billing_mode: BillingMode) -> datetime:
    """When KooGallery collects the usage of a window ending at ``end_time`` (in UTC).

    Remembered for aware times, which name one instant whatever their zone; a naive time is
    worked out every time, since what it means depends on the machine's zone.
    """
    if end_time.tzinfo is None or end_time.utcoffset() is None:
        return _collection_moment(end_time, billing_mode)
    key = (end_time, billing_mode)
    moment = _moments.get(key)
    if moment is None:
        moment = _collection_moment(end_time, billing_mode)
        if len(_moments) >= _CACHE_SIZE:
            _moments.clear()
        _moments[key] = moment
    return moment


def _collection_moment(end_time: datetime, billing_mode: BillingMode) -> datetime:
    if billing_mode == "hourly":
        period_end = _ceil(end_time.astimezone(timezone.utc), timedelta(hours=1))
        return period_end + _HOURLY_DELAY

    local_end = end_time.astimezone(BEIJING)
    period_end = _ceil(local_end, timedelta(days=1))
    return (period_end + _DAILY_DELAY).astimezone(timezone.utc)


def is_late(end_time: datetime, now: datetime, billing_mode: BillingMode) -> bool:
    """True once the window's collection has started: a push from then on may miss its bill."""
    return now >= collection_moment(end_time, billing_mode)


def next_collection(now: datetime, billing_mode: BillingMode) -> datetime:
    """The first collection strictly after ``now`` (in UTC): the next deadline to flush before."""
    if billing_mode == "hourly":
        start = now.astimezone(timezone.utc)
        candidate = _floor(start, timedelta(hours=1)) + _HOURLY_DELAY
        step = timedelta(hours=1)
    else:
        start = now.astimezone(BEIJING)
        candidate = _floor(start, timedelta(days=1)) + _DAILY_DELAY
        step = timedelta(days=1)

    if candidate <= start:
        candidate += step
    return candidate.astimezone(timezone.utc)


def _floor(moment: datetime, period: timedelta) -> datetime:
    """The start of the hour or day (in ``moment``'s own zone) that holds ``moment``."""
    if period == timedelta(days=1):
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, period: timedelta) -> datetime:
    """The end of the period that holds the last instant before ``moment``."""
    start = _floor(moment, period)
    return start if start == moment else start + period
