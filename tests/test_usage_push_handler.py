"""The usage push function end to end: every trigger payload through the real handler."""

from __future__ import annotations

import base64
import importlib.util
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Emulator,
    EmulatorConfig,
    FaultPlan,
    Instance,
)
from koogallery.errors import AuthenticationError
from koogallery.events import EventFormatError, render_sample_event
from koogallery.functiongraph import LocalContext
from koogallery.usage_push import UsagePushIncomplete

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
DEMO_INSTANCES = [
    Instance(f"demo-instance-00{n}", product_id=f"demo-product-{n}", unit_price=Decimal("0.1"))
    for n in (1, 2, 3)
]

Handler = Callable[[Any, Any], dict[str, Any]]


def _load_handler() -> Handler:
    spec = importlib.util.spec_from_file_location(
        "usage_push_index", ROOT / "functions" / "usage_push" / "index.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Handler = module.handler
    return handler


handler = _load_handler()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(instances=DEMO_INSTANCES)) as emu:
        yield emu


def _context(emulator: Emulator, **user_data: str) -> LocalContext:
    data = {
        "KOOGALLERY_ENDPOINT": emulator.url,
        "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
        "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
        "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
        "KOOGALLERY_MAX_ATTEMPTS": "2",
    }
    data.update(user_data)
    return LocalContext(user_data=data, request_id="req-test-0001")


def _sample(name: str) -> Any:
    text = (EVENTS / name).read_text(encoding="utf-8")
    return json.loads(render_sample_event(text, datetime.now(timezone.utc)))


def _hour(hours_back: int) -> str:
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return (start - timedelta(hours=hours_back)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kafka(*messages: str) -> dict[str, Any]:
    return {
        "event_version": "v1.0",
        "event_time": 1796112000,
        "trigger_type": "KAFKA",
        "region": "cn-north-4",
        "instance_id": "kafka-instance-1",
        "records": [{"messages": list(messages), "topic_id": "usage"}],
    }


def _good(instance: str = "demo-instance-001", hours_back: int = 3, value: str = "2") -> str:
    return json.dumps(
        {
            "instance_id": instance,
            "begin_time": _hour(hours_back),
            "end_time": _hour(hours_back - 1),
            "usage_value": value,
        }
    )


@pytest.mark.parametrize(
    ("sample", "trigger", "records"),
    [
        ("kafka.json", "KAFKA", 4),
        ("opensourcekafka.json", "OPENSOURCEKAFKA", 3),
        ("rocketmq.json", "ROCKETMQ", 3),
        ("rabbitmq.json", "RABBITMQ", 3),
        ("smn.json", "SMN", 2),
        ("dis.json", "DIS", 3),
        ("direct.json", "DIRECT", 2),
    ],
)
def test_every_queue_trigger_sample_is_pushed_completely(
    emulator: Emulator, sample: str, trigger: str, records: int
) -> None:
    result = handler(_sample(sample), _context(emulator))

    assert result == {
        "request_id": "req-test-0001",
        "trigger": trigger,
        "received": records,
        "accepted": records,
        "duplicates": 0,
        "dead_lettered": 0,
        "pending": 0,
        "dead_letters": [],
    }
    assert len(emulator.state.records) == records


@pytest.mark.parametrize(("sample", "records"), [("apig.json", 3), ("apig-base64.json", 1)])
def test_apig_sample_gets_an_http_200_with_the_summary(
    emulator: Emulator, sample: str, records: int
) -> None:
    response = handler(_sample(sample), _context(emulator))

    assert response["statusCode"] == 200
    assert response["isBase64Encoded"] is False
    assert response["headers"] == {"Content-Type": "application/json"}
    body = json.loads(response["body"])
    assert (body["trigger"], body["received"], body["accepted"]) == ("APIG", records, records)


@pytest.mark.parametrize(
    "sample", sorted(path.name for path in (EVENTS / "malformed").glob("*.json"))
)
def test_malformed_event_of_every_trigger_is_a_clear_error_or_http_400(
    emulator: Emulator, sample: str
) -> None:
    event = _sample(f"malformed/{sample}")

    if sample.startswith("apig"):
        response = handler(event, _context(emulator))
        assert response["statusCode"] == 400
        assert "APIG event" in json.loads(response["body"])["error"]
    else:
        with pytest.raises(EventFormatError):
            handler(event, _context(emulator))
    assert emulator.state.records == ()


def test_redelivered_batch_adds_no_record_and_counts_duplicates(emulator: Emulator) -> None:
    event = _sample("kafka.json")

    first = handler(event, _context(emulator))
    second = handler(event, _context(emulator))

    assert (first["accepted"], first["duplicates"]) == (4, 0)
    assert (second["accepted"], second["duplicates"]) == (0, 4)
    assert len(emulator.state.records) == 4


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        (
            {"usage_value": "1.23456"},
            "usage_value",
            "usage_value: has 5 decimal places, at most 4 are allowed",
        ),
        ({"usage_value": "-3"}, "usage_value", "usage_value: must be greater than 0, got -3"),
        ({"begin_time": "END"}, "begin_time", "begin_time: {begin} is after end_time {end}"),
        (
            {"begin_time": "NAIVE"},
            "begin_time",
            "begin_time: time has no zone; add 'Z' or an offset such as '+08:00'",
        ),
        ({"instance_id": None}, "instance_id", "instance_id: is required"),
    ],
)
def test_bad_record_is_dead_lettered_naming_the_field_while_neighbours_are_accepted(
    emulator: Emulator, bad: dict[str, Any], field: str, reason: str
) -> None:
    record = json.loads(_good(hours_back=5))
    if bad.get("begin_time") == "END":
        bad = {"begin_time": record["end_time"], "end_time": record["begin_time"]}
    if bad.get("begin_time") == "NAIVE":
        bad = {"begin_time": record["begin_time"].rstrip("Z")}
    record.update(bad)
    record = {key: value for key, value in record.items() if value is not None}
    compact_begin = datetime.fromisoformat(json.loads(_good(hours_back=5))["end_time"][:-1])
    compact_end = compact_begin - timedelta(hours=1)
    expected_reason = reason.format(
        begin=compact_begin.strftime("%Y%m%dT%H%M%SZ"), end=compact_end.strftime("%Y%m%dT%H%M%SZ")
    )
    event = _kafka(_good(hours_back=3), json.dumps(record), _good("demo-instance-002"))

    result = handler(event, _context(emulator))

    assert (result["received"], result["accepted"], result["dead_lettered"]) == (3, 2, 1)
    (letter,) = result["dead_letters"]
    assert letter["field"] == field
    assert letter["reason"] == expected_reason
    assert letter["record"] == record
    assert letter["origin"]["trigger"] == "KAFKA"
    assert letter["origin"]["index"] == 1
    assert len(emulator.state.records) == 2


