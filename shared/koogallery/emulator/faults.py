"""Injected failures for the usage and bill endpoints: errors, dropped connections and latency.

A client is only as good as its behaviour when the platform misbehaves, so the emulator can be
told to misbehave on purpose, reproducibly:

    emu.set_faults(FaultPlan(sequence=("500", "drop", "ok"), rates={"429": 0.1}, seed=7))

Each usage request draws one fault. The ``sequence`` is consumed first, one entry per request;
once it is empty, the ``rates`` apply, drawn from a random generator seeded with ``seed`` so a
failing run can be replayed exactly. The fault kinds are:

    500                HTTP 500 MKT.0999 before the request is looked at
    429                HTTP 429 MKT.0250 before the request is looked at
    drop               the connection is closed without a response, nothing is processed
    drop_after_commit  the request is processed (its records are stored), then the connection is
                       closed without a response: the ambiguous case a client must retry, and
                       that retry must then come back as duplicates
    ok                 (sequence only) no fault for this request

``latency_ms`` delays every usage request, either by a fixed number of milliseconds or by a
uniform draw from a ``[min, max]`` range. Admin routes never see faults.

The bill APIs draw from a plan of their own (``emu.set_bill_faults(plan)``), so a test can break
the bill fetch without touching the usage push, or the other way round. The same kinds mean:

    500                HTTP 500 CBC.0999 before the request is looked at
    429                HTTP 429 APIG.0308 (the gateway's throttling answer)
    drop               the connection is closed without a response
    drop_after_commit  the bill is computed, then the connection is closed without a response;
                       a bill read changes nothing, so to a client this is the same as ``drop``
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Fault", "FaultInjector", "FaultPlan"]


class Fault(str, Enum):
    """What happens to one request; the value is the name used in plans and logs."""

    OK = "ok"
    ERROR_500 = "500"
    RATE_LIMIT_429 = "429"
    DROP = "drop"
    DROP_AFTER_COMMIT = "drop_after_commit"


_RATE_ORDER = (Fault.ERROR_500, Fault.RATE_LIMIT_429, Fault.DROP, Fault.DROP_AFTER_COMMIT)


def _as_fault(name: object, *, allow_ok: bool) -> Fault:
    try:
        fault = Fault(str(name))
    except ValueError:
        raise ValueError(f"unknown fault {name!r}") from None

    if fault is Fault.OK and not allow_ok:
        raise ValueError("'ok' is only meaningful inside a sequence, not as a rate")

    return fault


def _as_latency(value: object) -> tuple[float, float] | None:
    if value is None:
        return None

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = float(value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        low, high = (float(bound) for bound in value)
    else:
        raise ValueError(f"latency_ms must be a number or a [min, max] pair, not {value!r}")

    if low < 0 or high < low:
        raise ValueError(f"latency_ms range must satisfy 0 <= min <= max, not {value!r}")

    return low, high


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject, and how often; an empty plan injects nothing.

    FaultPlan(rates={"500": 0.2, "drop": 0.05}, seed=7, latency_ms=(5, 20))
    FaultPlan(sequence=("drop_after_commit", "ok"))
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    sequence: Sequence[str] = ()
    latency_ms: float | tuple[float, float] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        rates = {_as_fault(name, allow_ok=False).value: float(p) for name, p in self.rates.items()}
        for name, probability in rates.items():
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"rate of {name!r} must lie in [0, 1], not {probability}")

        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates must add up to at most 1")

        sequence = tuple(_as_fault(name, allow_ok=True).value for name in self.sequence)
        object.__setattr__(self, "rates", rates)
        object.__setattr__(self, "sequence", sequence)
        object.__setattr__(self, "latency_ms", _as_latency(self.latency_ms))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """Read a plan from its JSON form (the admin API body and the config file's ``faults``)."""
        unknown = set(data) - {"rates", "sequence", "latency_ms", "seed"}
        if unknown:
            raise ValueError(f"unknown fault plan fields: {sorted(unknown)}")

        rates = data.get("rates") or {}
        if not isinstance(rates, Mapping):
            raise ValueError("rates must be an object of fault name to probability")

        sequence = data.get("sequence") or ()
        if isinstance(sequence, str) or not isinstance(sequence, Iterable):
            raise ValueError("sequence must be a list of fault names")

        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError("seed must be an integer")

        return cls(
            rates=rates,
            sequence=tuple(sequence),
            latency_ms=data.get("latency_ms"),
            seed=seed,
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the plan, the inverse of ``from_dict``."""
        latency = None if self.latency_ms is None else list(_as_latency(self.latency_ms) or ())
        return {
            "rates": dict(self.rates),
            "sequence": list(self.sequence),
            "latency_ms": latency,
            "seed": self.seed,
        }


class FaultInjector:
    """Draws the fault for each request from the current plan, safely across threads.

    The draw happens under a lock so that concurrent requests consume the sequence one entry
    each, in arrival order, and the seeded generator yields the same series on every run.
    """

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self._lock = threading.Lock()
        self._plan = FaultPlan()
        self._remaining: deque[Fault] = deque()
        self._rng = random.Random()
        self.set_plan(plan or FaultPlan())

    @property
    def plan(self) -> FaultPlan:
        """The plan in force, as it was set (the sequence before any entry was consumed)."""
        with self._lock:
            return self._plan

    @property
    def remaining_sequence(self) -> tuple[str, ...]:
        """The sequence entries not consumed yet."""
        with self._lock:
            return tuple(fault.value for fault in self._remaining)

    def set_plan(self, plan: FaultPlan) -> None:
        """Replace the plan; the sequence restarts and the generator is reseeded."""
        with self._lock:
            self._plan = plan
            self._remaining = deque(Fault(name) for name in plan.sequence)
            self._rng = random.Random(plan.seed)

    def clear(self) -> None:
        """Stop injecting anything."""
        self.set_plan(FaultPlan())

    def next_fault(self) -> Fault:
        """The fault for the next request: the next sequence entry, else a rate draw."""
        with self._lock:
            if self._remaining:
                return self._remaining.popleft()

            return self._draw_from_rates()

    def next_delay_seconds(self) -> float:
        """How long to hold the next request before handling it."""
        with self._lock:
            latency = self._plan.latency_ms
            if latency is None:
                return 0.0

            low, high = _as_latency(latency) or (0.0, 0.0)
            milliseconds = low if low == high else self._rng.uniform(low, high)
            return milliseconds / 1000.0

    def _draw_from_rates(self) -> Fault:
        if not self._plan.rates:
            return Fault.OK

        draw = self._rng.random()
        threshold = 0.0
        for fault in _RATE_ORDER:
            threshold += self._plan.rates.get(fault.value, 0.0)
            if draw < threshold:
                return fault

        return Fault.OK
