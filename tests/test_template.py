"""template.yaml: the schema, its error messages, ${VAR} filling and `template validate`."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from koogallery.deploy.commands import add_commands
from koogallery.deploy.template import (
    KafkaTrigger,
    TemplateError,
    TimerTrigger,
    load_template,
    parse_template,
)
from koogallery.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]

SHIPPED_ENV = {
    "KOOGALLERY_PUSH_AK": "SELLERAK",
    "KOOGALLERY_PUSH_SK": "seller-sk",
    "KOOGALLERY_SELLER_KEY": "seller-key",
    "KOOGALLERY_FUNCTION_AGENCY": "koogallery-agency",
    "KOOGALLERY_VPC_ID": "vpc-1",
    "KOOGALLERY_SUBNET_ID": "subnet-1",
    "KOOGALLERY_KAFKA_INSTANCE_ID": "kafka-1",
    "HUAWEICLOUD_SDK_DOMAIN_ID": "domain-1",
}

FUNCTION: dict[str, Any] = {
    "func_name": "usage-push",
    "code_dir": "functions/usage_push",
    "handler": "index.handler",
    "runtime": "Python3.12",
    "memory_size": 256,
    "timeout": 60,
    "triggers": [
        {
            "trigger_type_code": "TIMER",
            "event_data": {"name": "hourly", "schedule_type": "Rate", "schedule": "1h"},
        },
        {
            "trigger_type_code": "KAFKA",
            "event_data": {"instance_id": "kafka-1", "topic_ids": ["usage"], "batch_size": 10},
        },
    ],
}


def document(**changes: Any) -> dict[str, Any]:
    """A valid template of one function, with ``changes`` applied to that function."""
    function = copy.deepcopy(FUNCTION)
    function.update(changes)
    return {"template_version": 1, "functions": [function]}


def problems_of(doc: dict[str, Any], env: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(TemplateError) as caught:
        parse_template(yaml.safe_dump(doc), env=env)
    return caught.value.problems


def test_the_shipped_template_deploys_usage_push_on_kafka_and_bill_fetch_daily() -> None:
    template = load_template(ROOT / "template.yaml")

    usage, bill = template.functions
    assert (usage.func_name, usage.handler, usage.runtime) == (
        "koogallery-usage-push",
        "index.handler",
        "Python3.12",
    )
    assert isinstance(usage.triggers[0], KafkaTrigger)
    assert usage.code_dir == "functions/usage_push"
    assert bill.code_dir == "functions/bill_fetch"
    [timer] = bill.triggers
    assert isinstance(timer, TimerTrigger)
    assert (timer.event_data.schedule_type, timer.event_data.schedule) == ("Cron", "0 30 2 * * ?")


def test_the_shipped_template_keeps_secrets_in_encrypted_user_data() -> None:
    usage, bill = load_template(ROOT / "template.yaml").functions

    assert sorted(usage.user_data) == [
        "HUAWEICLOUD_SDK_AK",
        "KOOGALLERY_BILLING_MODE",
        "KOOGALLERY_ENDPOINT",
        "KOOGALLERY_SITE",
        "KOOGALLERY_USAGE_API",
    ]
    assert sorted(usage.encrypted_user_data) == [
        "HUAWEICLOUD_SDK_SK",
        "KOOGALLERY_LEDGER_URL",
        "KOOGALLERY_SELLER_KEY",
    ]
    assert sorted(bill.user_data) == [
        "HUAWEICLOUD_SDK_DOMAIN_ID",
        "KOOGALLERY_BILLING_MODE",
        "KOOGALLERY_BILL_ENDPOINT",
        "KOOGALLERY_SITE",
        "KOOGALLERY_UNIT_PRICES",
    ]
    assert sorted(bill.encrypted_user_data) == ["KOOGALLERY_LEDGER_URL"]


def test_the_shipped_template_fills_from_the_environment_and_drops_empty_entries() -> None:
    usage, bill = load_template(ROOT / "template.yaml", env=SHIPPED_ENV).functions

    assert usage.user_data == {
        "HUAWEICLOUD_SDK_AK": "SELLERAK",
        "KOOGALLERY_BILLING_MODE": "hourly",
        "KOOGALLERY_SITE": "cn",
        "KOOGALLERY_USAGE_API": "v2",
    }
    assert {key: value.get_secret_value() for key, value in usage.encrypted_user_data.items()} == {
        "HUAWEICLOUD_SDK_SK": "seller-sk",
        "KOOGALLERY_SELLER_KEY": "seller-key",
    }
    assert usage.triggers[0].event_data_payload() == {
        "instance_id": "kafka-1",
        "topic_ids": ["koogallery-usage"],
        "batch_size": 100,
    }
    assert usage.xrole == "koogallery-agency"
    assert bill.user_data == {
        "HUAWEICLOUD_SDK_DOMAIN_ID": "domain-1",
        "KOOGALLERY_BILLING_MODE": "hourly",
        "KOOGALLERY_SITE": "cn",
    }


def test_every_missing_variable_is_named_with_its_place() -> None:
    env = {key: value for key, value in SHIPPED_ENV.items() if "VPC" not in key}
    del env["KOOGALLERY_SELLER_KEY"]

    with pytest.raises(TemplateError) as caught:
        load_template(ROOT / "template.yaml", env=env)

    assert caught.value.problems == (
        "functions[0].encrypted_user_data.KOOGALLERY_SELLER_KEY: ${KOOGALLERY_SELLER_KEY} is "
        "not set in the environment",
        "functions[0].func_vpc.vpc_id: ${KOOGALLERY_VPC_ID} is not set in the environment",
        "functions[1].func_vpc.vpc_id: ${KOOGALLERY_VPC_ID} is not set in the environment",
    )


def test_an_error_names_the_trigger_field_by_its_path() -> None:
    doc = document()
    doc["functions"][0]["triggers"][1]["event_data"]["batch_size"] = 1001

    assert problems_of(doc) == (
        "functions[0].triggers[1].event_data.batch_size: Input should be less than or equal to "
        "1000",
    )


def test_an_unknown_field_is_refused_by_name() -> None:
    assert problems_of(document(memory=256)) == (
        "functions[0].memory: Extra inputs are not permitted",
    )


def test_a_quoted_number_is_refused_rather_than_guessed() -> None:
    assert problems_of(document(timeout="60")) == (
        "functions[0].timeout: Input should be a valid integer",
    )


@pytest.mark.parametrize("size", [128, 256, 1536, 4096, 4608, 10240])
def test_memory_sizes_from_functiongraphs_enum_are_taken(size: int) -> None:
    assert parse_template(yaml.safe_dump(document(memory_size=size))).functions[0].memory_size == (
        size
    )


@pytest.mark.parametrize("size", [0, 100, 300, 4097, 10752])
def test_other_memory_sizes_are_refused(size: int) -> None:
    [problem] = problems_of(document(memory_size=size))

    assert problem.startswith(
        f"functions[0].memory_size: {size} is not a FunctionGraph memory size: use one of 128, "
    )


@pytest.mark.parametrize(("timeout", "valid"), [(2, False), (3, True), (900, True), (901, False)])
def test_timeout_is_3_to_900_seconds(timeout: int, valid: bool) -> None:
    text = yaml.safe_dump(document(timeout=timeout))
    if valid:
        assert parse_template(text).functions[0].timeout == timeout
    else:
        with pytest.raises(TemplateError):
            parse_template(text)


def timer(schedule_type: str, schedule: str) -> dict[str, Any]:
    return document(
        triggers=[
            {
                "trigger_type_code": "TIMER",
                "event_data": {"name": "t", "schedule_type": schedule_type, "schedule": schedule},
            }
        ]
    )


@pytest.mark.parametrize(
    ("schedule_type", "schedule"),
    [
        ("Rate", "1m"),
        ("Rate", "60m"),
        ("Rate", "24h"),
        ("Rate", "30d"),
        ("Cron", "0 30 2 * * ?"),
        ("Cron", "0 */5 * * * *"),
        ("Cron", "0 0 8-18 ? * MON-FRI"),
        ("Cron", "0 0 0 1,15 JAN,JUL ?"),
        ("Cron", "@every 30m"),
        ("Cron", "@every 1.5h"),
        ("Cron", "@every 2h30m"),
    ],
)
def test_timer_schedules_in_functiongraphs_forms_are_taken(
    schedule_type: str, schedule: str
) -> None:
    [trigger] = (
        parse_template(yaml.safe_dump(timer(schedule_type, schedule))).functions[0].triggers
    )

    assert trigger.event_data.model_dump()["schedule"] == schedule


@pytest.mark.parametrize(
    ("schedule_type", "schedule"),
    [
        ("Rate", "0m"),
        ("Rate", "61m"),
        ("Rate", "25h"),
        ("Rate", "31d"),
        ("Rate", "1w"),
        ("Cron", "30 2 * * *"),
        ("Cron", "0 60 2 * * ?"),
        ("Cron", "0 0 24 * * ?"),
        ("Cron", "0 0 0 32 * ?"),
        ("Cron", "@every"),
        ("Cron", "@every 5 minutes"),
    ],
)
def test_malformed_timer_schedules_are_refused(schedule_type: str, schedule: str) -> None:
    [problem] = problems_of(timer(schedule_type, schedule))

    assert problem.startswith(
        f"functions[0].triggers[0].event_data: schedule {schedule!r} is not a {schedule_type}"
    )


def async_config(**fields: Any) -> dict[str, Any]:
    config = {"max_async_retry_attempts": 1, "max_async_event_age_in_seconds": 3600, **fields}
    return document(async_invoke_config=config)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (
            {"max_async_retry_attempts": 4},
            "functions[0].async_invoke_config.max_async_retry_attempts: Input should be less "
            "than or equal to 3",
        ),
        (
            {"max_async_event_age_in_seconds": 0},
            "functions[0].async_invoke_config.max_async_event_age_in_seconds: Input should be "
            "greater than or equal to 1",
        ),
        (
            {"max_async_event_age_in_seconds": 86401},
            "functions[0].async_invoke_config.max_async_event_age_in_seconds: Input should be "
            "less than or equal to 86400",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "OBS", "param": {}}}},
            "functions[0].async_invoke_config.destination_config.on_failure: param of a OBS "
            "destination needs ['bucket']",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "SQS", "param": {}}}},
            "functions[0].async_invoke_config.destination_config.on_failure.destination: Input "
            "should be 'OBS', 'SMN', 'DIS' or 'FunctionGraph'",
        ),
    ],
)
def test_async_settings_keep_to_their_ranges(fields: dict[str, Any], problem: str) -> None:
    assert problems_of(async_config(**fields)) == (problem,)


def test_the_widest_async_settings_are_taken() -> None:
    text = yaml.safe_dump(
        async_config(max_async_retry_attempts=3, max_async_event_age_in_seconds=86400)
    )

    config = parse_template(text).functions[0].async_invoke_config
    assert config is not None
    assert config.payload() == {
        "max_async_retry_attempts": 3,
        "max_async_event_age_in_seconds": 86400,
    }


def test_a_secret_setting_in_plain_user_data_is_refused() -> None:
    [problem] = problems_of(document(user_data={"KOOGALLERY_SELLER_KEY": "${KEY}"}))

    assert problem == (
        "functions[0]: ['KOOGALLERY_SELLER_KEY'] hold secrets: move them to encrypted_user_data"
    )


def test_a_secret_written_into_the_file_is_refused() -> None:
    doc = document(encrypted_user_data={"KOOGALLERY_SELLER_KEY": "the-real-key"})
    doc["functions"][0]["triggers"][1]["event_data"]["kafka_password"] = "the-real-password"

    assert problems_of(doc) == (
        "functions[0].encrypted_user_data.KOOGALLERY_SELLER_KEY: write a ${VAR} reference "
        "here, not the secret itself, so that it is never committed with the template",
        "functions[0].triggers[1].event_data.kafka_password: write a ${VAR} reference here, "
        "not the secret itself, so that it is never committed with the template",
    )


def test_reserved_runtime_variables_are_refused() -> None:
    assert problems_of(document(user_data={"RUNTIME_TIMEOUT": "3"})) == (
        "functions[0]: ['RUNTIME_TIMEOUT'] are reserved by FunctionGraph (RUNTIME_*)",
    )


def test_an_environment_over_4096_characters_is_refused() -> None:
    doc = document(user_data={f"SETTING_{n}": "x" * 300 for n in range(14)})

    [problem] = problems_of(doc)
    assert problem.startswith("functions[0]: user_data and encrypted_user_data take 4")
    assert problem.endswith(" characters as JSON, FunctionGraph takes at most 4096")


def test_a_handler_in_a_folder_sits_in_that_folder_of_the_zip() -> None:
    function = parse_template(yaml.safe_dump(document(handler="src/index.handler"))).functions[0]

    assert str(function.handler_path) == "src/index.py"


def test_two_functions_of_one_name_are_refused() -> None:
    doc = document()
    doc["functions"].append(copy.deepcopy(doc["functions"][0]))

    assert problems_of(doc) == ("(top level): func_name ['usage-push'] appears more than once",)


def test_the_same_trigger_twice_is_refused() -> None:
    doc = document()
    doc["functions"][0]["triggers"].append(copy.deepcopy(doc["functions"][0]["triggers"][1]))

    assert problems_of(doc) == ("functions[0]: triggers[2] (KAFKA kafka-1/usage) appears twice",)


def test_an_unknown_trigger_type_is_named() -> None:
    doc = document(triggers=[{"trigger_type_code": "FTP", "event_data": {}}])

    [problem] = problems_of(doc)
    assert problem.startswith("functions[0].triggers[0]: Input tag 'FTP' found using ")


def test_a_key_written_twice_in_the_yaml_is_refused() -> None:
    text = "template_version: 1\ntemplate_version: 1\nfunctions: []\n"

    with pytest.raises(TemplateError) as caught:
        parse_template(text)

    assert "key 'template_version' appears twice (line 2)" in caught.value.problems[0]


def test_references_fill_with_defaults_and_escapes_stay_literal() -> None:
    doc = document(
        description="costs $${PRICE}",
        user_data={"KOOGALLERY_SITE": "${SITE:-intl}", "KOOGALLERY_USAGE_API": "${API}"},
    )

    function = parse_template(yaml.safe_dump(doc), env={"API": "v1"}).functions[0]

    assert function.description == "costs ${PRICE}"
    assert function.user_data == {"KOOGALLERY_SITE": "intl", "KOOGALLERY_USAGE_API": "v1"}


def test_a_broken_reference_is_named() -> None:
    assert problems_of(document(description="a ${broken-name}"), env={}) == (
        "functions[0].description: '${' starts no ${VAR} reference (write $${)",
    )


def test_destination_param_goes_to_the_api_as_json_text() -> None:
    doc = async_config(
        destination_config={
            "on_failure": {"destination": "SMN", "param": {"topic_urn": "urn:smn:r:p:dead"}}
        }
    )

    config = parse_template(yaml.safe_dump(doc)).functions[0].async_invoke_config
    assert config is not None
    assert config.payload()["destination_config"] == {
        "on_failure": {"destination": "SMN", "param": '{"topic_urn":"urn:smn:r:p:dead"}'}
    }


def validate(*arguments: str) -> int:
    parser = argparse.ArgumentParser(prog="koogallery")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["template", "validate", *arguments])
    code: int = args.run(args)
    return code


def project_with(tmp_path: Path, doc: dict[str, Any]) -> Path:
    (tmp_path / "functions" / "usage_push").mkdir(parents=True)
    (tmp_path / "functions" / "usage_push" / "index.py").write_text("def handler(e, c): ...\n")
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_validate_reports_the_template_and_the_variables_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_ID", raising=False)
    doc = document()
    doc["functions"][0]["triggers"][1]["event_data"]["instance_id"] = "${KAFKA_ID}"
    path = project_with(tmp_path, doc)

    assert validate(str(path)) == 0

    assert capsys.readouterr().out == (
        f"{path}: valid (1 functions, 2 triggers)\n"
        "deploy reads: KAFKA_ID\n"
        "not set here: KAFKA_ID\n"
    )


def test_validate_with_require_env_fails_on_a_missing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_ID", raising=False)
    doc = document()
    doc["functions"][0]["triggers"][1]["event_data"]["instance_id"] = "${KAFKA_ID}"
    path = project_with(tmp_path, doc)

    with pytest.raises(TemplateError) as caught:
        validate(str(path), "--require-env")

    assert caught.value.problems == (
        "functions[0].triggers[1].event_data.instance_id: ${KAFKA_ID} is not set in the "
        "environment",
    )


def test_validate_fails_when_the_handler_file_is_missing(tmp_path: Path) -> None:
    path = project_with(tmp_path, document(handler="main.handler"))

    with pytest.raises(ConfigurationError) as caught:
        validate(str(path))

    assert str(caught.value) == (
        f"{path}: usage-push: handler 'main.handler' names functions/usage_push/main.py, which "
        "does not exist"
    )