def test_platform_rejection_is_dead_lettered_with_its_code(emulator: Emulator) -> None:
    event = _kafka(_good(), _good("demo-instance-999", hours_back=4), _good("demo-instance-003"))

    result = handler(event, _context(emulator))

    (letter,) = result["dead_letters"]
    assert (result["accepted"], result["dead_lettered"]) == (2, 1)
    assert letter["error_code"] == "MKT.9001"
    assert letter["field"] == "instance_id"
    assert letter["origin"]["index"] == 1


def test_message_that_is_not_json_is_dead_lettered_with_its_raw_text(emulator: Emulator) -> None:
    result = handler(_kafka("not json at all", _good()), _context(emulator))

    (letter,) = result["dead_letters"]
    assert result["accepted"] == 1
    assert letter["record"] is None
    assert letter["raw"] == "not json at all"
    assert letter["reason"].startswith("message is not valid JSON")


def test_same_metering_sn_with_another_value_in_one_batch_is_a_conflict(
    emulator: Emulator,
) -> None:
    event = _kafka(_good(value="2"), _good(value="3"), _good(value="2"))

    result = handler(event, _context(emulator))

    assert (result["accepted"], result["duplicates"], result["dead_lettered"]) == (1, 1, 1)
    assert result["dead_letters"][0]["field"] == "metering_sn"
    assert "conflict" in result["dead_letters"][0]["reason"]
    assert [str(stored.usage_value) for stored in emulator.state.records] == ["2"]


def test_transient_failure_raises_after_pushing_what_it_could(emulator: Emulator) -> None:
    emulator.set_faults(FaultPlan(sequence=("ok", "500", "500")))
    messages = [_good(hours_back=h) for h in range(2, 6)]
    context = _context(emulator, KOOGALLERY_CHUNK_SIZE="2")

    with pytest.raises(UsagePushIncomplete) as caught:
        handler(_kafka(*messages), context)

    summary = caught.value.summary
    assert (summary.accepted, summary.pending) == (2, 2)
    assert len(emulator.state.records) == 2

    emulator.clear_faults()
    again = handler(_kafka(*messages), _context(emulator))
    assert (again["accepted"], again["duplicates"]) == (2, 2)
    assert len(emulator.state.records) == 4


