"""The admin API under /_emulator/ and the Python facade it mirrors."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from koogallery.emulator import (
    Api,
    Credential,
    EmulatorConfig,
    FaultPlan,
    Instance,
)
from tests.emulator_fixtures import DAILY, HOURLY, v1_record, v2_record

pytest_plugins = ["tests.emulator_fixtures"]


def test_health_reports_status_clock_and_counts(client) -> None:
    client.push_v2([v2_record(client.clock)])

    response = client.admin("GET", "health")

    assert response.json() == {
        "status": "ok",
        "now": client.clock().isoformat().replace("+00:00", "Z"),
        "instances": 2,
        "records": 1,
    }


def test_instances_lists_the_registered_instances_with_prices_as_strings(client) -> None:
    response = client.admin("GET", "instances")

    assert response.json() == {
        "instances": [
            {
                "instance_id": "inst-hourly-0001",
                "product_id": "prod-hourly",
                "unit_price": "0.5",
                "billing_mode": "hourly",
                "currency": "CNY",
                "entities": ["times"],
            },
            {
                "instance_id": "inst-daily-0002",
                "product_id": "prod-daily",
                "unit_price": "1.25",
                "billing_mode": "daily",
                "currency": "CNY",
                "entities": ["times", "gb"],
            },
        ],
        "accept_any_instance": False,
    }


def test_posting_one_instance_registers_it_for_pushes(client) -> None:
    added = client.admin(
        "POST",
        "instances",
        {"instance_id": "inst-new", "product_id": "prod-new", "unit_price": "0.0001"},
    )

    response = client.push_v2([v2_record(client.clock, instance_id="inst-new", usage_value="3")])

    assert added.json()["instances"][0]["unit_price"] == "0.0001"
    assert response.status_code == 200
    charge = next(c for c in client.emulator.state.charges if c.instance_id == "inst-new")
    assert charge.amount == Decimal("0.0003")


def test_posting_a_list_of_instances_registers_each(client) -> None:
    response = client.admin(
        "POST",
        "instances",
        [
            {"instance_id": "a", "product_id": "p", "unit_price": 2.5, "currency": "USD"},
            {"instance_id": "b", "product_id": "p", "unit_price": "1", "billing_mode": "daily"},
        ],
    )

    assert [item["instance_id"] for item in response.json()["instances"]] == ["a", "b"]
    state_ids = [instance.instance_id for instance in client.emulator.state.instances]
    assert state_ids == [HOURLY.instance_id, DAILY.instance_id, "a", "b"]
    assert client.emulator.state.find_instance("a") == Instance(
        "a", product_id="p", unit_price=Decimal("2.5"), currency="USD"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"instance_id": "x", "product_id": "p"},
        {"instance_id": "x", "product_id": "p", "unit_price": "-1"},
        {"instance_id": "x", "product_id": "p", "unit_price": "1", "billing_mode": "weekly"},
        {"instance_id": "x", "product_id": "p", "unit_price": "1", "colour": "red"},
        "not an object",
    ],
)
def test_posting_an_invalid_instance_answers_400_and_registers_nothing(client, body) -> None:
    response = client.admin("POST", "instances", body)

    assert response.status_code == 400
    assert response.json()["error"].startswith("not a valid instance: ")
    assert len(client.emulator.state.instances) == 2


def test_faults_are_set_shown_and_cleared_through_the_admin_api(client) -> None:
    plan = {"rates": {"500": 0.25}, "sequence": ["drop", "ok"], "latency_ms": [1, 2], "seed": 9}

    posted = client.admin("POST", "faults", plan)
    shown = client.admin("GET", "faults")
    cleared = client.admin("DELETE", "faults")

    expected = {"faults": plan, "remaining_sequence": ["drop", "ok"]}
    assert posted.json() == expected
    assert shown.json() == expected
    assert cleared.json() == {
        "faults": {"rates": {}, "sequence": [], "latency_ms": None, "seed": None},
        "remaining_sequence": [],
    }


def test_posting_an_invalid_fault_plan_answers_400(client) -> None:
    response = client.admin("POST", "faults", {"rates": {"500": 2}})

    assert response.status_code == 400
    assert response.json() == {
        "error": "not a valid fault plan: rate of '500' must lie in [0, 1], not 2.0"
    }


def test_records_lists_accepted_records_and_duplicates_with_reasons(client) -> None:
    record = v2_record(client.clock, usage_value="1.5", metering_sn="sn-1")
    first = client.push_v2([record])
    second = client.push_v2([record, v2_record(client.clock, metering_sn="sn-2")])

    body = client.admin("GET", "records").json()

    assert (body["count"], body["duplicate_count"]) == (1, 2)
    assert body["records"] == [
        {
            "status": "accepted",
            "api": "v2",
            "instance_id": HOURLY.instance_id,
            "record_time": record["record_time"],
            "begin_time": record["begin_time"],
            "end_time": record["end_time"],
            "usage_value": "1.5",
            "metering_sn": "sn-1",
            "relate_pkg_instance": None,
            "product_id": None,
            "entity": None,
            "received_at": client.clock().isoformat().replace("+00:00", "Z"),
            "request_id": first.headers["X-Request-Id"],
            "index": 0,
        }
    ]
    assert [(d["index"], d["reason"], d["request_id"]) for d in body["duplicates"]] == [
        (0, "duplicate_metering_sn", second.headers["X-Request-Id"]),
        (1, "duplicate_window", second.headers["X-Request-Id"]),
    ]


def test_requests_lists_the_request_log(client) -> None:
    response = client.push_v1([v1_record(client.clock)])

    body = client.admin("GET", "requests").json()

    assert body == {
        "count": 1,
        "requests": [
            {
                "time": client.clock().isoformat().replace("+00:00", "Z"),
                "method": "POST",
                "path": "/rest/marketplace/v1/isv/usage-data",
                "api": "v1",
                "http_status": 200,
                "error_code": "MKT.0000",
                "record_count": 1,
                "nonce": None,
                "request_id": response.headers["X-Request-Id"],
                "fault": None,
                "stored": 1,
                "duplicates": 0,
            }
        ],
    }


def test_charges_report_quantity_price_and_amount_as_decimal_strings(client) -> None:
    client.push_v2(
        [
            v2_record(client.clock, hours_ago=1, usage_value="0.0001"),
            v2_record(client.clock, hours_ago=2, usage_value="99999999.9999"),
        ]
    )

    body = client.admin("GET", "charges").json()

    assert body == {
        "charges": [
            {
                "instance_id": HOURLY.instance_id,
                "product_id": HOURLY.product_id,
                "quantity": "100000000.0000",
                "unit_price": "0.5",
                "amount": "50000000.00000",
                "currency": "CNY",
                "record_count": 2,
            },
            {
                "instance_id": DAILY.instance_id,
                "product_id": DAILY.product_id,
                "quantity": "0",
                "unit_price": "1.25",
                "amount": "0.00",
                "currency": "CNY",
                "record_count": 0,
            },
        ]
    }


def test_reset_clears_records_log_nonces_and_faults_but_keeps_instances(client) -> None:
    client.push_v2([v2_record(client.clock)], nonce="nonce-reset")
    client.admin("POST", "faults", {"sequence": ["500"]})

    reset = client.admin("POST", "reset")

    assert reset.json() == {"status": "reset"}
    state = client.emulator.state
    assert (state.records, state.duplicates, state.requests) == ((), (), ())
    assert len(state.instances) == 2
    again = client.push_v2([v2_record(client.clock)], nonce="nonce-reset")
    assert again.json()["extra_info"] == {"duplicates": []}


def test_python_reset_matches_the_admin_reset(client) -> None:
    client.push_v2([v2_record(client.clock)])
    client.emulator.set_faults(FaultPlan(sequence=["500"]))

    client.emulator.reset()

    assert client.emulator.state.records == ()
    assert client.push_v2([v2_record(client.clock)]).status_code == 200


def test_python_add_instance_registers_for_pushes(client) -> None:
    instance = Instance("inst-py", product_id="p", unit_price=Decimal("2"))
    client.emulator.add_instance(instance)

    response = client.push_v1([v1_record(client.clock, instance=instance)])

    assert response.status_code == 200


def test_unknown_admin_route_answers_404_and_wrong_method_405(client) -> None:
    missing = client.admin("GET", "nothing")
    wrong = client.admin("DELETE", "records")

    assert (missing.status_code, missing.json()) == (
        404,
        {"error": "no admin route /_emulator/nothing"},
    )
    assert (wrong.status_code, wrong.json()) == (
        405,
        {"error": "DELETE is not allowed on /_emulator/records"},
    )
    assert client.emulator.state.requests == ()


def test_config_file_is_read_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "emulator.json"
    path.write_text(
        json.dumps(
            {
                "credentials": [
                    {"ak": "FILEAK", "sk": "file-sk", "security_token": "t", "apis": ["v2"]}
                ],
                "seller_key": "file-seller-key",
                "partner_id": "file-partner",
                "accept_any_instance": True,
                "instances": [{"instance_id": "i-1", "product_id": "p-1", "unit_price": 0.1}],
                "faults": {"sequence": ["429"]},
            }
        )
    )

    config = EmulatorConfig.from_file(path)

    assert config.credentials == (Credential("FILEAK", "file-sk", "t", (Api.V2,)),)
    assert (config.seller_key, config.partner_id) == ("file-seller-key", "file-partner")
    assert config.accept_any_instance is True
    assert config.instances == (Instance("i-1", product_id="p-1", unit_price=Decimal("0.1")),)
    assert config.faults == FaultPlan(sequence=("429",))


def test_config_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "emulator.json"
    path.write_text('{"instances": [], "acept_any_instance": true}')

    with pytest.raises(ValueError) as refused:
        EmulatorConfig.from_file(path)

    assert str(refused.value) == "unknown config fields: ['acept_any_instance']"


def test_secrets_stay_out_of_the_config_repr() -> None:
    config = EmulatorConfig(credentials=[Credential("AK", "very-secret", security_token="tok")])

    assert "very-secret" not in repr(config)
    assert "tok" not in repr(config)
    assert "emulator-seller-key-not-real" not in repr(config)
