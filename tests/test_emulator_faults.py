"""Injected faults: errors, dropped connections before and after commit, order and latency."""

from __future__ import annotations

import time

import httpx
import pytest

from koogallery.emulator import Fault, FaultPlan
from koogallery.emulator.faults import FaultInjector
from tests.emulator_fixtures import v2_record

pytest_plugins = ["tests.emulator_fixtures"]


def test_injected_500_answers_mkt_0999_and_stores_nothing(client) -> None:
    client.emulator.set_faults(FaultPlan(rates={"500": 1.0}))

    response = client.push_v2([v2_record(client.clock)])

    assert response.status_code == 500
    assert response.json() == {"error_code": "MKT.0999", "error_msg": "System internal error."}
    assert client.emulator.state.records == ()
    assert client.emulator.state.requests[0].fault == "500"


def test_injected_429_answers_mkt_0250_and_stores_nothing(client) -> None:
    client.emulator.set_faults(FaultPlan(rates={"429": 1.0}))

    response = client.push_v1([])

    assert response.status_code == 429
    assert response.json() == {
        "error_code": "MKT.0250",
        "error_msg": "Access frequency overlimit",
    }


def test_injected_drop_closes_the_connection_without_a_response(client) -> None:
    client.emulator.set_faults(FaultPlan(sequence=["drop"]))

    with pytest.raises(httpx.RemoteProtocolError):
        client.push_v2([v2_record(client.clock)])

    state = client.emulator.state
    assert state.records == ()
    (entry,) = state.requests
    assert (entry.fault, entry.http_status, entry.error_code, entry.stored) == (
        "drop",
        None,
        None,
        0,
    )


def test_drop_after_commit_stores_the_records_and_the_retry_sees_duplicates(client) -> None:
    records = [v2_record(client.clock, hours_ago=1), v2_record(client.clock, hours_ago=2)]
    client.emulator.set_faults(FaultPlan(sequence=["drop_after_commit"]))

    with pytest.raises(httpx.RemoteProtocolError):
        client.push_v2(records)
    retry = client.push_v2(records)

    assert retry.json()["extra_info"] == {"duplicates": [0, 1]}
    state = client.emulator.state
    assert len(state.records) == 2
    assert [d.reason for d in state.duplicates] == ["duplicate_metering_sn"] * 2
    dropped, answered = state.requests
    assert (dropped.fault, dropped.http_status, dropped.error_code, dropped.stored) == (
        "drop_after_commit",
        None,
        "MKT.0000",
        2,
    )
    assert (answered.http_status, answered.duplicates) == (200, 2)


def test_fault_sequence_is_consumed_in_order_before_rates_apply(client) -> None:
    client.emulator.set_faults(FaultPlan(sequence=["500", "drop", "ok", "429"]))
    outcomes: list[int | str] = []

    for hours_ago in range(1, 6):
        try:
            outcomes.append(
                client.push_v2([v2_record(client.clock, hours_ago=hours_ago)]).status_code
            )
        except httpx.RemoteProtocolError:
            outcomes.append("dropped")

    assert outcomes == [500, "dropped", 200, 429, 200]
    assert [entry.fault for entry in client.emulator.state.requests] == [
        "500",
        "drop",
        None,
        "429",
        None,
    ]


def test_seeded_rates_draw_the_same_faults_on_every_run() -> None:
    plan = FaultPlan(rates={"500": 0.3, "drop": 0.2}, seed=7)
    first, second = FaultInjector(plan), FaultInjector(plan)

    draws = [first.next_fault() for _ in range(200)]

    assert draws == [second.next_fault() for _ in range(200)]
    assert {Fault.OK, Fault.ERROR_500, Fault.DROP} == set(draws)
    assert 40 <= draws.count(Fault.ERROR_500) <= 80


def test_setting_a_plan_again_restarts_its_sequence_and_seed() -> None:
    injector = FaultInjector(FaultPlan(sequence=["429"], rates={"500": 0.5}, seed=3))
    first_run = [injector.next_fault() for _ in range(20)]

    injector.set_plan(FaultPlan(sequence=["429"], rates={"500": 0.5}, seed=3))

    assert [injector.next_fault() for _ in range(20)] == first_run
    assert first_run[0] is Fault.RATE_LIMIT_429


def test_fixed_latency_delays_every_usage_request(client) -> None:
    client.emulator.set_faults(FaultPlan(latency_ms=150))

    started = time.perf_counter()
    response = client.push_v2([v2_record(client.clock)])
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.15


def test_latency_range_draws_within_its_bounds() -> None:
    injector = FaultInjector(FaultPlan(latency_ms=(10, 20), seed=1))

    delays = [injector.next_delay_seconds() for _ in range(100)]

    assert all(0.010 <= delay <= 0.020 for delay in delays)
    assert len(set(delays)) > 1


def test_clearing_faults_restores_normal_answers(client) -> None:
    client.emulator.set_faults(FaultPlan(rates={"500": 1.0}))
    client.emulator.clear_faults()

    response = client.push_v2([v2_record(client.clock)])

    assert response.status_code == 200


def test_admin_routes_are_never_faulted(client) -> None:
    client.emulator.set_faults(FaultPlan(rates={"drop": 1.0}))

    response = client.admin("GET", "health")

    assert response.status_code == 200
    assert client.emulator.faults.remaining_sequence == ()


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"rates": {"500": 0.7, "429": 0.4}}, "fault rates must add up to at most 1"),
        ({"rates": {"503": 0.1}}, "unknown fault '503'"),
        ({"rates": {"ok": 0.1}}, "'ok' is only meaningful inside a sequence, not as a rate"),
        ({"sequence": ["boom"]}, "unknown fault 'boom'"),
        ({"latency_ms": [20, 10]}, "latency_ms range must satisfy 0 <= min <= max, not [20, 10]"),
        ({"jitter": 1}, "unknown fault plan fields: ['jitter']"),
    ],
)
def test_invalid_fault_plan_is_refused(plan: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        FaultPlan.from_dict(plan)

    assert str(refused.value) == message
