"""Trigger payload views: each FunctionGraph shape becomes the same batch of messages."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from koogallery.events import (
    EventFormatError,
    Message,
    Origin,
    RawRecord,
    TriggerBatch,
    decode_usage_message,
    parse_trigger_event,
    render_sample_event,
)

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"

NOW = datetime(2026, 12, 1, 10, 41, 7, tzinfo=timezone.utc)

RECORD: dict[str, object] = {
    "instance_id": "demo-instance-001",
    "begin_time": "2026-12-01T08:00:00Z",
    "end_time": "2026-12-01T09:00:00Z",
    "usage_value": "12.5",
}
RECORD_TEXT = json.dumps(RECORD, separators=(",", ":"))


def _queue_event(trigger_type: str, records: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "event_version": "v1.0",
        "event_time": 1576737962,
        "trigger_type": trigger_type,
        "region": "ap-southeast-3",
        "instance_id": "81335d56-b9fe-4679-ba95-7030949cc76b",
        "records": records,
        **extra,
    }


def _smn_record(message: object, **smn: Any) -> dict[str, Any]:
    return {
        "event_version": "1.0",
        "smn": {
            "topic_urn": "urn:smn:ap-southeast-3:0a1b:usage",
            "timestamp": "2018-01-09T07:11:40Z",
            "message_attributes": None,
            "message": message,
            "type": "notification",
            "message_id": "9fcb1bc702734884951c2ba2c7d9c23c",
            "subject": "usage",
            **smn,
        },
        "event_subscription_urn": "urn:fss:ap-southeast-3:0a1b:function:default:usage_push:latest",
        "event_source": "smn",
    }


def _dis_event(records: list[Any]) -> dict[str, Any]:
    return {
        "ShardID": "shardId-0000000000",
        "Message": {
            "next_partition_cursor": "eyJn",
            "records": records,
            "millis_behind_latest": "",
        },
        "Tag": "latest",
        "StreamName": "dis-usage",
    }


def _apig_event(body: object, *, encoded: bool = False) -> dict[str, Any]:
    return {
        "body": body,
        "requestContext": {"apiId": "bc1d", "requestId": "11cdcdcf", "stage": "RELEASE"},
        "queryStringParameters": {},
        "httpMethod": "POST",
        "pathParameters": {},
        "headers": {"content-type": "application/json"},
        "path": "/usage",
        "isBase64Encoded": encoded,
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _message(body: str) -> Message:
    return Message(Origin("KAFKA", "topic-a", 0, 0, 0), body)


# parse_trigger_event: one view per trigger


def test_kafka_event_keeps_topic_and_indexes_in_origin() -> None:
    event = _queue_event(
        "KAFKA",
        [
            {"messages": ["m0", "m1"], "topic_id": "topic-a"},
            {"messages": ["m2"], "topic_id": "topic-b"},
        ],
    )

    batch = parse_trigger_event(event)

    assert batch == TriggerBatch(
        trigger="KAFKA",
        messages=[
            Message(Origin("KAFKA", "topic-a", 0, record_index=0, message_index=0), "m0"),
            Message(Origin("KAFKA", "topic-a", 1, record_index=0, message_index=1), "m1"),
            Message(Origin("KAFKA", "topic-b", 2, record_index=1, message_index=0), "m2"),
        ],
        is_http=False,
        request_id=None,
    )


@pytest.mark.parametrize("event_time", [1576737962, "1576737962"])
def test_kafka_event_time_may_be_a_number_or_a_string(event_time: object) -> None:
    event = _queue_event("KAFKA", [{"messages": ["m0"], "topic_id": "t"}], event_time=event_time)

    assert [message.body for message in parse_trigger_event(event).messages] == ["m0"]


@pytest.mark.parametrize("trigger_type", ["OPENSOURCEKAFKA", "ROCKETMQ"])
def test_other_queue_triggers_read_like_kafka_under_their_own_name(trigger_type: str) -> None:
    event = _queue_event(trigger_type, [{"messages": ["m0"], "topic_id": "topic"}])

    batch = parse_trigger_event(event)

    assert batch.trigger == trigger_type
    assert batch.messages == [
        Message(Origin(trigger_type, "topic", 0, record_index=0, message_index=0), "m0")
    ]


def test_lowercase_trigger_type_is_read_as_the_documented_code() -> None:
    event = _queue_event("kafka", [{"messages": ["m0"], "topic_id": "t"}])

    assert parse_trigger_event(event).messages[0].origin.trigger == "KAFKA"


def test_rabbitmq_event_takes_instance_id_inside_records_and_exchange_as_source() -> None:
    event = {
        "event_version": "v1.0",
        "event_time": 1576737962,
        "trigger_type": "RABBITMQ",
        "region": "region",
        "records": [
            {"messages": ["m0"], "instance_id": "81335d56", "exchange": "usage-exchange"},
            {"messages": ["m1"], "instance_id": "81335d56", "queue": "usage-queue"},
        ],
    }

    batch = parse_trigger_event(event)

    assert [message.origin for message in batch.messages] == [
        Origin("RABBITMQ", "usage-exchange", 0, record_index=0, message_index=0),
        Origin("RABBITMQ", "usage-queue", 1, record_index=1, message_index=0),
    ]


def test_rabbitmq_event_accepts_instance_id_at_the_top_level() -> None:
    event = _queue_event("RABBITMQ", [{"messages": ["m0"], "exchange": "x"}])

    assert parse_trigger_event(event).messages[0].origin.source == "x"


def test_queue_record_without_a_source_name_has_no_source() -> None:
    event = _queue_event("KAFKA", [{"messages": ["m0"]}])

    assert parse_trigger_event(event).messages[0].origin.source is None


def test_queue_event_with_no_records_is_an_empty_batch() -> None:
    assert parse_trigger_event(_queue_event("KAFKA", [])).messages == []


def test_smn_event_carries_topic_urn_message_id_and_request_id() -> None:
    event = {
        "record": [_smn_record(RECORD_TEXT)],
        "functionname": "usage_push",
        "requestId": "7c307f6a-cf68-4e65-8be0-4c77405a1b2c",
        "timestamp": "Tue Jan 09 2018 15:11:40 GMT+0800 (CST)",
    }

    batch = parse_trigger_event(event)

    assert batch == TriggerBatch(
        trigger="SMN",
        messages=[
            Message(
                Origin(
                    "SMN",
                    "urn:smn:ap-southeast-3:0a1b:usage",
                    0,
                    record_index=0,
                    message_id="9fcb1bc702734884951c2ba2c7d9c23c",
                ),
                RECORD_TEXT,
            )
        ],
        is_http=False,
        request_id="7c307f6a-cf68-4e65-8be0-4c77405a1b2c",
    )


def test_smn_event_without_the_optional_top_level_keys_has_no_request_id() -> None:
    batch = parse_trigger_event({"record": [_smn_record("a"), _smn_record("b")]})

    assert batch.request_id is None
    assert [(m.origin.index, m.origin.record_index, m.body) for m in batch.messages] == [
        (0, 0, "a"),
        (1, 1, "b"),
    ]


def test_dis_event_decodes_base64_data_and_keeps_sequence_number() -> None:
    event = _dis_event(
        [
            {"partition_key": "shardId_0", "data": _b64(RECORD_TEXT), "sequence_number": "0"},
            {"partition_key": "shardId_0", "data": _b64("déjà vu"), "sequence_number": 1},
        ]
    )

    batch = parse_trigger_event(event)

    assert batch == TriggerBatch(
        trigger="DIS",
        messages=[
            Message(Origin("DIS", "dis-usage", 0, record_index=0, message_id="0"), RECORD_TEXT),
            Message(Origin("DIS", "dis-usage", 1, record_index=1, message_id="1"), "déjà vu"),
        ],
        is_http=False,
        request_id=None,
    )


def test_dis_data_split_over_lines_still_decodes() -> None:
    data = _b64(RECORD_TEXT)
    event = _dis_event([{"data": f"{data[:20]}\n{data[20:]}", "sequence_number": "0"}])

    assert parse_trigger_event(event).messages[0].body == RECORD_TEXT


def test_apig_event_body_is_one_http_message() -> None:
    batch = parse_trigger_event(_apig_event(RECORD_TEXT))

    assert batch == TriggerBatch(
        trigger="APIG",
        messages=[Message(Origin("APIG", "/usage", 0, message_id="11cdcdcf"), RECORD_TEXT)],
        is_http=True,
        request_id="11cdcdcf",
    )


def test_apig_base64_body_is_decoded() -> None:
    batch = parse_trigger_event(_apig_event(_b64(RECORD_TEXT), encoded=True))

    assert [message.body for message in batch.messages] == [RECORD_TEXT]


@pytest.mark.parametrize(
    ("body", "encoded"), [("", False), (None, False), ("", True)], ids=["empty", "null", "b64"]
)
def test_apig_empty_body_yields_no_messages(body: object, encoded: bool) -> None:
    batch = parse_trigger_event(_apig_event(body, encoded=encoded))

    assert batch == TriggerBatch("APIG", [], is_http=True, request_id="11cdcdcf")


def test_apig_event_without_request_context_still_parses() -> None:
    batch = parse_trigger_event({"httpMethod": "POST", "body": "x"})

    assert batch == TriggerBatch(
        "APIG", [Message(Origin("APIG", None, 0), "x")], is_http=True, request_id=None
    )


@pytest.mark.parametrize(
    "event",
    [
        {"usage_records": [RECORD]},
        RECORD,
        [RECORD, RECORD],
        {"instance_id": "demo-instance-001", "usage_value": Decimal("0.5")},
    ],
    ids=["usage-records", "single-record", "record-list", "python-values"],
)
def test_direct_event_is_one_message_holding_its_compact_json(event: object) -> None:
    batch = parse_trigger_event(event)

    expected = json.dumps(event, separators=(",", ":"), default=str)
    assert batch == TriggerBatch(
        "DIRECT", [Message(Origin("DIRECT", None, 0), expected)], is_http=False, request_id=None
    )


def test_direct_event_with_a_malformed_usage_records_is_still_a_message() -> None:
    batch = parse_trigger_event({"usage_records": "not a list"})

    assert [message.body for message in batch.messages] == ['{"usage_records":"not a list"}']


def test_malformed_message_body_is_still_returned_as_a_message() -> None:
    event = _queue_event("KAFKA", [{"messages": ["not json", ""], "topic_id": "t"}])

    assert [message.body for message in parse_trigger_event(event).messages] == ["not json", ""]


@pytest.mark.parametrize(
    ("origin", "label"),
    [
        (Origin("KAFKA", "topic-a", 3, 1, 0), "KAFKA topic-a #3"),
        (Origin("DIRECT", None, 0), "DIRECT #0"),
        (Origin("DIS", "dis-usage", 7, 7, message_id="42"), "DIS dis-usage #7"),
    ],
)
def test_origin_label_names_trigger_source_and_batch_index(origin: Origin, label: str) -> None:
    assert origin.label() == label


# parse_trigger_event: payloads that break their shape


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ("{}", "event is a string, expected an object or an array"),
        (None, "event is null, expected an object or an array"),
        (
            {"hello": 1, "Records": []},
            "event matches no known trigger shape: expected trigger_type (DMS queues), record "
            "(SMN), StreamName (DIS), requestContext (APIG) or a usage message with "
            "usage_records or instance_id; found keys Records, hello",
        ),
        (
            {"trigger_type": "TIMER", "user_event": "x"},
            "event: trigger_type 'TIMER' carries no usage messages, "
            "expected one of KAFKA, OPENSOURCEKAFKA, ROCKETMQ, RABBITMQ",
        ),
        ({"trigger_type": 7}, "event: trigger_type is a number, expected a string"),
        (
            _queue_event("KAFKA", {"messages": []}),  # type: ignore[arg-type]
            "KAFKA event: records is an object, expected an array",
        ),
        (
            {"trigger_type": "ROCKETMQ"},
            "ROCKETMQ event: records is missing, expected an array",
        ),
        (
            _queue_event("RABBITMQ", ["m0"]),
            "RABBITMQ event: records[0] is a string, expected an object",
        ),
        (
            _queue_event("KAFKA", [{"topic_id": "t"}]),
            "KAFKA event: records[0].messages is missing, expected an array",
        ),
        (
            _queue_event("KAFKA", [{"messages": [], "topic_id": 5}]),
            "KAFKA event: records[0].topic_id is a number, expected a string",
        ),
        ({"record": {}}, "SMN event: record is an object, expected an array"),
        (
            {"record": [{**_smn_record("x"), "event_source": "obs"}]},
            "SMN event: record[0].event_source is 'obs', expected 'smn'",
        ),
        (
            {"record": [{"smn": {"message": "x"}}]},
            "SMN event: record[0].event_source is missing, expected 'smn'",
        ),
        (
            {"record": [{"event_source": "smn", "smn": "x"}]},
            "SMN event: record[0].smn is a string, expected an object",
        ),
        (
            {"record": [], "requestId": 12},
            "SMN event: requestId is a number, expected a string",
        ),
        ({"StreamName": "s"}, "DIS event: Message is missing, expected an object"),
        (
            {"StreamName": "s", "Message": {"records": "x"}},
            "DIS event: Message.records is a string, expected an array",
        ),
        (
            _dis_event([{"data": _b64("ok")}, {"data": "not base64!"}]),
            "DIS event: Message.records[1].data is not valid base64",
        ),
        (
            _dis_event([{"data": "YWJ"}]),
            "DIS event: Message.records[0].data is not valid base64",
        ),
        (
            _dis_event([{"data": base64.b64encode(b"ok\xff").decode("ascii")}]),
            "DIS event: Message.records[0].data does not decode to UTF-8 text (byte 2)",
        ),
        (
            _dis_event([{"sequence_number": "0"}]),
            "DIS event: Message.records[0].data is missing, expected a string",
        ),
        (
            _dis_event([{"data": "", "sequence_number": [0]}]),
            "DIS event: Message.records[0].sequence_number is an array, expected a string",
        ),
        (_apig_event({"a": 1}), "APIG event: body is an object, expected a string"),
        (
            _apig_event("%%%", encoded=True),
            "APIG event: body is not valid base64",
        ),
        (
            {**_apig_event("x"), "isBase64Encoded": "false"},
            "APIG event: isBase64Encoded is a string, expected a boolean",
        ),
        (
            {**_apig_event("x"), "requestContext": []},
            "APIG event: requestContext is an array, expected an object",
        ),
        (
            {"usage_records": [{(1, 2): "window"}]},
            "DIRECT event: cannot be written as JSON: "
            "keys must be str, int, float, bool or None, not tuple",
        ),
    ],
)
def test_event_that_breaks_its_shape_says_what_and_where(event: object, error: str) -> None:
    with pytest.raises(EventFormatError) as caught:
        parse_trigger_event(event)

    assert str(caught.value) == error


def test_event_format_error_is_a_value_error() -> None:
    assert issubclass(EventFormatError, ValueError)


def test_unrecognised_event_lists_at_most_ten_keys() -> None:
    event = {f"k{n:02d}": n for n in range(12)}

    with pytest.raises(EventFormatError) as caught:
        parse_trigger_event(event)

    assert str(caught.value).endswith(
        "found keys k00, k01, k02, k03, k04, k05, k06, k07, k08, k09, ... (12 in all)"
    )


# decode_usage_message


def test_single_record_message_decodes_to_one_record_without_position() -> None:
    message = _message(RECORD_TEXT)

    assert decode_usage_message(message) == [
        RawRecord(message.origin, None, {**RECORD, "usage_value": "12.5"}, None, RECORD_TEXT)
    ]


def test_record_array_message_decodes_each_element_with_its_position() -> None:
    text = json.dumps([RECORD, {**RECORD, "instance_id": "demo-instance-002"}])
    message = _message(text)

    records = decode_usage_message(message)

    assert [(r.position, r.data, r.error, r.raw) for r in records] == [
        (0, RECORD, None, text),
        (1, {**RECORD, "instance_id": "demo-instance-002"}, None, text),
    ]


def test_usage_records_message_decodes_each_element_with_its_position() -> None:
    text = json.dumps({"usage_records": [RECORD, RECORD]})

    records = decode_usage_message(_message(text))

    assert [(r.position, r.data, r.error) for r in records] == [
        (0, RECORD, None),
        (1, RECORD, None),
    ]


@pytest.mark.parametrize("text", ["[]", '{"usage_records": []}'])
def test_empty_record_list_gives_no_records(text: str) -> None:
    assert decode_usage_message(_message(text)) == []


def test_numbers_are_read_as_decimal_and_int_never_float() -> None:
    text = '{"instance_id": "i", "usage_value": 0.1, "count": 3, "big": 1e2}'

    (record,) = decode_usage_message(_message(text))

    assert record.data == {
        "instance_id": "i",
        "usage_value": Decimal("0.1"),
        "count": 3,
        "big": Decimal("1E+2"),
    }
    assert record.data is not None
    assert type(record.data["usage_value"]) is Decimal
    assert type(record.data["count"]) is int


def test_non_object_element_is_an_error_while_its_siblings_decode() -> None:
    text = json.dumps({"usage_records": [RECORD, 5, "x", RECORD]})
    message = _message(text)

    records = decode_usage_message(message)

    assert records == [
        RawRecord(message.origin, 0, RECORD, None, text),
        RawRecord(
            message.origin, 1, None, "usage_records[1] is a number, expected an object", text
        ),
        RawRecord(
            message.origin, 2, None, "usage_records[2] is a string, expected an object", text
        ),
        RawRecord(message.origin, 3, RECORD, None, text),
    ]


def test_non_object_element_of_a_bare_array_is_named_by_its_position() -> None:
    records = decode_usage_message(_message("[null]"))

    assert [(r.position, r.error) for r in records] == [
        (0, "message[0] is null, expected an object")
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "message is not valid JSON: Expecting value at line 1 column 1"),
        ("not json", "message is not valid JSON: Expecting value at line 1 column 1"),
        (
            '{"a": 1,\n}',
            "message is not valid JSON: Expecting property name enclosed in "
            "double quotes at line 2 column 1",
        ),
        ('{"usage_value": NaN}', "message is not valid JSON: NaN is not a JSON number"),
        ("[-Infinity]", "message is not valid JSON: -Infinity is not a JSON number"),
        ("[" * 100_000, "message is not valid JSON: nested too deeply"),
        ('"text"', "message is a string, expected an object or an array"),
        ("12.5", "message is a number, expected an object or an array"),
        ("null", "message is null, expected an object or an array"),
        ('{"usage_records": {}}', "usage_records is an object, expected an array"),
        ('{"usage_records": null}', "usage_records is null, expected an array"),
    ],
)
def test_unreadable_message_gives_one_record_with_the_reason(text: str, error: str) -> None:
    message = _message(text)

    assert decode_usage_message(message) == [RawRecord(message.origin, None, None, error, text)]


# render_sample_event


def test_hour_placeholders_render_as_start_of_utc_hour_minus_n() -> None:
    text = '["{{HOUR-0}}", "{{HOUR-2}}", "{{HOUR-11}}", "{{HOUR-48}}"]'

    rendered = render_sample_event(text, NOW)

    assert rendered == (
        '["2026-12-01T10:00:00Z", "2026-12-01T08:00:00Z", '
        '"2026-11-30T23:00:00Z", "2026-11-29T10:00:00Z"]'
    )


def test_compact_hour_placeholder_renders_koogallery_time_form() -> None:
    assert render_sample_event("{{HOUR-1:compact}}", NOW) == "20261201T090000Z"


def test_render_converts_an_aware_now_to_utc_and_takes_a_naive_one_as_utc() -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))

    assert render_sample_event("{{HOUR-0}}", tokyo) == "2026-12-01T10:00:00Z"
    assert render_sample_event("{{HOUR-0}}", NOW.replace(tzinfo=None)) == "2026-12-01T10:00:00Z"


def test_render_leaves_text_without_placeholders_unchanged() -> None:
    text = '{"a": "{{NOT-A-PLACEHOLDER}}",\n "b": 1}'

    assert render_sample_event(text, NOW) == text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{{HOUR-49}}", "{{HOUR-49}} reaches back more than 48 hours"),
        (
            "{{HOUR-1:iso8601}}",
            "{{HOUR-1:iso8601}} has an unknown form, expected :compact or none",
        ),
    ],
)
def test_render_refuses_placeholders_it_cannot_fill(text: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        render_sample_event(text, NOW)

    assert str(caught.value) == error


def test_base64_marker_is_rendered_then_encoded() -> None:
    inner = '{"begin_time":"{{HOUR-2}}","note":"é"}'
    text = json.dumps({"data": "{{BASE64:" + inner + "}}", "other": ["{{HOUR-0:compact}}"]})

    rendered = json.loads(render_sample_event(text, NOW))

    assert rendered == {
        "data": _b64('{"begin_time":"2026-12-01T08:00:00Z","note":"é"}'),
        "other": ["20261201T100000Z"],
    }


# sample events under events/

SAMPLES = {
    "kafka.json": ("KAFKA", 3, 4),
    "opensourcekafka.json": ("OPENSOURCEKAFKA", 2, 3),
    "rocketmq.json": ("ROCKETMQ", 2, 3),
    "rabbitmq.json": ("RABBITMQ", 2, 3),
    "smn.json": ("SMN", 1, 2),
    "dis.json": ("DIS", 2, 3),
    "apig.json": ("APIG", 1, 3),
    "apig-base64.json": ("APIG", 1, 1),
    "direct.json": ("DIRECT", 1, 2),
}

MALFORMED_SAMPLES = {
    "kafka-records-not-a-list.json": "KAFKA event: records is an object, expected an array",
    "opensourcekafka-records-missing.json": (
        "OPENSOURCEKAFKA event: records is missing, expected an array"
    ),
    "rocketmq-messages-missing.json": (
        "ROCKETMQ event: records[0].messages is missing, expected an array"
    ),
    "rabbitmq-record-not-an-object.json": (
        "RABBITMQ event: records[0] is a string, expected an object"
    ),
    "smn-notification-not-an-object.json": (
        "SMN event: record[0].smn is a string, expected an object"
    ),
    "dis-data-not-base64.json": "DIS event: Message.records[0].data is not valid base64",
    "apig-body-not-a-string.json": "APIG event: body is an object, expected a string",
    "direct-unknown-shape.json": (
        "event matches no known trigger shape: expected trigger_type (DMS queues), record "
        "(SMN), StreamName (DIS), requestContext (APIG) or a usage message with "
        "usage_records or instance_id; found keys usage"
    ),
}


def _load_sample(path: Path, now: datetime = NOW) -> object:
    return json.loads(render_sample_event(path.read_text(encoding="utf-8"), now))


def test_every_sample_file_is_covered_by_these_tests() -> None:
    assert sorted(path.name for path in EVENTS_DIR.glob("*.json")) == sorted(SAMPLES)
    assert sorted(path.name for path in (EVENTS_DIR / "malformed").glob("*.json")) == sorted(
        MALFORMED_SAMPLES
    )


@pytest.mark.parametrize(("name", "expected"), SAMPLES.items(), ids=list(SAMPLES))
def test_sample_event_renders_parses_and_yields_its_messages_and_records(
    name: str, expected: tuple[str, int, int]
) -> None:
    trigger, _, record_count = expected

    batch = parse_trigger_event(_load_sample(EVENTS_DIR / name))
    records = [raw for message in batch.messages for raw in decode_usage_message(message)]

    assert (batch.trigger, len(batch.messages), len(records)) == expected
    assert [raw.error for raw in records] == [None] * record_count
    assert batch.is_http is (trigger == "APIG")


@pytest.mark.parametrize("name", list(SAMPLES))
def test_sample_event_usage_is_recent_and_names_a_demo_instance(name: str) -> None:
    now = datetime.now(timezone.utc)
    batch = parse_trigger_event(_load_sample(EVENTS_DIR / name, now))
    records = [raw for message in batch.messages for raw in decode_usage_message(message)]

    for raw in records:
        assert raw.data is not None
        assert "{{" not in raw.raw
        assert raw.data["instance_id"] in {
            "demo-instance-001",
            "demo-instance-002",
            "demo-instance-003",
        }
        begin = _parse_sample_time(str(raw.data["begin_time"]))
        end = _parse_sample_time(str(raw.data["end_time"]))
        assert now - timedelta(days=2) <= begin < end <= now


def test_sample_usage_windows_never_repeat_across_files() -> None:
    windows = []
    for name in SAMPLES:
        batch = parse_trigger_event(_load_sample(EVENTS_DIR / name))
        for message in batch.messages:
            for raw in decode_usage_message(message):
                assert raw.data is not None
                windows.append(
                    (
                        raw.data["instance_id"],
                        _parse_sample_time(str(raw.data["begin_time"])),
                        _parse_sample_time(str(raw.data["end_time"])),
                    )
                )

    assert len(windows) == len(set(windows)) == 24


@pytest.mark.parametrize(("name", "error"), MALFORMED_SAMPLES.items(), ids=list(MALFORMED_SAMPLES))
def test_malformed_sample_event_is_refused_with_its_reason(name: str, error: str) -> None:
    event = _load_sample(EVENTS_DIR / "malformed" / name)

    with pytest.raises(EventFormatError) as caught:
        parse_trigger_event(event)

    assert str(caught.value) == error


def _parse_sample_time(text: str) -> datetime:
    for form in ("%Y-%m-%dT%H:%M:%SZ", "%Y%m%dT%H%M%SZ"):
        try:
            return datetime.strptime(text, form).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    raise AssertionError(f"{text!r} is not a sample time")


def test_a_message_that_is_not_a_string_is_kept_as_its_json_text() -> None:
    event = _queue_event("KAFKA", [{"messages": ["a", 7, None, {"instance_id": "i"}]}])

    batch = parse_trigger_event(event)

    assert [message.body for message in batch.messages] == [
        "a",
        "7",
        "null",
        '{"instance_id":"i"}',
    ]