def test_apig_transient_failure_is_http_503(emulator: Emulator) -> None:
    emulator.set_faults(FaultPlan(rates={"500": 1.0}))
    event = {
        "body": json.dumps({"usage_records": [json.loads(_good())]}),
        "requestContext": {"requestId": "apig-1"},
        "httpMethod": "POST",
        "path": "/usage",
        "isBase64Encoded": False,
    }

    response = handler(event, _context(emulator))

    assert response["statusCode"] == 503
    assert json.loads(response["body"])["pending"] == 1


def test_apig_body_without_any_usage_record_is_http_400(emulator: Emulator) -> None:
    event = {
        "body": base64.b64encode(b'{"hello": "world"}').decode(),
        "requestContext": {"requestId": "apig-2"},
        "httpMethod": "POST",
        "path": "/usage",
        "isBase64Encoded": True,
    }

    response = handler(event, _context(emulator))

    assert response["statusCode"] == 400
    assert json.loads(response["body"])["dead_lettered"] == 1


def test_time_running_out_raises_so_the_batch_is_redelivered(emulator: Emulator) -> None:
    context = _context(emulator, KOOGALLERY_DEADLINE_MARGIN_SECONDS="60")

    with pytest.raises(UsagePushIncomplete) as caught:
        handler(_kafka(_good()), context)

    assert caught.value.summary.pending_reason == "deadline reached before the request"
    assert emulator.state.records == ()


def test_wrong_seller_key_raises_at_once_and_says_what_to_fix(emulator: Emulator) -> None:
    with pytest.raises(AuthenticationError) as caught:
        handler(_kafka(_good()), _context(emulator, KOOGALLERY_SELLER_KEY="fake-wrong-key"))

    assert "KOOGALLERY_SELLER_KEY" in str(caught.value)


def test_agency_credentials_are_used_when_no_ak_is_configured(emulator: Emulator) -> None:
    context = LocalContext(
        user_data={
            "KOOGALLERY_ENDPOINT": emulator.url,
            "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
        },
        security_access_key=DEFAULT_AK,
        security_secret_key=DEFAULT_SK,
    )

    result = handler(_kafka(_good()), context)

    assert result["accepted"] == 1


def test_logs_are_json_lines_with_request_id_and_never_a_secret(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    seller_key = "fake-seller-key-for-log-test"
    config = EmulatorConfig(instances=DEMO_INSTANCES, seller_key=seller_key)
    with Emulator(config) as keyed:
        context = _context(keyed, KOOGALLERY_SELLER_KEY=seller_key, KOOGALLERY_LOG_LEVEL="DEBUG")
        result = handler(_kafka(_good(), '{"instance_id": "x"}'), context)

    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    entries = [entry for entry in entries if not entry["logger"].startswith("koogallery.emulator")]
    assert {entry["request_id"] for entry in entries} == {"req-test-0001"}
    assert {"push_attempt", "dead_letter", "push_summary"} <= {
        entry.get("event") for entry in entries
    }
    everything = "\n".join(lines) + json.dumps(result)
    for secret in (DEFAULT_SK, seller_key):
        assert secret not in everything


def _ledger_context(emulator: Emulator, ledger_url: str, **user_data: str) -> LocalContext:
    return _context(emulator, KOOGALLERY_LEDGER_URL=ledger_url, **user_data)


def _statuses(ledger_url: str) -> dict[str, int]:
    from koogallery.ledger import open_ledger

    with open_ledger(ledger_url) as ledger:
        counts = ledger.status(now=datetime.now(timezone.utc)).counts
    return {status.value: count for status, count in counts.items() if count}


def test_with_a_ledger_a_redelivered_batch_sends_nothing_to_koogallery(
    emulator: Emulator, any_ledger_url: str
) -> None:
    event = _sample("kafka.json")

    first = handler(event, _ledger_context(emulator, any_ledger_url))
    requests_after_first = len(emulator.state.requests)
    second = handler(event, _ledger_context(emulator, any_ledger_url))

    assert (first["accepted"], second["accepted"], second["duplicates"]) == (4, 0, 4)
    assert len(emulator.state.requests) == requests_after_first
    assert _statuses(any_ledger_url) == {"accepted": 4}


def test_with_a_ledger_pending_records_are_drained_by_the_next_run(
    emulator: Emulator, any_ledger_url: str
) -> None:
    emulator.set_faults(FaultPlan(rates={"500": 1.0}))
    with pytest.raises(UsagePushIncomplete):
        handler(
            _kafka(_good(hours_back=6), _good(hours_back=5)),
            _ledger_context(emulator, any_ledger_url),
        )
    assert _statuses(any_ledger_url) == {"pending": 2}

    emulator.clear_faults()
    result = handler(_kafka(_good("demo-instance-002")), _ledger_context(emulator, any_ledger_url))

    assert result["accepted"] == 1
    assert result["outbox"] == {
        "drained": 2,
        "accepted": 2,
        "duplicates": 0,
        "dead_lettered": 0,
        "pending": 0,
    }
    assert len(emulator.state.records) == 3
    assert _statuses(any_ledger_url) == {"accepted": 3}


def test_with_a_ledger_a_changed_value_for_a_delivered_window_is_a_conflict(
    emulator: Emulator, any_ledger_url: str
) -> None:
    handler(_kafka(_good(value="2")), _ledger_context(emulator, any_ledger_url))

    result = handler(_kafka(_good(value="9")), _ledger_context(emulator, any_ledger_url))

    (letter,) = result["dead_letters"]
    assert letter["field"] == "metering_sn"
    assert "conflict" in letter["reason"]
    assert "usage_value 2; this copy has 9" in letter["reason"]
    assert [str(stored.usage_value) for stored in emulator.state.records] == ["2"]


def test_with_a_ledger_dead_letters_are_kept_with_their_raw_message(
    emulator: Emulator, any_ledger_url: str
) -> None:
    from koogallery.ledger import open_ledger

    handler(_kafka("{not json", _good()), _ledger_context(emulator, any_ledger_url))

    with open_ledger(any_ledger_url) as ledger:
        (row,) = ledger.dead_letters()
    assert (row.raw, row.state, row.origin.trigger) == ("{not json", "open", "KAFKA")


def test_with_a_ledger_a_configuration_error_gives_back_the_records_at_once(
    emulator: Emulator, any_ledger_url: str
) -> None:
    event = _kafka(_good(hours_back=4), _good(hours_back=3))
    with pytest.raises(AuthenticationError):
        handler(event, _ledger_context(emulator, any_ledger_url, KOOGALLERY_SELLER_KEY="fake-x"))

    result = handler(_kafka(_good("demo-instance-002")), _ledger_context(emulator, any_ledger_url))

    assert result["outbox"]["drained"] == 2
    assert result["outbox"]["accepted"] == 2
    assert _statuses(any_ledger_url) == {"accepted": 3}


def test_with_a_ledger_an_outbox_record_refused_by_koogallery_becomes_a_dead_letter(
    emulator: Emulator, any_ledger_url: str
) -> None:
    from koogallery.ledger import open_ledger

    emulator.set_faults(FaultPlan(rates={"500": 1.0}))
    with pytest.raises(UsagePushIncomplete):
        handler(_kafka(_good("demo-instance-404")), _ledger_context(emulator, any_ledger_url))
    emulator.clear_faults()

    result = handler(_kafka(_good("demo-instance-002")), _ledger_context(emulator, any_ledger_url))

    outbox = result["outbox"]
    assert (outbox["drained"], outbox["dead_lettered"]) == (1, 1)
    (letter,) = outbox["dead_letters"]
    assert (letter["origin"]["trigger"], letter["error_code"]) == ("OUTBOX", "MKT.9001")
    assert letter["record"]["instance_id"] == "demo-instance-404"
    with open_ledger(any_ledger_url) as ledger:
        (stored,) = ledger.dead_letters()
    assert (stored.origin.trigger, stored.field) == ("OUTBOX", "instance_id")


def test_log_lines_mask_every_configured_secret_even_with_json_special_characters() -> None:
    import io
    import logging

    from koogallery.logs import configure_json_logging

    stream = io.StringIO()
    secrets = ['fake"quoted\\secret', "fake-ledger-password"]
    configure_json_logging(secrets=secrets, stream=stream)
    logging.getLogger("koogallery.test").warning(
        "connect to %s",
        "postgresql://u:fake-ledger-password@127.0.0.1/db",
        extra={"event": "x", "detail": 'key fake"quoted\\secret here'},
    )

    line = stream.getvalue()
    assert "fake-ledger-password" not in line
    assert json.loads(line)["detail"] == "key *** here"
    assert json.loads(line)["message"] == "connect to postgresql://u:***@127.0.0.1/db"


def test_two_records_for_one_window_with_different_metering_sn_are_a_conflict(
    emulator: Emulator,
) -> None:
    first = {**json.loads(_good(value="2")), "metering_sn": "seller-sn-1"}
    second = {**json.loads(_good(value="5")), "metering_sn": "seller-sn-2"}

    result = handler(_kafka(json.dumps(first), json.dumps(second)), _context(emulator))

    assert (result["accepted"], result["dead_lettered"]) == (1, 1)
    (letter,) = result["dead_letters"]
    assert "appears earlier in this batch as seller-sn-1" in letter["reason"]
    assert [stored.metering_sn for stored in emulator.state.records] == ["seller-sn-1"]


def test_copies_that_differ_only_in_record_time_are_one_record(emulator: Emulator) -> None:
    record = json.loads(_good())
    later = {**record, "record_time": record["end_time"].replace("00:00Z", "05:00Z")}

    result = handler(_kafka(json.dumps(record), json.dumps(later)), _context(emulator))

    assert (result["accepted"], result["duplicates"], result["dead_lettered"]) == (1, 1, 0)


def test_with_a_ledger_a_configuration_error_while_draining_gives_back_the_batch_too(
    emulator: Emulator, any_ledger_url: str
) -> None:
    emulator.set_faults(FaultPlan(rates={"500": 1.0}))
    with pytest.raises(UsagePushIncomplete):
        handler(_kafka(_good(hours_back=5)), _ledger_context(emulator, any_ledger_url))
    emulator.clear_faults()

    wrong = _ledger_context(emulator, any_ledger_url, KOOGALLERY_SELLER_KEY="fake-wrong")
    with pytest.raises(AuthenticationError):
        handler(_kafka(_good(hours_back=4)), wrong)
    result = handler(_kafka(_good(hours_back=3)), _ledger_context(emulator, any_ledger_url))

    assert result["accepted"] == 1
    assert result["outbox"]["accepted"] == 2
    assert _statuses(any_ledger_url) == {"accepted": 3}


def test_the_outbox_dead_letters_a_pending_record_that_grew_too_old(
    emulator: Emulator, any_ledger_url: str
) -> None:
    from koogallery.client import KooGalleryClient
    from koogallery.config import Settings
    from koogallery.ledger import open_ledger
    from koogallery.models import UsageRecord
    from koogallery.pipeline import UsagePipeline

    now = datetime.now(timezone.utc).replace(microsecond=0)
    begin = now - timedelta(days=20)
    record = UsageRecord.parse(
        {
            "instance_id": "demo-instance-001",
            "begin_time": begin,
            "end_time": begin,
            "usage_value": "1",
        },
        now=now,
    )
    settings = Settings(
        endpoint=emulator.url,
        access_key=DEFAULT_AK,
        secret_key=DEFAULT_SK,
        seller_key=DEFAULT_SELLER_KEY,
    )
    with open_ledger(any_ledger_url) as ledger, KooGalleryClient(settings) as client:
        ledger.claim([record], owner="crashed-run", now=now, lease_seconds=1)
        later = UsagePipeline(client, ledger=ledger, now=now + timedelta(days=2))

        outbox = later.drain_outbox()

        (letter,) = ledger.dead_letters()
    assert (outbox.drained, outbox.dead_lettered, outbox.accepted) == (1, 1, 0)
    assert letter.origin.trigger == "OUTBOX"
    assert letter.reason == "begin_time: expired, more than 21 days old (MKT.9004); never pushed"
    assert emulator.state.requests == ()


def test_a_message_that_is_not_a_string_is_dead_lettered_alone(emulator: Emulator) -> None:
    event = _kafka(_good(hours_back=4), _good(hours_back=3))
    event["records"][0]["messages"].insert(1, 12345)

    result = handler(event, _context(emulator))

    assert (result["received"], result["accepted"], result["dead_lettered"]) == (3, 2, 1)
    (letter,) = result["dead_letters"]
    assert (letter["raw"], letter["origin"]["index"]) == ("12345", 1)
